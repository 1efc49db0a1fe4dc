"""Do the heads predict as many classes as the dataset has? Heads declare their class counts;
this module only reads the declarations.

- In a config, a component class declares them with a classmethod
  ``declared_num_classes(component_cfg) -> [(key, n)]`` (e.g. ``CascadeRoIHead``: every box
  head and every class-predicting branch head, or its one ``num_classes`` key).
- In a built model, a module declares them with a method ``class_heads() -> [(name, head)]``
  whose heads have an int ``num_classes``.
"""
import inspect
import logging

from mmengine.logging import print_log

__all__ = ['declared_num_classes', 'dataset_classes', 'check_num_classes',
           'num_classes_mismatches', 'resolve_num_classes']


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
    from .user_config import SPLITS, dataset_nodes
    found = {}
    for split in SPLITS:
        name, dataset = dataset_nodes(cfg, split)
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


def _dataset_count(cfg, layer):
    """``(number of classes, where it comes from)`` of the dataset: the first split that names
    ``metainfo.classes``; else, for a split the user pointed at another annotation file, the
    categories of that file; else ``(None, None)``."""
    from .user_config import SPLITS, _same_path, annotation_file_classes, dataset_nodes
    named = dataset_classes(cfg)
    if named:
        source, classes = next(iter(named.items()))
        return len(classes), f'{source}.metainfo.classes {classes}'
    for split in SPLITS:
        name, node = dataset_nodes(cfg, split)
        own = _same_path(layer, cfg, split) if layer is not None else None
        if node is None or own is None or not ({'ann_file', 'data_root'} & set(own)):
            continue
        classes = annotation_file_classes(node)
        if classes is not None:
            return len(classes), f'the categories of {name}.ann_file {classes}'
    return None, None


def resolve_num_classes(cfg, layer=None, strict=True):
    """Make the model's class count follow the dataset unless the user set it.

    For each model component that declares class counts (``declared_num_classes``):

    * none of them set in the user layer (they come from a parent config) and the dataset
      has another count: set the component's one key, ``model.<component>.num_classes``, to
      the dataset's (logged);
    * set in the user layer and equal to the dataset's count: honoured, and the one key is
      set so that an inherited ``num_classes`` cannot override them;
    * set in the user layer and different: with ``strict`` a ValueError naming the user's key
      and the dataset (or, when the dataset's count is unknown, the inherited key it
      contradicts); without it, left as set.

    ``layer`` is :func:`~cascade_seg.engine.user_config.user_layer`'s dict; ``None`` means
    everything is the user's (then nothing changes and :func:`check_num_classes` decides).
    Returns ``{'model.<component>.num_classes': n}`` for the keys it set.
    """
    model = cfg.get('model')
    if layer is None or not isinstance(model, dict):
        return {}
    num, source = _dataset_count(cfg, layer)
    own_model = layer.get('model') if isinstance(layer.get('model'), dict) else {}
    changed = {}
    for name, comp in model.items():
        declare = getattr(_component_class(comp), 'declared_num_classes', None) \
            if isinstance(comp, dict) and 'type' in comp else None
        if declare is None:
            continue
        declared = declare(comp)
        if not declared:
            continue
        own = own_model.get(name)
        mine = declare(own) if isinstance(own, dict) else []
        key = f'model.{name}.num_classes'
        if not mine:
            if num is not None and any(n != num for _, n in declared):
                old = sorted({n for _, n in declared})
                comp['num_classes'] = num
                changed[key] = num
                print_log(f'{key} = {num}: the class count follows {source} (the parent '
                          f'config\'s heads had {", ".join(map(str, old))})', logger='current',
                          level=logging.INFO)
            continue
        if num is not None:
            wrong = [(k, n) for k, n in mine if n != num]
            if wrong and strict:
                keys = ', '.join(f'model.{name}.{k}={n}' for k, n in wrong)
                raise ValueError(
                    f'{keys} in your config contradicts the dataset: {source} has {num} '
                    f'classes. The class count follows the dataset; remove the key or set '
                    f'{key}={num} (one key for every head).')
            if not wrong and any(n != num for _, n in declared):
                comp['num_classes'] = num
                changed[key] = num
            continue
        values = sorted({n for _, n in mine})
        inherited = [(k, n) for k, n in declared if (k, n) not in mine and n not in values]
        if strict and (len(values) > 1 or inherited):
            theirs = ', '.join(f'model.{name}.{k}={n}' for k, n in inherited) or \
                ', '.join(f'model.{name}.{k}={n}' for k, n in mine)
            mine_txt = ', '.join(f'model.{name}.{k}={n}' for k, n in mine)
            raise ValueError(f'{mine_txt} in your config disagrees with {theirs}; set the one '
                             f'key {key} instead (it applies to every head)')
    return changed
