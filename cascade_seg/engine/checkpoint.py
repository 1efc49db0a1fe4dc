"""Checkpoint loading that keeps ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` only unpickles tensors, plain containers and
allow-listed globals. An mmengine checkpoint also stores its message hub
(``HistoryBuffer`` objects holding numpy arrays and scalars), so resuming fails
with ``Unsupported global``. Instead of disabling the check we allow exactly
the globals such a checkpoint needs. The list was found by saving checkpoints
with mmengine's Runner and reading them with
``torch.serialization.get_unsafe_globals_in_checkpoint``.
"""
import pickle
from collections import OrderedDict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import _load_checkpoint

__all__ = ['register_safe_globals', 'safe_globals_list', 'history_buffer_getattr',
           'state_dict_from_checkpoint', 'compare_state_dicts', 'load_checkpoint']

_REGISTERED = False


def history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` while unpickling.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle as
    ``getattr(HistoryBuffer, 'mean')``. A general ``getattr`` would let a
    malicious file walk from any allowed object to arbitrary code, so only
    public methods defined on ``HistoryBuffer`` itself are returned.
    """
    own_method = callable(vars(HistoryBuffer).get(name)) and not name.startswith('_')
    if obj is HistoryBuffer and own_method:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed while loading '
                                 'a checkpoint')


def _numpy_multiarray():
    core = getattr(np, '_core', None) or np.core  # numpy >= 2 renamed numpy.core
    return core.multiarray


def safe_globals_list():
    """The globals an mmengine checkpoint needs besides tensors and containers."""
    ma = _numpy_multiarray()
    # Numeric dtype classes: a pickled dtype is rebuilt and then has its state set,
    # which torch allows only for allow-listed types. float64/int64 are what the
    # message hub stores; the other fixed-size numeric types cover metrics that
    # log float32/int32/bool numpy scalars.
    dtype_classes = sorted({type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64)}, key=lambda c: c.__name__)
    names = [
        HistoryBuffer,
        (history_buffer_getattr, 'builtins.getattr'),
        np.ndarray,
        np.dtype,
        ma._reconstruct,
        ma.scalar,
        # the same functions under the names numpy 1.x pickles them with
        (ma._reconstruct, 'numpy.core.multiarray._reconstruct'),
        (ma.scalar, 'numpy.core.multiarray.scalar'),
        (ma._reconstruct, 'numpy._core.multiarray._reconstruct'),
        (ma.scalar, 'numpy._core.multiarray.scalar'),
        OrderedDict,
    ]
    return names + dtype_classes


def register_safe_globals():
    """Allow-list what mmengine stores in a checkpoint (idempotent)."""
    global _REGISTERED
    if not _REGISTERED and hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(safe_globals_list())
        _REGISTERED = True


def state_dict_from_checkpoint(checkpoint):
    """The model weights in a loaded checkpoint, with a DDP ``module.`` prefix removed."""
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must hold a dict of tensors, got {type(checkpoint)}')
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in checkpoint.items())


def compare_state_dicts(model_state, ckpt_state):
    """Missing keys, unexpected keys and ``(key, ckpt_shape, model_shape)`` mismatches."""
    missing = [k for k in model_state if k not in ckpt_state]
    unexpected = [k for k in ckpt_state if k not in model_state]
    mismatched = [(k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in ckpt_state.items()
                  if k in model_state and hasattr(v, 'shape') and v.shape != model_state[k].shape]
    return missing, unexpected, mismatched


def format_report(missing, unexpected, mismatched, limit=20):
    def block(title, rows):
        if not rows:
            return []
        more = [f'  ... and {len(rows) - limit} more'] if len(rows) > limit else []
        return [f'{title} ({len(rows)}):'] + [f'  {r}' for r in rows[:limit]] + more

    lines = block('size mismatch (key: checkpoint shape vs model shape)',
                  [f'{k}: {tuple(a)} vs {tuple(b)}' for k, a, b in mismatched])
    lines += block('missing in checkpoint', missing) + block('unexpected in checkpoint', unexpected)
    return '\n'.join(lines)


def load_checkpoint(model, filename, map_location='cpu', strict=False, logger='current'):
    """Load weights into ``model`` with ``weights_only`` loading; returns the checkpoint.

    Mismatched keys are listed with both shapes. ``strict=True`` raises on any
    mismatch, missing or unexpected key; otherwise the matching weights are
    loaded and the rest is reported as a warning.
    """
    register_safe_globals()
    checkpoint = _load_checkpoint(filename, map_location=map_location)
    ckpt_state = state_dict_from_checkpoint(checkpoint)
    model_state = model.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(model_state, ckpt_state)
    report = format_report(missing, unexpected, mismatched)
    if report and strict:
        raise RuntimeError(f'checkpoint {filename} does not match the model:\n{report}')
    bad = {k for k, _, _ in mismatched}
    model.load_state_dict({k: v for k, v in ckpt_state.items() if k not in bad}, strict=False)
    if report:
        print_log(f'checkpoint {filename} only partly matches the model:\n{report}',
                  logger=logger, level=30)
    return checkpoint
