"""Checkpoint loading that keeps ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` only unpickles tensors, plain containers and
allow-listed globals. An mmengine checkpoint also stores its message hub
(``HistoryBuffer`` objects holding numpy arrays and scalars), so resuming fails
with ``Unsupported global``. Instead of disabling the check we allow exactly
the globals such a checkpoint needs. The list was found by saving checkpoints
with mmengine's Runner and reading them with
``torch.serialization.get_unsafe_globals_in_checkpoint``.

Every local checkpoint file, whoever asks for it (our tools, ``init_detector``,
mmengine's ``Runner.load_checkpoint`` / ``resume``), is read by
:func:`load_checkpoint_file`, which passes ``weights_only=True`` explicitly and
refuses model weights that are NaN or Inf. This module also decides which file
``--resume`` continues from (:func:`find_resume_checkpoint`).
"""
import os
import os.path as osp
import pickle
import re
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

__all__ = ['register_safe_globals', 'safe_globals_list', 'history_buffer_getattr',
           'state_dict_from_checkpoint', 'compare_state_dicts', 'load_checkpoint',
           'load_checkpoint_file', 'non_finite_weights', 'checkpoint_problem',
           'find_resume_checkpoint', 'install_safe_loader']

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


def non_finite_weights(state_dict):
    """``(key, number of NaN, number of Inf)`` of every floating tensor holding either."""
    out = []
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and value.numel():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                nan = int(torch.isnan(value).sum())
                out.append((key, nan, int((~finite).sum()) - nan))
    return out


def _check_finite(checkpoint, filename):
    try:
        state = state_dict_from_checkpoint(checkpoint)
    except TypeError:
        return  # not a weights checkpoint; the caller will say so
    bad = non_finite_weights(state)
    if bad:
        listed = ', '.join(f'{k} ({n} NaN, {i} Inf)' for k, n, i in bad[:10])
        more = f' and {len(bad) - 10} more' if len(bad) > 10 else ''
        raise ValueError(f'{filename}: {len(bad)} weight tensors hold NaN/Inf values: '
                         f'{listed}{more}. A model with such weights predicts nothing useful; '
                         'use an earlier checkpoint.')


def load_checkpoint_file(filename, map_location='cpu', check_finite=True, mmap=False):
    """``torch.load(filename, weights_only=True)`` with the mmengine allow-list.

    A refused global raises a RuntimeError naming the file (there is no fallback
    to full unpickling). With ``check_finite`` the model weights must be finite.
    """
    register_safe_globals()
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=True,
                                mmap=mmap)
    except pickle.UnpicklingError as err:  # the safe unpickler refused something
        raise RuntimeError(
            f'{filename}: refused by safe loading (torch.load(weights_only=True)): '
            f'{_refused_global(err)} A checkpoint needs no such object, so the file is not '
            'loaded. Only if you trust its origin, allow-list that global with '
            'torch.serialization.add_safe_globals.') from err
    if check_finite:
        _check_finite(checkpoint, filename)
    return checkpoint


def _refused_global(err):
    """The sentence of torch's message that names what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if 'GLOBAL' in line or 'Unsupported' in line:
            return line
    return lines[-1] if lines else repr(err)


def _mmengine_local_loader(filename, map_location):
    return load_checkpoint_file(filename, map_location=map_location)


def install_safe_loader():
    """Route mmengine's loading of local files (``Runner.load_checkpoint``, ``resume``,
    ``load_from``) through :func:`load_checkpoint_file` (idempotent)."""
    register_safe_globals()
    if CheckpointLoader._schemes.get('') is not _mmengine_local_loader:
        CheckpointLoader.register_scheme(prefixes='', loader=_mmengine_local_loader, force=True)


# --------------------------------------------------------------------------- resume points
CHECKPOINT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')


def checkpoint_problem(path):
    """Why ``path`` is not a complete checkpoint file, or None when it is one.

    A torch checkpoint is a zip archive whose directory sits at its end, so a
    file cut short by a crash fails to open; the CRC of every member is checked
    as well.
    """
    if not path:
        return 'no path'
    if not osp.isfile(path):
        return 'no such file'
    if osp.getsize(path) == 0:
        return 'empty file (0 bytes)'
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith('data.pkl') for n in zf.namelist()):
                return 'not a torch checkpoint (no data.pkl inside)'
            corrupt = zf.testzip()
            if corrupt is not None:
                return f'corrupt member {corrupt}'
    except (zipfile.BadZipFile, OSError) as err:
        return f'incomplete or not a torch checkpoint ({err})'
    return None


def _pointer_target(pointer, work_dir):
    with open(pointer) as f:
        target = f.read().strip()
    if target and not osp.isfile(target) and not osp.isabs(target):
        local = osp.join(work_dir, osp.basename(target))  # the run was started elsewhere
        if osp.isfile(local):
            return local
    return target


def find_resume_checkpoint(work_dir):
    """The checkpoint ``--resume`` continues from: ``(path or None, notes)``.

    ``last_checkpoint`` wins when it names a complete file. Otherwise (missing,
    empty, naming a missing or incomplete file) the newest complete
    ``epoch_N.pth`` / ``iter_N.pth`` in ``work_dir`` is used, newest by
    modification time, then by N. ``notes`` says what was passed over and why.
    """
    notes = []
    if not work_dir or not osp.isdir(work_dir):
        return None, [f'work dir {work_dir} does not exist']
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        target = _pointer_target(pointer, work_dir)
        problem = checkpoint_problem(target) if target else 'it is empty'
        if problem is None:
            return target, notes
        notes.append(f'{pointer} is unusable: '
                     + (problem if not target else f'it names {target}: {problem}'))
    else:
        notes.append(f'no {pointer}')
    candidates = []
    for name in os.listdir(work_dir):
        match = CHECKPOINT_NAME.match(name)
        if match:
            path = osp.join(work_dir, name)
            candidates.append((os.stat(path).st_mtime_ns, int(match.group(1)), path))
    for _, _, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, notes
        notes.append(f'{path} passed over: {problem}')
    return None, notes


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
    loaded and the rest is reported as a warning. NaN/Inf weights always raise
    (local files, see :func:`load_checkpoint_file`).
    """
    install_safe_loader()
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
