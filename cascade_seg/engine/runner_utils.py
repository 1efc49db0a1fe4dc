"""Config -> mmengine Runner: the one path shared by tools/train.py, tools/test.py and ablations."""
import copy
import difflib
import inspect
import itertools
import json
import logging
import os
import os.path as osp

import torch
from mmengine.config import Config, ConfigDict, DictAction  # noqa: F401 (DictAction for tools)
from mmengine.logging import print_log

from .num_classes import check_num_classes, resolve_num_classes
from .precision import apply_precision, set_inference_precision
from .user_config import (follow_dataset_classes, read_config, remember_user_layer, user_layer,
                          warn_frozen_random_init)

__all__ = ['load_config', 'apply_amp', 'apply_precision', 'apply_resume', 'setup_launcher',
           'build_runner', 'add_custom_hook', 'add_test_outputs', 'save_metrics', 'DictAction',
           'apply_tta', 'apply_auto_scale_lr', 'default_tta_pipeline',
           'check_config_types', 'unread_top_level_keys', 'close_distributed']

# Top-level keys read by something other than mmengine's Runner(...) arguments:
# mmengine's Runner (cfg.get), checkpoint meta, and our tools.
_OTHER_READ_KEYS = {'sync_bn', 'find_unused_parameters', 'model_wrapper_cfg', 'gpu_ids',
                    'compile', 'activation_checkpointing', 'efficient_conv_bn_eval',
                    'launcher', 'filename', 'dist_params', 'tta_model', 'tta_pipeline',
                    'precision'}
# Helper variables of the configs themselves (MMDetection's names): never a typo of a read key.
_CONFIG_VARIABLES = {'train_pipeline', 'test_pipeline', 'val_pipeline', 'data_root',
                     'dataset_type', 'backend_args', 'metainfo', 'classes', 'img_scales'}
_MISSING = object()
# Runners built in this process (see unique_experiment_name).
_RUNNERS_BUILT = itertools.count(1)


def _runner_keys():
    from mmengine.runner import Runner
    return set(inspect.signature(Runner.__init__).parameters) - {'self', 'cfg'}


def _lookup(cfg, dotted):
    node = cfg
    for part in dotted.split('.'):
        if isinstance(node, (dict, Config)) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_option_types(cfg, options):
    """An override whose text did not parse as the number/bool the config holds is an error
    naming the key (``train_cfg.max_epochs=two`` would otherwise fail deep inside a loop)."""
    for key, value in options.items():
        old = _lookup(cfg, key)
        if old is _MISSING or old is None or not isinstance(value, str):
            continue
        if isinstance(old, bool) or _is_number(old):
            kind = 'a boolean' if isinstance(old, bool) else (
                'an integer' if isinstance(old, int) else 'a number')
            raise ValueError(f'--cfg-options {key}={value}: {key} must be {kind} '
                             f'(the config has {old!r}), got the text {value!r}')


# (dotted key pattern, what it must be); '*' matches any one key.
_TYPED_KEYS = [
    ('train_cfg.max_epochs', 'int'), ('train_cfg.max_iters', 'int'),
    ('train_cfg.val_interval', 'int'), ('train_cfg.val_begin', 'int'),
    ('*_dataloader.batch_size', 'int'), ('*_dataloader.num_workers', 'int'),
    ('default_hooks.*.interval', 'int'), ('default_hooks.checkpoint.max_keep_ckpts', 'int'),
    ('optim_wrapper.optimizer.lr', 'number'), ('optim_wrapper.optimizer.weight_decay', 'number'),
    ('optim_wrapper.optimizer.momentum', 'number'), ('randomness.seed', 'int'),
]


def _matches(pattern, dotted):
    parts, keys = pattern.split('.'), dotted.split('.')
    return len(parts) == len(keys) and all(
        p in (k, '*') or (p.startswith('*') and k.endswith(p[1:])) for p, k in zip(parts, keys))


def _walk(node, prefix=''):
    if isinstance(node, (dict, Config)):
        for key, value in node.items():
            path = f'{prefix}{key}'
            yield path, value
            yield from _walk(value, path + '.')


def check_config_types(cfg):
    """Raise a ValueError naming the key when a well-known numeric setting is not a number."""
    for path, value in _walk(cfg):
        for pattern, kind in _TYPED_KEYS:
            if not _matches(pattern, path) or value is None:
                continue
            ok = isinstance(value, int) and not isinstance(value, bool) if kind == 'int' \
                else _is_number(value)
            if not ok:
                raise ValueError(f'{path} must be {"an integer" if kind == "int" else "a number"}, '
                                 f'got {value!r} ({type(value).__name__})')


def unread_top_level_keys(cfg, new_keys=()):
    """``(key, closest read key or None)`` for top-level keys nothing reads that are either
    new (added by ``--cfg-options``) or close to a key that is read (a likely typo).

    Other unread keys are the helper variables configs define for themselves
    (``data_root``, ``train_pipeline``, ...) and are left alone.
    """
    read = _runner_keys() | _OTHER_READ_KEYS
    out = []
    for key in cfg.keys():
        helper = key in _CONFIG_VARIABLES and key not in new_keys
        if key in read or key.startswith('_') or helper:
            continue
        close = difflib.get_close_matches(key, sorted(read), n=1, cutoff=0.8)
        if key in new_keys or close:
            out.append((key, close[0] if close else None))
    return out


def load_config(config, cfg_options=None, follow_dataset=True, strict_num_classes=True):
    """A copy of ``config`` (path or Config) with ``--cfg-options`` merged in.

    An option that does not parse as the number the config holds raises; a
    top-level key that no component reads (``default_hook`` for ``default_hooks``)
    is reported as a warning.

    With ``follow_dataset`` the config then follows its dataset where the user did not say
    otherwise (what the config file sets itself, or ``cfg_options``, see user_config.py): a
    dataset pointed at another annotation file without class names reads them from it, and
    the model's class count is the dataset's (:func:`resolve_num_classes`; a contradicting
    class count set by the user raises unless ``strict_num_classes`` is False).
    """
    cfg = read_config(config) if isinstance(config, str) else copy.deepcopy(config)
    new_keys = set()
    if cfg_options:
        options = dict(cfg_options)
        _check_option_types(cfg, options)
        new_keys = {k.split('.')[0] for k in options} - set(cfg.keys())
        cfg.merge_from_dict(options)
    cfg.setdefault('default_scope', 'cascade_seg')
    if follow_dataset:
        layer = user_layer(cfg, cfg_options)
        remember_user_layer(cfg, layer)  # a later load_config(cfg) sees the options too
        follow_dataset_classes(cfg, layer)
        resolve_num_classes(cfg, layer, strict=strict_num_classes)
    for key, close in unread_top_level_keys(cfg, new_keys):
        hint = f'; did you mean {close!r}?' if close else ''
        print_log(f'config key {key!r} is not read by any component, so it has no effect{hint}',
                  logger='current', level=logging.WARNING)
    return cfg


def default_work_dir(cfg):
    stem = osp.splitext(osp.basename(cfg.filename))[0] if cfg.filename else 'default'
    return osp.join('work_dirs', stem)


def apply_amp(cfg, device=None):
    """``--amp``: the device's mixed precision (bf16 autocast on CPU, fp16 with dynamic loss
    scaling on GPU), i.e. ``apply_precision(cfg, amp=True)``; see engine/precision.py."""
    if cfg.get('optim_wrapper') is None:
        raise ValueError('--amp needs an optim_wrapper in the config')
    apply_precision(cfg, amp=True, device=device)
    return cfg


def _resume_warning(msg):
    print_log(msg, logger='current', level=logging.WARNING)


def apply_resume(cfg, resume):
    """Decide the checkpoint a run resumes from.

    ``None``/``False``: leave the config (``resume=True`` without ``load_from`` in
    the config means ``'auto'``). ``True``/``'auto'``: the newest complete
    checkpoint in ``cfg.work_dir`` (``last_checkpoint`` first, see
    ``find_resume_checkpoint``); with none, a warning and a fresh start. A path:
    that checkpoint, and an error when it is missing or incomplete.

    When the config fixes no seed, the run takes the checkpoint's, so that the
    data order and worker seeds match the interrupted run.
    """
    from .checkpoint import checkpoint_problem, find_resume_checkpoint, load_checkpoint_file
    if resume in (None, False):
        if not (cfg.get('resume') and not cfg.get('load_from')):
            return cfg
        resume = 'auto'
    if resume in (True, 'auto'):
        work_dir = cfg.get('work_dir')
        path, notes = find_resume_checkpoint(work_dir)
        if path is None:
            cfg.resume, cfg.load_from = False, None
            _resume_warning(f'--resume: there is no checkpoint to resume from in {work_dir} '
                            f'({"; ".join(notes)}): training starts from scratch')
            return cfg
        if notes:
            _resume_warning(f'--resume: {"; ".join(notes)}; resuming from {path}, the newest '
                            'complete checkpoint')
    else:
        path = resume
        problem = checkpoint_problem(path)
        if problem == 'no such file':
            raise FileNotFoundError(f'--resume {path}: no such checkpoint file')
        if problem is not None:
            raise ValueError(f'--resume {path}: not a complete checkpoint ({problem})')
    cfg.resume, cfg.load_from = True, path
    if (cfg.get('randomness') or {}).get('seed') is None:
        meta = load_checkpoint_file(path, check_finite=False, mmap=True).get('meta') or {}
        if meta.get('seed') is not None:
            cfg.randomness = dict(cfg.get('randomness') or {}, seed=meta['seed'])
    return cfg


def init_cpu_distributed(launcher, backend='gloo'):
    """Start the process group for CPU-only runs.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` first, which fails
    without a GPU; the Runner skips its own init once a group exists.
    """
    import torch.distributed as dist
    if dist.is_initialized():
        return
    if launcher == 'slurm':
        import subprocess
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {nodes} | head -n1')
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['RANK'] = os.environ['SLURM_PROCID']
        os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    elif launcher != 'pytorch':
        raise ValueError(f'CPU distributed runs need launcher pytorch or slurm, got {launcher!r}')
    dist.init_process_group(backend=backend)


def close_distributed():
    """End a distributed run cleanly: every rank meets, then the process group is destroyed
    while the interpreter is fully alive.

    Without it, a gloo worker thread can still be releasing the tensors of the last collective
    (it needs the GIL for that) when Python finalizes, and the process aborts with "terminate
    called without an active exception" after a successful run (pytorch/pytorch#190489). The
    barrier hands those threads the GIL; call this only where every rank arrives (not on an
    error path, where it would wait for a rank that has died).
    """
    import gc
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def setup_launcher(cfg, launcher='none'):
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    init_cpu_distributed(launcher)
    # DDP on CPU modules needs device_ids=None (mmengine passes [LOCAL_RANK]).
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(type='MMDistributedDataParallel')
    wrapper.setdefault('device_ids', None)
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return cfg


PACK_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                  'flip_direction', 'pad_shape')


def default_tta_pipeline(test_pipeline):
    """Flip test-time augmentation at the test pipeline's own scale: its steps before
    ``Resize`` as they are, then ``TestTimeAug`` over that ``Resize``, no flip / horizontal
    flip, the steps after it, and ``PackDetInputs`` keeping the flip and ``flip_indices``."""
    steps = [dict(t) for t in test_pipeline]
    i = next((k for k, t in enumerate(steps) if t['type'] == 'Resize'), None)
    head = steps[:i] if i is not None else steps[:1]
    rest = steps[i + 1:] if i is not None else steps[1:]
    pack = next((t for t in rest if t['type'] == 'PackDetInputs'), dict(type='PackDetInputs'))
    keys = tuple(dict.fromkeys(tuple(pack.get('meta_keys', PACK_META_KEYS)) +
                               ('flip', 'flip_direction', 'flip_indices')))
    transforms = ([[steps[i]]] if i is not None else []) + [
        [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1.)]]
    transforms += [[t] for t in rest if t['type'] != 'PackDetInputs']
    transforms.append([dict(pack, meta_keys=keys)])
    return head + [dict(type='TestTimeAug', transforms=transforms)]


def _innermost_dataset(loader_cfg):
    dataset = loader_cfg['dataset']
    while dataset.get('dataset') is not None:
        dataset = dataset['dataset']
    return dataset


def apply_tta(cfg):
    """``test.py --tta``: wrap the model in ``cfg.tta_model`` and test with
    ``cfg.tta_pipeline``, as MMDetection 3 does. A config without them gets
    ``DetTTAModel`` (NMS at the detector's IoU threshold, its ``max_per_img``) and
    :func:`default_tta_pipeline` of its test pipeline, with a warning saying so."""
    rcnn = ((cfg.model.get('test_cfg') or {}).get('rcnn') or cfg.model.get('test_cfg') or {})
    if not cfg.get('tta_model'):
        nms = dict(rcnn.get('nms') or dict(type='nms', iou_threshold=0.5))
        cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(
            nms=nms, max_per_img=rcnn.get('max_per_img', 100)))
        print_log('--tta: the config has no tta_model; using ' + repr(cfg.tta_model),
                  logger='current', level=logging.WARNING)
    test_dataset = _innermost_dataset(cfg.test_dataloader)
    if not cfg.get('tta_pipeline'):
        cfg.tta_pipeline = default_tta_pipeline(test_dataset['pipeline'])
        print_log('--tta: the config has no tta_pipeline; flipping at the test scale: '
                  + repr(cfg.tta_pipeline), logger='current', level=logging.WARNING)
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    test_dataset['pipeline'] = cfg.tta_pipeline
    return cfg


def apply_auto_scale_lr(cfg):
    """``train.py --auto-scale-lr``: mmengine scales the learning rate by (total batch size)
    / ``auto_scale_lr.base_batch_size`` (the batch the config's lr was set for)."""
    asl = cfg.get('auto_scale_lr') or {}
    if 'base_batch_size' not in asl:
        raise ValueError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N) in the '
                         'config: the total batch size its learning rate was set for')
    cfg.auto_scale_lr = dict(asl, enable=True)
    return cfg


def add_custom_hook(cfg, hook):
    """Append ``hook`` (a dict) to ``cfg.custom_hooks`` unless one of its type is there."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == hook['type'] for h in hooks):
        hooks.append(hook)
    cfg.custom_hooks = hooks
    return cfg


def unique_experiment_name(cfg):
    """Give the second and later Runners of a process an experiment name of their own.

    mmengine names the Runner's logger, message hub, default scope and visualizer
    ``<experiment_name or config stem>_<timestamp to the second>`` and reuses an existing
    instance of that name. Two Runners built in one second from the same config (an ablation
    sweep, a test session) would share them: the second logs and dumps its config into the
    first one's work_dir."""
    n = next(_RUNNERS_BUILT)
    if n > 1:
        stem = osp.splitext(osp.basename(cfg.filename))[0] if cfg.filename else 'run'
        cfg.experiment_name = f"{cfg.get('experiment_name') or stem}_{n}"
    return cfg


def build_runner(config, work_dir=None, cfg_options=None, resume=None, amp=False,
                 launcher='none', seed=None, load_from=None, strict_load=False,
                 auto_scale_lr=False, precision=None):
    """Build an mmengine Runner the way tools/train.py and tools/test.py do.

    ``config`` is a path or a Config (not modified). ``work_dir`` defaults to the
    config's, else ``work_dirs/<config stem>``; ``resume`` is None, ``'auto'`` or a
    checkpoint path (see :func:`apply_resume`); ``load_from`` loads weights without
    resuming (testing), and ``strict_load`` refuses such weights unless every one
    of them fits the model; ``auto_scale_lr`` enables the config's ``auto_scale_lr``
    (see :func:`apply_auto_scale_lr`). ``precision`` (``'fp32' | 'bf16' | 'fp16'``, else the
    config's ``precision`` key; ``amp`` is ``--amp``) sets the optimizer wrapper and the
    autocast of validation and testing (see engine/precision.py).
    """
    import cascade_seg.engine  # noqa: F401  (safe-globals allow-list, hooks)
    from mmengine.runner import Runner

    cfg = load_config(config, cfg_options)
    cfg.work_dir = work_dir or cfg.get('work_dir') or default_work_dir(cfg)
    if load_from is not None:
        cfg.load_from = load_from
        if strict_load:
            add_custom_hook(cfg, dict(type='StrictLoadHook', filename=load_from))
    apply_resume(cfg, resume)
    eval_precision = apply_precision(cfg, precision, amp)
    if auto_scale_lr:
        apply_auto_scale_lr(cfg)
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
    check_config_types(cfg)
    check_num_classes(cfg)
    if cfg.get('train_dataloader') and cfg.get('train_cfg'):
        warn_frozen_random_init(cfg)  # a no-op when weights are loaded or resumed
    add_custom_hook(cfg, dict(type='NumClassesCheckHook'))
    setup_launcher(cfg, launcher)
    # The Runner logs and dumps the config 3-4 times; mmengine formats it with yapf each time,
    # 2-3 s per dump for a cascade config on one CPU core. The unformatted text is the same
    # valid Python config (tools/print_config.py prints it formatted).
    object.__setattr__(cfg, '_format_python_code', False)
    unique_experiment_name(cfg)
    runner = Runner.from_cfg(cfg)
    set_inference_precision(runner.model, eval_precision)  # a TTA wrapper's `module` too
    return runner


def add_test_outputs(cfg, show_dir=None, score_thr=0.3, out_pkl=None, show=False,
                     wait_time=2.):
    """Extra test outputs: drawn predictions in ``show_dir`` (relative: below
    ``<work_dir>/<timestamp>/``, as MMDetection) and/or in a window (``show``, where there is a
    display), raw predictions in ``out_pkl`` (MMDetection's ``pred_instances`` records)."""
    if show_dir or show:
        add_custom_hook(cfg, dict(type='SavePredictionImagesHook', out_dir=show_dir,
                                  score_thr=score_thr, show=show, wait_time=wait_time))
    if out_pkl:
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
        evaluators.append(dict(type='DumpDetResults', out_file_path=out_pkl))
        cfg.test_evaluator = evaluators
    return cfg


def _plain(value):
    if hasattr(value, 'tolist'):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_metrics(metrics, path):
    """Write a metrics dict as JSON (numpy / tensor values become plain numbers)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(_plain(dict(metrics)), f, indent=2)
    return path
