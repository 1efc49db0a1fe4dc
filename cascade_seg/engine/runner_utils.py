"""Config -> mmengine Runner: the one path shared by tools/train.py, tools/test.py and ablations."""
import copy
import json
import logging
import os
import os.path as osp

import torch
from mmengine.config import Config, ConfigDict, DictAction  # noqa: F401 (DictAction for tools)
from mmengine.logging import print_log

__all__ = ['load_config', 'apply_amp', 'apply_resume', 'setup_launcher', 'build_runner',
           'add_custom_hook', 'add_test_outputs', 'save_metrics', 'DictAction']


def load_config(config, cfg_options=None):
    """A copy of ``config`` (path or Config) with ``--cfg-options`` merged in."""
    cfg = Config.fromfile(config) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    cfg.setdefault('default_scope', 'cascade_seg')
    return cfg


def default_work_dir(cfg):
    stem = osp.splitext(osp.basename(cfg.filename))[0] if cfg.filename else 'default'
    return osp.join('work_dirs', stem)


def apply_amp(cfg, device=None):
    """Switch the optimizer wrapper to mixed precision.

    On GPU mmengine's ``AmpOptimWrapper`` (float16 + dynamic loss scaling); on CPU
    our ``AutocastOptimWrapper`` with bfloat16 (mmengine's needs a GPU).
    """
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    ow = cfg.get('optim_wrapper')
    if ow is None:
        raise ValueError('--amp needs an optim_wrapper in the config')
    if ow.get('type', 'OptimWrapper') in ('AmpOptimWrapper', 'AutocastOptimWrapper'):
        return cfg
    if device == 'cuda':
        ow.type = 'AmpOptimWrapper'
        ow.setdefault('loss_scale', 'dynamic')
    else:
        ow.type = 'AutocastOptimWrapper'
        ow.setdefault('dtype', 'bfloat16')
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


def add_custom_hook(cfg, hook):
    """Append ``hook`` (a dict) to ``cfg.custom_hooks`` unless one of its type is there."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == hook['type'] for h in hooks):
        hooks.append(hook)
    cfg.custom_hooks = hooks
    return cfg


def check_config_num_classes(cfg):
    """Run the detector's config-level num_classes check when that helper exists."""
    if not (cfg.get('model') or {}).get('roi_head'):
        return  # not a two-stage detector: nothing to check (and no need to import the models)
    try:
        from cascade_seg.models.detectors.two_stage import check_num_classes
    except ImportError:
        return
    check_num_classes(cfg)


def build_runner(config, work_dir=None, cfg_options=None, resume=None, amp=False,
                 launcher='none', seed=None, load_from=None):
    """Build an mmengine Runner the way tools/train.py and tools/test.py do.

    ``config`` is a path or a Config (not modified). ``work_dir`` defaults to the
    config's, else ``work_dirs/<config stem>``; ``resume`` is None, ``'auto'`` or a
    checkpoint path (see :func:`apply_resume`); ``load_from`` loads weights without
    resuming (testing).
    """
    import cascade_seg.engine  # noqa: F401  (safe-globals allow-list, hooks)
    from mmengine.runner import Runner

    cfg = load_config(config, cfg_options)
    cfg.work_dir = work_dir or cfg.get('work_dir') or default_work_dir(cfg)
    if load_from is not None:
        cfg.load_from = load_from
    apply_resume(cfg, resume)
    if amp:
        apply_amp(cfg)
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
    check_config_num_classes(cfg)
    add_custom_hook(cfg, dict(type='NumClassesCheckHook'))
    setup_launcher(cfg, launcher)
    return Runner.from_cfg(cfg)


def add_test_outputs(cfg, show_dir=None, score_thr=0.3, out_pkl=None):
    """Extra test outputs: drawn predictions in ``show_dir``, raw predictions in ``out_pkl``."""
    if show_dir:
        add_custom_hook(cfg, dict(type='SavePredictionImagesHook', out_dir=show_dir,
                                  score_thr=score_thr))
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
