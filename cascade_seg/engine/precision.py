"""Numeric precision of training and inference: ``'fp32'``, ``'bf16'`` or ``'fp16'``.

One module decides what a precision means everywhere (tools/train.py, test.py, benchmark.py,
ablate.py, the inference API and the benchmarks):

- **Which precision.** An explicit argument (``--precision``; ``--amp`` is an alias of the
  device's mixed precision) wins over the config's top-level ``precision`` key, which wins over
  fp32. A config whose ``optim_wrapper`` names a mixed-precision wrapper without a
  ``precision`` key keeps the meaning it had before the key existed: mixed-precision training,
  fp32 evaluation.
  ``fp16`` needs CUDA (float16 autocast on CPU has no fast kernels and needs loss scaling, so
  it is refused rather than silently slow). ``bf16`` on a CPU without native bfloat16
  arithmetic (AVX512-BF16 or AMX, see :func:`cpu_has_native_bf16`) falls back to fp32 with one
  warning: oneDNN would emulate it, slower than fp32.
- **Training** runs the forward pass under autocast through the optimizer wrapper:
  ``AutocastOptimWrapper`` (CPU bf16, no loss scaler: bfloat16 has float32's exponent range)
  or mmengine's ``AmpOptimWrapper`` (CUDA; dynamic loss scaling for fp16).
- **Inference** (``val_step`` / ``test_step`` of the detectors, and so the val/test loops,
  ``inference_detector`` and the benchmark) runs under the same autocast: detectors mix in
  :class:`InferencePrecisionMixin`, and :func:`set_inference_precision` sets it on a built model.

Under autocast the convolutions and matrix products run in the low precision; what needs
float32 stays float32 in explicit islands in the model code (``float32_island``, ``.float()`` at
the boundary): losses, box coding and decoding, IoU and assignment, NMS inputs, RoIAlign and its
sampling coordinates, mask pasting, dense-head post-processing. docs/speed.md lists them.
"""
import contextlib
import functools
import logging
import os

import torch

__all__ = ['PRECISIONS', 'normalize_precision', 'cpu_has_native_bf16', 'resolve_precision',
           'precision_dtype', 'autocast_context', 'float32_island', 'float32_call',
           'apply_precision',
           'optim_wrapper_precision', 'set_inference_precision', 'get_inference_precision',
           'InferencePrecisionMixin', 'model_device_type']

PRECISIONS = ('fp32', 'bf16', 'fp16')
_ALIASES = {
    'fp32': 'fp32', 'float32': 'fp32', 'float': 'fp32', '32': 'fp32',
    'bf16': 'bf16', 'bfloat16': 'bf16',
    'fp16': 'fp16', 'float16': 'fp16', 'half': 'fp16', '16': 'fp16',
}
_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
_MIXED_WRAPPERS = ('AmpOptimWrapper', 'AutocastOptimWrapper')
_warned = set()


def _warn_once(key, msg):
    if key in _warned:
        return
    _warned.add(key)
    from mmengine.logging import print_log
    print_log(msg, logger='current', level=logging.WARNING)


def normalize_precision(value):
    """``'fp32' | 'bf16' | 'fp16'`` from a name or a torch dtype (None stays None)."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        for name, dtype in _DTYPES.items():
            if dtype == value:
                return name
        raise ValueError(f'no precision for dtype {value}')
    key = str(value).strip().lower().replace('torch.', '')
    if key not in _ALIASES:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {value!r}')
    return _ALIASES[key]


def precision_dtype(precision):
    """The torch dtype of a precision name."""
    return _DTYPES[normalize_precision(precision)]


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """Whether this CPU computes bfloat16 dot products natively (x86 AVX512-BF16 or AMX-BF16,
    read from /proc/cpuinfo; ``torch.backends.cpu.get_cpu_capability()`` reports AVX512 alike
    for CPUs with and without them). ``CASCADE_SEG_NATIVE_BF16=0/1`` overrides the check."""
    forced = os.environ.get('CASCADE_SEG_NATIVE_BF16')
    if forced in ('0', '1'):
        return forced == '1'
    if not torch.backends.mkldnn.is_available():
        return False
    flags = _cpu_flags()
    if flags is not None:
        return bool({'avx512_bf16', 'amx_bf16'} & flags)
    return 'AMX' in torch.backends.cpu.get_cpu_capability()


def resolve_precision(precision, device='cpu'):
    """The precision that will run on ``device`` (a device, its type or None for CPU):
    ``fp16`` without CUDA is a ValueError; ``bf16`` where it is not native falls back to fp32
    with one warning."""
    p = normalize_precision(precision) or 'fp32'
    device_type = torch.device(device).type if device is not None else 'cpu'
    if p == 'fp16' and device_type != 'cuda':
        raise ValueError(f'precision fp16 needs a CUDA device (here: {device_type}); on CPU use '
                         'bf16 (bfloat16 autocast) or fp32 (--precision, or the config\'s '
                         'precision key)')
    if p == 'bf16' and device_type == 'cpu' and not cpu_has_native_bf16():
        _warn_once('cpu-bf16', 'precision bf16: this CPU has no native bfloat16 arithmetic '
                               '(neither AVX512-BF16 nor AMX), where bfloat16 is slower than '
                               'float32: running in fp32 instead')
        return 'fp32'
    if p == 'bf16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        _warn_once('cuda-bf16', 'precision bf16: this GPU does not support bfloat16: running in '
                                'fp32 instead (fp16 is available on CUDA)')
        return 'fp32'
    return p


def autocast_context(precision, device_type='cpu'):
    """``torch.autocast`` for a low precision, a no-op context for fp32."""
    p = normalize_precision(precision) or 'fp32'
    if p == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_DTYPES[p])


def float32_island(device_type='cpu'):
    """A region computed in float32 whatever autocast is active outside (pass float32 inputs:
    autocast being off, ops keep their inputs' dtype)."""
    return torch.autocast(device_type=device_type, enabled=False)


def float32_call(fn, *tensors):
    """``fn(*tensors)`` with the tensors in float32 (float64 kept) and autocast off: a small
    layer whose outputs decide rankings or become boxes (box classifier and regressor, RPN
    objectness and deltas) costs little in float32 and then carries no bfloat16 ties."""
    device_type = tensors[0].device.type
    with float32_island(device_type):
        return fn(*[t if t.dtype == torch.float64 else t.float() for t in tensors])


def model_device_type(model):
    param = next(model.parameters(), None)
    return param.device.type if param is not None else 'cpu'


def optim_wrapper_precision(ow):
    """The precision an ``optim_wrapper`` config stands for (None: plain fp32 wrapper)."""
    if not ow or ow.get('type', 'OptimWrapper') not in _MIXED_WRAPPERS:
        return None
    if ow['type'] == 'AutocastOptimWrapper':
        return normalize_precision(ow.get('dtype', 'bfloat16'))
    return normalize_precision(ow.get('dtype') or 'fp16')


def _set_optim_wrapper(ow, precision, device_type):
    """Turn an ``optim_wrapper`` config into the wrapper of ``precision`` (in place)."""
    for key in ('dtype', 'loss_scale', 'device_type'):
        ow.pop(key, None)
    if precision == 'fp32':
        ow.type = 'OptimWrapper'
    elif device_type == 'cuda':
        ow.type = 'AmpOptimWrapper'
        ow.dtype = 'float16' if precision == 'fp16' else 'bfloat16'
        ow.loss_scale = 'dynamic'
    else:
        ow.type = 'AutocastOptimWrapper'
        ow.dtype = 'bfloat16'


def apply_precision(cfg, precision=None, amp=False, device=None):
    """Decide the run's precision and write it into ``cfg`` (in place); returns the precision
    of evaluation (validation and test loops).

    ``precision`` (the command line) wins over ``amp`` (``--amp``: bf16 on CPU, fp16 on CUDA),
    which wins over ``cfg.precision``: the chosen one (after :func:`resolve_precision`) is
    stored as ``cfg.precision``, the ``optim_wrapper`` (if any) is set to match, and
    evaluation runs in it too. Without any of them, an ``optim_wrapper`` that names a
    mixed-precision wrapper keeps its meaning from before the ``precision`` key: mixed-precision
    training (mmengine's ``AmpOptimWrapper`` of a GPU run becomes bf16 autocast on CPU, as
    ``--amp`` would), evaluation in fp32, ``cfg.precision`` unset. Otherwise fp32.
    """
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device_type = torch.device(device).type
    ow = cfg.get('optim_wrapper')
    requested = normalize_precision(precision)
    if requested is None and amp:
        requested = 'fp16' if device_type == 'cuda' else 'bf16'
    if requested is None:
        requested = normalize_precision(cfg.get('precision'))
    if requested is None:  # a config that names the wrapper itself: training only
        legacy = optim_wrapper_precision(ow)
        if legacy is not None:
            if legacy == 'fp16' and device_type != 'cuda':
                legacy = 'bf16'  # a GPU run's AmpOptimWrapper means --amp: on CPU, bf16
            _match_optim_wrapper(ow, resolve_precision(legacy, device_type), device_type)
        return 'fp32'
    effective = resolve_precision(requested, device_type)
    cfg.precision = effective
    if ow is not None:
        _match_optim_wrapper(ow, effective, device_type)
    return effective


def _match_optim_wrapper(ow, precision, device_type):
    current = optim_wrapper_precision(ow) or 'fp32'
    if current != precision or (precision != 'fp32' and device_type == 'cuda'
                                and ow.get('type') != 'AmpOptimWrapper'):
        _set_optim_wrapper(ow, precision, device_type)


def set_inference_precision(model, precision, device=None):
    """Make ``model.val_step`` / ``test_step`` run under ``precision``'s autocast (the model
    mixes in :class:`InferencePrecisionMixin`; a wrapped model's ``module`` is used). Returns
    the precision that will run (see :func:`resolve_precision`)."""
    inner = getattr(model, 'module', model)
    device = device or model_device_type(inner)
    effective = resolve_precision(precision, device)
    if effective != 'fp32' and not isinstance(inner, InferencePrecisionMixin):
        _warn_once(f'no-mixin-{type(inner).__name__}',
                   f'{type(inner).__name__} does not mix in InferencePrecisionMixin: its '
                   f'val_step / test_step run in fp32, not {effective}')
    inner.inference_precision = effective
    return effective


def get_inference_precision(model):
    return getattr(getattr(model, 'module', model), 'inference_precision', 'fp32')


class InferencePrecisionMixin:
    """``val_step`` and ``test_step`` (data preprocessor + ``predict``) under the autocast of
    ``self.inference_precision`` (default fp32). Mix in before ``BaseModel``."""

    inference_precision = 'fp32'

    def _inference_autocast(self):
        return autocast_context(self.inference_precision, model_device_type(self))

    def val_step(self, data):
        with self._inference_autocast():
            return super().val_step(data)

    def test_step(self, data):
        with self._inference_autocast():
            return super().test_step(data)
