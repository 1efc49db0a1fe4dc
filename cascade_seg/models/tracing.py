"""Whether the model is being traced, exported, compiled or FLOP-counted: then the plain ops
run (no threads, no custom autograd functions, no oneDNN-only kernels); and whether this torch
has the oneDNN kernels a speed path needs."""
import contextlib

import torch

__all__ = ['is_tracing', 'plain_ops', 'has_onednn_ops']

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


def has_onednn_ops(*names):
    """Whether this torch is built with oneDNN and has the ``torch.ops.mkldnn`` ops ``names``
    (the fused kernels of fast_linear.py and fused_conv.py)."""
    try:
        return torch.backends.mkldnn.is_available() and \
            all(hasattr(torch.ops.mkldnn, name) for name in names)
    except (AttributeError, RuntimeError):
        return False
