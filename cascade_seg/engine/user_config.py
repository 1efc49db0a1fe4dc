"""What the config you run says itself, as opposed to what it inherits.

mmengine merges a config onto its ``_base_`` files and forgets which file set what. A few
decisions need to know it:

* the class count follows the dataset unless *your* config sets it (engine/num_classes.py);
* class names belong to their annotation file: a dataset that your config points at another
  file (``ann_file`` / ``data_root``) without naming classes reads them from that file instead
  of inheriting the parent's list;
* a model that trains from random weights with frozen stages or frozen BN statistics is
  almost always a mistake, and deserves a loud warning.

The *user layer* is the dict your config file merges onto its bases (its own assignments,
before merging), plus ``--cfg-options``. :func:`read_config` records it while mmengine loads
the file.
"""
import copy
import inspect
import json
import logging
import os.path as osp

from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['read_config', 'user_layer', 'remember_user_layer', 'dataset_nodes',
           'follow_dataset_classes', 'frozen_random_init', 'warn_frozen_random_init',
           'annotation_file_classes']

_LAYER_ATTR = '_cascade_seg_user_layer'
SPLITS = ('train', 'val', 'test')


def _load_recording_own_layer(path):
    """``(Config.fromfile(path), the dict the file itself merged onto its bases or None)``.

    mmengine's ``_file2dict`` ends with ``Config._merge_a_into_b(own, bases)``; the last merge
    made at the outermost level while loading is therefore the file's own layer. Any surprise
    (another mmengine, lazy-import configs) gives ``None``: everything then counts as set by
    the user, the strict and safe reading.
    """
    original = Config.__dict__['_merge_a_into_b']
    merge = original.__func__
    state = dict(depth=0, own=None)

    def recording(a, b, allow_list_keys=False):
        if state['depth'] == 0:
            state['own'] = copy.deepcopy(a)
        state['depth'] += 1
        try:
            return merge(a, b, allow_list_keys)
        finally:
            state['depth'] -= 1

    Config._merge_a_into_b = staticmethod(recording)
    try:
        cfg = Config.fromfile(path)
    finally:
        Config._merge_a_into_b = original
    own = state['own']
    if own is not None and not set(own) <= set(cfg.keys()) | {'_base_'}:
        own = None
    return cfg, own


def read_config(path):
    """``Config.fromfile(path)`` that also remembers the file's own layer (see the module)."""
    cfg, own = _load_recording_own_layer(path)
    object.__setattr__(cfg, _LAYER_ATTR, _plain(own) if own is not None else None)
    return cfg


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_plain(v) for v in node)
    return node


def _nest(options):
    """``{'a.b.c': 1}`` -> ``{'a': {'b': {'c': 1}}}`` (list indices stay string keys)."""
    out = {}
    for dotted, value in (options or {}).items():
        node = out
        *parents, leaf = dotted.split('.')
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = _plain(value)
    return out


def _merge(a, b):
    """``a`` merged onto a copy of ``b`` (dicts recursively, anything else replaced)."""
    out = dict(b)
    for k, v in a.items():
        out[k] = _merge(v, out[k]) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def user_layer(cfg, cfg_options=None):
    """The keys the user set: the config file's own layer plus ``cfg_options`` (nested dict).

    ``None`` when it cannot be told (a Config built from a dict, an unreadable file): callers
    then treat every key as the user's.
    """
    layer = getattr(cfg, _LAYER_ATTR, False)
    if layer is False:  # not read by read_config: read the file again to find its own layer
        filename = getattr(cfg, 'filename', None)
        layer = None
        if filename and osp.isfile(filename):
            try:
                layer = _plain(_load_recording_own_layer(filename)[1])
            except Exception:  # noqa: BLE001 - provenance is a convenience, never an error
                layer = None
        object.__setattr__(cfg, _LAYER_ATTR, layer)
    if layer is None:
        return None
    return _merge(_nest(cfg_options), layer)


def remember_user_layer(cfg, layer):
    """Store ``layer`` as ``cfg``'s user layer (it survives ``copy.deepcopy(cfg)``)."""
    object.__setattr__(cfg, _LAYER_ATTR, layer)


def dataset_nodes(cfg, split):
    """``(name, dataset config)`` of a split's dataset, through wrappers (``dataset.dataset``)
    and to the first part of a ConcatDataset (``datasets[0]``); ``(name, None)`` if absent."""
    node = (cfg.get(f'{split}_dataloader') or {}).get('dataset')
    name = f'{split}_dataloader.dataset'
    while isinstance(node, dict) and node.get('dataset') is not None:
        node, name = node['dataset'], name + '.dataset'
    if isinstance(node, dict) and node.get('datasets'):
        node, name = node['datasets'][0], name + '.datasets[0]'
    return name, node if isinstance(node, dict) else None


def _same_path(layer, cfg, split):
    """The user layer's node at the place where ``dataset_nodes`` found the dataset."""
    node = (layer or {}).get(f'{split}_dataloader') or {}
    node = node.get('dataset') if isinstance(node, dict) else None
    ref = (cfg.get(f'{split}_dataloader') or {}).get('dataset')
    while isinstance(ref, dict) and ref.get('dataset') is not None:
        ref = ref['dataset']
        node = node.get('dataset') if isinstance(node, dict) else None
    if isinstance(ref, dict) and ref.get('datasets'):
        parts = node.get('datasets') if isinstance(node, dict) else None
        node = parts[0] if isinstance(parts, (list, tuple)) and parts else None
    return node if isinstance(node, dict) else None


def ann_file_path(dataset):
    """The annotation file a dataset config reads (``data_root`` joined like mmengine does)."""
    ann = dataset.get('ann_file')
    if not ann:
        return None
    root = dataset.get('data_root')
    return ann if osp.isabs(ann) or not root else osp.join(root, ann)


def annotation_file_classes(dataset):
    """Category names of the dataset's annotation file in ascending id order (the labels a
    ``CocoDataset`` without ``metainfo.classes`` gives), or None when it cannot be read."""
    path = ann_file_path(dataset)
    if not path or not osp.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            cats = json.load(f).get('categories')
        return tuple(c['name'] for c in sorted(cats, key=lambda c: c['id']))
    except Exception:  # noqa: BLE001 - the dataset itself reports a broken file
        return None


def follow_dataset_classes(cfg, layer):
    """Class names belong to their annotation file: for every split whose dataset the user
    layer points elsewhere (``ann_file`` or ``data_root``) without naming ``metainfo``, drop the
    inherited ``metainfo.classes`` so that the dataset reads them from its file.

    Returns ``{dataset name: 'ann file'}`` of the datasets changed (each is logged).
    """
    changed = {}
    if layer is None:
        return changed
    for split in SPLITS:
        name, node = dataset_nodes(cfg, split)
        own = _same_path(layer, cfg, split)
        if node is None or own is None:
            continue
        meta = node.get('metainfo') or {}
        if 'metainfo' in own or not ({'ann_file', 'data_root'} & set(own)) or \
                meta.get('classes') is None:
            continue
        inherited = tuple(meta['classes'])
        rest = {k: v for k, v in meta.items() if k != 'classes'}
        if rest:
            node['metainfo'] = type(meta)(rest)
        else:
            node.pop('metainfo')
        changed[name] = ann_file_path(node)
        print_log(f'{name}: your config points it at {ann_file_path(node)} and names no '
                  f'classes, so they are read from that file (the parent config\'s '
                  f'{len(inherited)} classes {inherited} belong to its own data)',
                  logger='current', level=logging.INFO)
    return changed


# ----------------------------------------------------------------------------------------
# training from random weights with frozen parts
# ----------------------------------------------------------------------------------------
def _defaults(component):
    from .num_classes import _component_class
    cls = _component_class(component)
    if cls is None:
        return {}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _is_pretrained(init_cfg):
    if isinstance(init_cfg, (list, tuple)):
        return any(_is_pretrained(c) for c in init_cfg)
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


def frozen_random_init(cfg):
    """``[(component key, what is frozen)]`` for the model's components that freeze stages or
    BN statistics while nothing loads weights (no ``load_from``, no resume, no ``Pretrained``
    ``init_cfg`` on the component or the model)."""
    model = cfg.get('model') or {}
    if cfg.get('load_from') or cfg.get('resume') or _is_pretrained(model.get('init_cfg')):
        return []
    found = []
    for name, comp in model.items():
        if not isinstance(comp, dict) or 'type' not in comp or _is_pretrained(comp.get('init_cfg')):
            continue
        defaults = _defaults(comp)
        if 'frozen_stages' not in defaults and 'norm_eval' not in defaults:
            continue
        get = (lambda k: comp.get(k, defaults.get(k)))
        norm = (get('norm_cfg') or {}).get('type', 'BN')
        what = []
        frozen = get('frozen_stages')
        if isinstance(frozen, int) and frozen >= 0:
            parts = 'the stem' + ('' if frozen == 0 else ' and stage 1' if frozen == 1 else
                                  f' and stages 1-{frozen}')
            what.append(f'frozen_stages={frozen} ({parts} keep their random weights)')
        if get('norm_eval') and norm in ('BN', 'SyncBN', 'BN2d'):
            what.append('norm_eval=True (BatchNorm keeps its initial statistics, mean 0 and '
                        'variance 1, instead of learning them)')
        if norm == 'FrozenBN':
            what.append("norm_cfg type 'FrozenBN' (fixed identity normalisation)")
        if what:
            found.append((f'model.{name}', what))
    return found


def warn_frozen_random_init(cfg):
    """Log a loud warning for every :func:`frozen_random_init` finding; returns them."""
    found = frozen_random_init(cfg)
    for key, what in found:
        print_log(
            f'!!! {key} trains from RANDOM initialisation (no init_cfg=dict(type=\'Pretrained\', '
            f'...), no load_from) with {" and ".join(what)}. Such a network rarely learns: '
            f'point {key}.init_cfg at pretrained weights (or set load_from), or train every '
            f'layer with {key}.frozen_stages=-1 and {key}.norm_eval=False, as the *_synthetic '
            'configs do.', logger='current', level=logging.WARNING)
    return found
