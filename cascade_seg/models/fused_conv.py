"""Inference-time convolution fusion on CPU: BatchNorm folded into the convolution, and the
ReLU and residual sum computed by oneDNN as post-ops of the convolution.

At inference a ResNet bottleneck is three convolutions, three BatchNorms, three ReLUs and a
residual add: seven passes over full-size maps where three suffice. Two steps remove the rest.

1. :func:`fuse_for_inference` folds every BatchNorm that directly follows a convolution (the
   ResNet stem and blocks, ConvModules with BN: modules that define ``fold_norms``) into that
   convolution's weight and bias, in place (no second copy of the weights), and leaves a
   :class:`FoldedNorm` in the norm's place. The model is then for inference only: a
   ``FoldedNorm`` in training mode raises. MMDetection offers the same fold as
   ``--fuse-conv-bn``; GroupNorm (data-dependent) is not folded.
2. :func:`conv2d` / :func:`conv_transpose2d` compute ``relu(conv(x) + residual)`` (each part
   optional) in one oneDNN call on CPU when no gradient is needed
   (``torch.ops.mkldnn._convolution_pointwise``, the kernel TorchInductor emits for CPU
   convolutions; the ReLU and the sum are applied while the output tile is still in cache,
   and no second full-size map is allocated). Everywhere else (training, CUDA, float64,
   tracing and export, a torch without the op, ``CASCADE_SEG_ONEDNN_FUSION=0``) they are the
   plain ops. :func:`conv_norm_act` is the ConvModule/ResNet tail on top of them.

Under bfloat16 autocast the operands are cast to bfloat16 as autocast casts them for
``conv2d`` (autocast has no rule for the oneDNN op).
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from .tracing import has_onednn_ops, is_tracing

__all__ = ['FoldedNorm', 'fold_norm', 'fold_into', 'fuse_for_inference', 'conv2d',
           'conv_transpose2d', 'conv_norm_act', 'onednn_fusion_enabled']


_HAS_OPS = has_onednn_ops('_convolution_pointwise', '_convolution_transpose_pointwise')


def onednn_fusion_enabled():
    """Whether :func:`conv2d` may take the fused oneDNN kernels here."""
    return _HAS_OPS and os.environ.get('CASCADE_SEG_ONEDNN_FUSION', '1') != '0'


class FoldedNorm(nn.Module):
    """Where a BatchNorm was folded into the preceding convolution: the identity at inference;
    in training mode it raises (the statistics and affine parameters are gone)."""

    def __init__(self, folded=''):
        super().__init__()
        self.folded = folded

    def forward(self, x):
        if self.training:
            raise RuntimeError('this model was prepared for inference (fuse_for_inference folded '
                               'its BatchNorms into the convolutions): build it again to train')
        return x

    def extra_repr(self):
        return f'folded={self.folded}'


def _scale_shift(norm):
    """``(scale, shift)`` with ``norm(y) == y * scale + shift`` per channel, or None when the
    norm is not a fixed affine map (GroupNorm, a BatchNorm in training mode or without
    running statistics)."""
    if hasattr(norm, 'scale_shift'):               # our FrozenBatchNorm2d
        return norm.scale_shift()
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training or not norm.track_running_stats or norm.running_mean is None:
            return None
    elif isinstance(norm, nn.modules.batchnorm._NormBase) or not all(
            isinstance(getattr(norm, a, None), torch.Tensor)
            for a in ('weight', 'bias', 'running_mean', 'running_var')) or \
            not hasattr(norm, 'eps'):              # not torchvision's FrozenBatchNorm2d either
        return None
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    if norm.weight is not None:                    # None: a BatchNorm with affine=False
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    return scale, shift


@torch.no_grad()
def fold_norm(conv, norm):
    """Fold ``norm`` (applied to ``conv``'s output) into ``conv``'s weight and bias in place.
    Returns whether it could (see :func:`_scale_shift`)."""
    if type(conv) not in (nn.Conv2d, nn.Conv1d, nn.Conv3d) or conv.transposed:
        return False
    ss = _scale_shift(norm)
    if ss is None:
        return False
    scale, shift = (t.double() for t in ss)
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype),
                                 requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_((conv.bias.double() * scale + shift).to(conv.bias.dtype))
    return True


def fold_into(owner, conv, norm_name):
    """Fold ``owner.<norm_name>`` into ``conv`` and put a :class:`FoldedNorm` in its place
    (``owner`` may be an ``nn.Sequential`` and ``norm_name`` an index). Returns 1 or 0."""
    norm = owner[int(norm_name)] if isinstance(owner, nn.Sequential) else \
        getattr(owner, norm_name)
    if norm is None or isinstance(norm, FoldedNorm) or not fold_norm(conv, norm):
        return 0
    folded = FoldedNorm(type(norm).__name__).train(norm.training)
    if isinstance(owner, nn.Sequential):
        owner[int(norm_name)] = folded
    else:
        setattr(owner, norm_name, folded)
    return 1


def fuse_for_inference(model):
    """Fold the BatchNorms of ``model`` (in eval mode) into their convolutions, in place.

    Every module that defines ``fold_norms()`` folds its own conv/norm pairs (ResNet and its
    blocks, ConvModule). Returns the number of norms folded. The model is inference-only
    afterwards; :func:`conv2d` then runs the whole block tail in oneDNN.
    """
    if model.training:
        raise ValueError('fuse_for_inference needs a model in eval mode (model.eval()): folding '
                         'BatchNorms into the convolutions ends training')
    count = 0
    for module in list(model.modules()):
        fold = getattr(module, 'fold_norms', None)
        if callable(fold):
            count += fold()
    return count


def _fusable(x, module):
    if not (x.device.type == 'cpu' and onednn_fusion_enabled()):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad):
        return False
    if module.padding_mode != 'zeros' or isinstance(module.padding, str) or x.dim() != 4:
        return False
    return not (torch.jit.is_scripting() or is_tracing())


def _operands(x, module, residual):
    """``(x, weight, bias, residual)`` in the dtype the kernel runs in, or None to fall back."""
    weight, bias = module.weight, module.bias
    if torch.is_autocast_enabled('cpu'):
        dtype = torch.get_autocast_dtype('cpu')
        if dtype != torch.bfloat16:
            return None
        cast = (lambda t: t if t is None or t.dtype == dtype else t.to(dtype))
        return cast(x), cast(weight), cast(bias), cast(residual)
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.bfloat16) or \
            (residual is not None and residual.dtype != x.dtype):
        return None
    return x, weight, bias, residual


def _conv_out_shape(x, conv):
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
            zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return (x.shape[0], conv.out_channels, *size)


def conv2d(x, conv, relu=False, residual=None):
    """``relu(conv(x) + residual)`` (ReLU and residual optional) for an ``nn.Conv2d``; one
    oneDNN call on CPU at inference (module docstring), the plain ops elsewhere."""
    ops = _operands(x, conv, residual) if type(conv) is nn.Conv2d and _fusable(x, conv) \
        else None
    if ops is not None:
        x, weight, bias, residual = ops
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, *args, 'relu' if relu else 'none', [], '')
        if tuple(residual.shape) == _conv_out_shape(x, conv):  # no broadcasting in the op
            # torch 2.14 has no bfloat16 kernel for the add+ReLU post-op pair: ReLU in place
            relu_in_op = relu and x.dtype == torch.float32
            out = torch.ops.mkldnn._convolution_pointwise(
                x, residual, weight, bias, *args, 'add', 1.0, 'relu' if relu_in_op else None,
                [], '')
            return out.relu_() if relu and not relu_in_op else out
    y = conv(x)
    if residual is not None:
        y = y + residual
    return F.relu(y, inplace=True) if relu else y


def conv_transpose2d(x, deconv, relu=False):
    """``relu(deconv(x))`` for an ``nn.ConvTranspose2d``, one oneDNN call on CPU at inference
    (the mask heads' 2x upsampling: the ReLU would be another pass over a P x 256 x 28 x 28
    map)."""
    ops = _operands(x, deconv, None) \
        if type(deconv) is nn.ConvTranspose2d and _fusable(x, deconv) else None
    if ops is not None:
        x, weight, bias, _ = ops
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, weight, bias, list(deconv.padding), list(deconv.output_padding),
            list(deconv.stride), list(deconv.dilation), deconv.groups,
            'relu' if relu else 'none', [], '')
    y = deconv(x)
    return F.relu(y, inplace=True) if relu else y


def conv_norm_act(x, conv, norm=None, act=None, residual=None):
    """``act(norm(conv(x)) + residual)``, each part optional: :func:`conv2d` when the norm
    is absent or folded and the activation is a ReLU, the modules one by one otherwise."""
    if (norm is None or isinstance(norm, FoldedNorm)) and \
            (act is None or type(act) is nn.ReLU) and type(conv) is nn.Conv2d:
        return conv2d(x, conv, relu=act is not None, residual=residual)
    y = conv(x)
    if norm is not None:
        y = norm(y)
    if residual is not None:
        y = y + residual
    return act(y) if act is not None else y
