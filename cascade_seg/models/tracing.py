"""Whether the model is being traced, exported, compiled or FLOP-counted: then the plain ops
run (no threads, no custom autograd functions, no oneDNN-only kernels)."""
import contextlib

import torch

__all__ = ['is_tracing', 'plain_ops']

_plain_depth = 0


@contextlib.contextmanager
def plain_ops():
    """Within: the speed paths (threaded RoIAlign and NMS, oneDNN linears, fused convolutions)
    take the plain torch/torchvision ops, e.g. for a FLOP counter, which knows aten's
    convolution and matmul but not oneDNN's kernels."""
    global _plain_depth
    _plain_depth += 1
    try:
        yield
    finally:
        _plain_depth -= 1


def is_tracing():
    """Traced, exported, compiled, or inside :func:`plain_ops`: take the plain ops (no
    threads, no custom autograd functions and no oneDNN-only kernels, which have no ONNX
    form)."""
    return bool(_plain_depth) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or \
        torch.compiler.is_compiling()
