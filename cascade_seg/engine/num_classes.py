"""Do the heads predict as many classes as the dataset has? Heads declare their class counts;
this module only reads the declarations.

- In a config, a component class declares them with a classmethod
  ``declared_num_classes(component_cfg) -> [(key, n)]`` (e.g. ``CascadeRoIHead``: every box
  head and every class-predicting branch head, or its one ``num_classes`` key).
- In a built model, a module declares them with a method ``class_heads() -> [(name, head)]``
  whose heads have an int ``num_classes``.
"""
import inspect

__all__ = ['declared_num_classes', 'dataset_classes', 'check_num_classes',
           'num_classes_mismatches']


def _component_class(cfg):
    from cascade_seg.registry import MODELS
    kind = cfg.get('type')
    if inspect.isclass(kind):
        return kind
    try:
        return MODELS.get(kind) if isinstance(kind, str) else None
    except KeyError:
        return None


def declared_num_classes(model_cfg):
    """``[(key, num_classes)]`` over the model config's components, keys from ``model.``."""
    found = []
    for name, cfg in (model_cfg or {}).items():
        if not isinstance(cfg, dict) or 'type' not in cfg:
            continue
        declare = getattr(_component_class(cfg), 'declared_num_classes', None)
        if declare is not None:
            found += [(f'{name}.{key}', n) for key, n in declare(cfg)]
    return found


def dataset_classes(cfg):
    """``{'<split>_dataloader.dataset': classes}`` for every split whose config names classes."""
    found = {}
    for split in ('train', 'val', 'test'):
        dataset = (cfg.get(f'{split}_dataloader') or {}).get('dataset')
        name = f'{split}_dataloader.dataset'
        while isinstance(dataset, dict) and dataset.get('dataset') is not None:  # wrappers
            dataset, name = dataset['dataset'], name + '.dataset'
        if isinstance(dataset, dict) and dataset.get('datasets'):  # ConcatDataset: first part
            dataset, name = dataset['datasets'][0], name + '.datasets[0]'
        classes = ((dataset or {}).get('metainfo') or {}).get('classes')
        if classes is not None:
            found[name] = tuple(classes)
    return found


def check_num_classes(cfg, classes=None):
    """Check that the model's class-predicting heads predict as many classes as the dataset.

    Args:
        cfg: the full config (mmengine ``Config`` or dict) with ``model``.
        classes: the dataset's class names; read from the dataloader configs'
            ``metainfo.classes`` when None (no check if no config names them).
    Returns:
        The number of classes checked against, or None when nothing could be checked.
    Raises:
        ValueError naming every mismatching key and the fix.
    """
    declared = declared_num_classes(cfg.get('model'))
    if not declared:
        return None
    sources = {'the given classes': tuple(classes)} if classes is not None \
        else dataset_classes(cfg)
    problems = [f'model.{key} = {num} but {source} has {len(names)} classes'
                for source, names in sources.items() for key, num in declared
                if num != len(names)]
    if problems:
        expected = len(next(iter(sources.values())))
        one_key = next((k.rsplit('.', 1)[0].split('.')[0] for k, _ in declared), 'roi_head')
        raise ValueError('num_classes does not match the dataset: ' + '; '.join(problems)
                         + f'. Set model.{one_key}.num_classes={expected} (it applies to the box '
                         'and mask heads of every stage), e.g. '
                         f'--cfg-options model.{one_key}.num_classes={expected}')
    return len(next(iter(sources.values()))) if sources else None


def num_classes_mismatches(model, num_classes):
    """``(module name, its num_classes)`` of every declared class head of a built ``model``
    (a model wrapper is unwrapped) that disagrees with ``num_classes``."""
    model = getattr(model, 'module', model)
    out = []
    for prefix, module in model.named_modules():
        heads = getattr(module, 'class_heads', None)
        if not callable(heads):
            continue
        for name, head in heads():
            if head.num_classes != num_classes:
                out.append((f'{prefix}.{name}' if prefix else name, head.num_classes))
    return out
