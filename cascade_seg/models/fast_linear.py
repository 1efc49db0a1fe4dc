"""float32 fully-connected layers through oneDNN on CPU, forward and backward.

PyTorch computes a float32 ``F.linear`` on CPU with its BLAS (MKL in the official wheels),
and on AMD CPUs MKL takes an AVX2 path: on two Zen 5 cores the box head's fc6 on 1000 RoIs
(12544 -> 1024) takes 114 ms, where oneDNN, the library that already runs the convolutions,
takes 53 ms with AVX-512; each of the two backward products gains alike (2.3x). The big
layers of the RoI heads (the box heads' shared fcs, the MLP mask head, PANet's fusion fc) use
:class:`Linear`, an ``nn.Linear`` (same parameters and state-dict keys) whose float32 CPU
forward and backward call oneDNN's GEMM (``torch.ops.mkldnn._linear_pointwise``, the kernel
TorchInductor emits for CPU linears). Results equal ``F.linear``'s up to summation order.

Everything else takes ``F.linear``: bfloat16/float16 under autocast (already oneDNN), CUDA,
float64, tracing and export, a torch without the op, or ``CASCADE_SEG_ONEDNN_LINEAR=0``.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from .tracing import has_onednn_ops, is_tracing

__all__ = ['Linear', 'linear', 'onednn_linear_enabled']


def _gemm(x, weight, bias=None):
    """``x @ weight.T + bias`` by oneDNN (``x``: (N, K), ``weight``: (M, K), strided views
    accepted)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


_HAS_OP = has_onednn_ops('_linear_pointwise')


def onednn_linear_enabled():
    """Whether float32 CPU linears of :class:`Linear` go through oneDNN here."""
    return _HAS_OP and os.environ.get('CASCADE_SEG_ONEDNN_LINEAR', '1') != '0'


class _OneDNNLinear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _gemm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _gemm(grad_out, weight.t())      # (N, M) @ (M, K)
        if ctx.needs_input_grad[1]:
            gw = _gemm(grad_out.t(), x.t())       # (M, N) @ (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(0)
        return gx, gw, gb


def _use_onednn(x, weight):
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu') and onednn_linear_enabled()
            and not (torch.jit.is_scripting() or is_tracing()))


def linear(x, weight, bias=None):
    """``F.linear`` with the float32 CPU case computed by oneDNN (see the module docstring)."""
    if not _use_onednn(x, weight) or x.numel() == 0:
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    out = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.reshape(*lead, weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` whose float32 CPU products run on oneDNN (same parameters and keys)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
