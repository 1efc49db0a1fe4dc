"""Shared building blocks: norm-layer factory, ConvModule, GCNet ContextBlock, plugins.

Attribute names follow MMDetection (``conv``, ``bn``/``gn``, ``activate``;
``conv_mask``/``channel_add_conv`` in ContextBlock) so checkpoints map one to one.
"""
import copy

import torch
from torch import nn

from cascade_seg.registry import MODELS

from .fused_conv import conv_norm_act, fold_into

# Config type -> (attribute abbreviation, factory(num_features, **cfg)).
_NORMS = {
    'BN': ('bn', lambda c, **kw: nn.BatchNorm2d(c, **kw)),
    'BN2d': ('bn', lambda c, **kw: nn.BatchNorm2d(c, **kw)),
    'SyncBN': ('bn', lambda c, **kw: nn.SyncBatchNorm(c, **kw)),
    'FrozenBN': ('bn', lambda c, **kw: FrozenBatchNorm2d(c, **kw)),
    'GN': ('gn', lambda c, num_groups, **kw: nn.GroupNorm(num_groups, c, **kw)),
    'LN': ('ln', lambda c, **kw: nn.LayerNorm(c, **kw)),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, applied as one scale/shift.

    Everything is a buffer, so nothing is trained and ``state_dict`` keys match BatchNorm2d's
    (``num_batches_tracked`` from a BN checkpoint is accepted and dropped).
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer('weight', torch.ones(num_features))
        self.register_buffer('bias', torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + 'num_batches_tracked', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_shift(self):
        """``(scale, shift)``: the layer is ``x * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x):
        scale, shift = self.scale_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self):
        return f'{self.num_features}, eps={self.eps}'

    @classmethod
    def convert(cls, module):
        """Return ``module`` with every BatchNorm2d/SyncBatchNorm replaced by a frozen copy."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new = cls.convert(child)
            if new is not child:
                setattr(module, name, new)
        return module


def build_norm_layer(cfg, num_features, postfix=''):
    """Build a norm layer from ``dict(type='BN'|'SyncBN'|'FrozenBN'|'GN', requires_grad, ...)``.

    Returns ``(name, module)`` where name is the MMDetection abbreviation plus ``postfix``
    (``'bn'``, ``'gn1'``, ...).
    """
    cfg = dict(cfg)
    norm_type = cfg.pop('type')
    requires_grad = cfg.pop('requires_grad', True)
    if norm_type not in _NORMS:
        raise KeyError(f'unknown norm type {norm_type!r}; known: {sorted(_NORMS)}')
    abbr, factory = _NORMS[norm_type]
    module = factory(num_features, **cfg)
    for p in module.parameters():
        p.requires_grad_(requires_grad)
    return f'{abbr}{postfix}', module


def make_norm(cfg, num_features):
    """Shorthand for ``build_norm_layer(cfg, num_features)[1]``."""
    return build_norm_layer(cfg, num_features)[1]


def build_activation(cfg):
    """``dict(type='ReLU'|'LeakyReLU'|'GELU'|'SiLU'|...)`` -> nn.Module (None -> None)."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    act_type = cfg.pop('type')
    acts = {'ReLU': nn.ReLU, 'LeakyReLU': nn.LeakyReLU, 'GELU': nn.GELU, 'SiLU': nn.SiLU,
            'Sigmoid': nn.Sigmoid, 'Tanh': nn.Tanh, 'ReLU6': nn.ReLU6}
    if act_type not in acts:
        raise KeyError(f'unknown activation {act_type!r}; known: {sorted(acts)}')
    if act_type in ('GELU', 'Sigmoid', 'Tanh'):
        cfg.pop('inplace', None)
    return acts[act_type](**cfg)


class ConvModule(nn.Module):
    """Conv2d -> optional norm -> optional activation (MMDetection's ConvModule, that order).

    ``bias='auto'`` gives the conv a bias only when there is no norm layer.
    ``act_cfg`` may be a dict, None/False (no activation) or True (ReLU); ``act`` is an alias.
    ``conv_cfg`` is accepted for config compatibility; only plain Conv2d (None) is supported.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias='auto', conv_cfg=None, norm_cfg=None, act_cfg=dict(type='ReLU'),
                 inplace=True, act=None):
        super().__init__()
        if conv_cfg is not None and conv_cfg.get('type', 'Conv2d') not in ('Conv2d', 'Conv'):
            raise ValueError(f'ConvModule supports only Conv2d, got conv_cfg={conv_cfg}')
        if act is not None:
            act_cfg = act
        if act_cfg is True:
            act_cfg = dict(type='ReLU')
        elif act_cfg is False:
            act_cfg = None
        if bias == 'auto':
            bias = norm_cfg is None
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.norm_name = None
        if self.with_norm:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        if self.with_activation:
            act_cfg = dict(act_cfg)
            if act_cfg['type'] in ('ReLU', 'LeakyReLU', 'SiLU', 'ReLU6'):
                act_cfg.setdefault('inplace', inplace)
            self.activate = build_activation(act_cfg)
        self.init_weights()

    @property
    def norm(self):
        return getattr(self, self.norm_name) if self.norm_name else None

    def init_weights(self):
        # Kaiming (fan_out) for ReLU-followed convs as MMCV does; norms start as identity.
        nonlinearity = 'leaky_relu' if isinstance(getattr(self, 'activate', None), nn.LeakyReLU) \
            else 'relu'
        nn.init.kaiming_normal_(self.conv.weight, mode='fan_out', nonlinearity=nonlinearity)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        norm = self.norm
        if norm is not None and getattr(norm, 'weight', None) is not None \
                and isinstance(norm.weight, nn.Parameter):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def fold_norms(self):
        """Fold a BatchNorm into the conv (fused_conv.fuse_for_inference)."""
        return fold_into(self, self.conv, self.norm_name) if self.norm_name else 0

    def forward(self, x, residual=None):
        """``act(norm(conv(x))) [+ residual]``; at CPU inference one oneDNN call when the norm
        is absent or folded and the activation a ReLU (with a residual: no activation), see
        fused_conv.py."""
        act = self.activate if self.with_activation else None
        if residual is not None and act is not None:
            return conv_norm_act(x, self.conv, self.norm, act) + residual
        return conv_norm_act(x, self.conv, self.norm, act, residual)


@MODELS.register_module()
class ContextBlock(nn.Module):
    """GCNet global-context block (arXiv 1904.11492): pooled context -> bottleneck -> fuse.

    The last conv of each transform starts at zero, so a freshly built block is the identity.
    """

    _abbr_ = 'context_block'

    def __init__(self, in_channels, ratio=1. / 16, pooling_type='att',
                 fusion_types=('channel_add',)):
        super().__init__()
        if pooling_type not in ('att', 'avg'):
            raise ValueError(f'pooling_type must be att or avg, got {pooling_type!r}')
        if not fusion_types or not set(fusion_types) <= {'channel_add', 'channel_mul'}:
            raise ValueError(f'bad fusion_types {fusion_types!r}')
        self.in_channels, self.ratio = in_channels, ratio
        self.planes = int(in_channels * ratio)
        self.pooling_type, self.fusion_types = pooling_type, tuple(fusion_types)
        if pooling_type == 'att':
            self.conv_mask = nn.Conv2d(in_channels, 1, 1)
        self.channel_add_conv = self._transform() if 'channel_add' in fusion_types else None
        self.channel_mul_conv = self._transform() if 'channel_mul' in fusion_types else None
        self.init_weights()

    def _transform(self):
        # Indices 0/1/3 hold the parameters, as in MMCV (checkpoint compatibility).
        return nn.Sequential(
            nn.Conv2d(self.in_channels, self.planes, 1), nn.LayerNorm([self.planes, 1, 1]),
            nn.ReLU(inplace=True), nn.Conv2d(self.planes, self.in_channels, 1))

    def init_weights(self):
        if self.pooling_type == 'att':
            nn.init.kaiming_normal_(self.conv_mask.weight, mode='fan_in', nonlinearity='relu')
            nn.init.zeros_(self.conv_mask.bias)
        for t in (self.channel_add_conv, self.channel_mul_conv):
            if t is not None:
                nn.init.zeros_(t[-1].weight)
                nn.init.zeros_(t[-1].bias)

    def spatial_pool(self, x):
        """(B, C, H, W) -> (B, C, 1, 1) context vector."""
        if self.pooling_type == 'avg':
            return x.mean(dim=(2, 3), keepdim=True)
        b, c = x.shape[:2]
        attn = self.conv_mask(x).flatten(2).softmax(dim=-1)          # (B, 1, HW)
        context = torch.bmm(x.flatten(2), attn.transpose(1, 2))      # (B, C, 1)
        return context.view(b, c, 1, 1)

    def forward(self, x):
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


def build_plugin(cfg, in_channels, postfix=''):
    """Build a plugin from its cfg (``type`` in MODELS). Returns ``(name, module)``.

    The name is the class's ``_abbr_`` (else its snake-cased type) plus ``postfix``.
    """
    cfg = copy.deepcopy(dict(cfg))
    cls = MODELS.get(cfg.pop('type'))
    abbr = getattr(cls, '_abbr_', None) or ''.join(
        f'_{ch.lower()}' if ch.isupper() else ch for ch in cls.__name__).lstrip('_')
    return f'{abbr}{postfix}', cls(in_channels=in_channels, **cfg)


def cpu_conv_layout(x, training):
    """``x`` in the memory layout whose convolutions are fastest here (values unchanged).

    On CPU at inference, oneDNN runs NHWC (channels_last) convolutions natively, where NCHW
    costs a reorder per conv. Its NHWC backward was slower than NCHW on this machine (R50-FPN
    Mask R-CNN train step 3.5-4.4 s against 2.9-3.2 s), so training stays NCHW.
    """
    if x.device.type == 'cpu' and not training:
        return x.contiguous(memory_format=torch.channels_last)
    return x
