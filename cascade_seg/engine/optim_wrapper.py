"""Mixed precision without a loss scaler, for CPUs (bfloat16 autocast)."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from cascade_seg.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast

__all__ = ['AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Run the forward pass under ``torch.autocast`` in ``dtype``.

    mmengine's ``AmpOptimWrapper`` refuses to start without a GPU; on CPU, autocast
    supports bfloat16, whose exponent range equals float32's, so no loss scaling
    is needed and the plain optimizer step is kept.
    """

    def __init__(self, *args, dtype='bfloat16', device_type=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.device_type = device_type

    @contextmanager
    def optim_context(self, model):
        device_type = self.device_type
        if device_type is None:
            param = next(model.parameters(), None)
            device_type = param.device.type if param is not None else 'cpu'
        with super().optim_context(model), autocast(device_type=device_type, dtype=self.cast_dtype):
            yield
