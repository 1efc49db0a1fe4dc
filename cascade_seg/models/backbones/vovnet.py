"""VoVNetV2 (CenterMask, arXiv 1911.06667): one-shot aggregation (OSA) modules with an identity
path and effective squeeze-excitation (eSE), in the V-39 / V-57 / V-99 layouts."""

import torch
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import ConvModule
from .base import StagedBackbone


class ESE(nn.Module):
    """Effective squeeze-excitation: global average pool -> 1x1 conv C -> C (with bias) ->
    hard sigmoid -> rescale the channels. One fc instead of SE's two keeps every channel's
    information (no C/r bottleneck)."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class OSAModule(nn.Module):
    """``num_layers`` conv3x3 layers in a chain; the input and every layer's output are
    concatenated once at the end and merged by a 1x1 conv, then eSE; with ``identity`` the
    input is added (VoVNetV2's residual, from the second module of a stage on)."""

    def __init__(self, in_channels, stage_channels, out_channels, num_layers=5, identity=False,
                 ese=True, norm_cfg=dict(type='BN', requires_grad=True)):
        super().__init__()
        if identity and in_channels != out_channels:
            raise ValueError('the identity path needs in_channels == out_channels')
        self.identity = identity
        self.layers = nn.ModuleList(
            ConvModule(in_channels if i == 0 else stage_channels, stage_channels, 3, padding=1,
                       norm_cfg=norm_cfg) for i in range(num_layers))
        self.concat = ConvModule(in_channels + num_layers * stage_channels, out_channels, 1,
                                 norm_cfg=norm_cfg)
        self.ese = ESE(out_channels) if ese else None

    def forward(self, x):
        outs = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            outs.append(y)
        y = self.concat(torch.cat(outs, dim=1))
        if self.ese is not None:
            y = self.ese(y)
        return y + x if self.identity else y


@MODELS.register_module()
class VoVNet(StagedBackbone):
    """VoVNetV2: a stem of three conv3x3 (strides 2, 1, 2) and four stages of OSA modules
    (stage 2 at stride 4; stages 3..5 start with a 3x3 stride-2 max pool, ceil mode).

    Args:
        arch: ``'V-39'``, ``'V-57'`` or ``'V-99'`` (blocks per stage 1-1-2-2, 1-1-4-3,
            1-3-9-3; 5 conv layers per OSA module) or a dict like ``ARCH['V-39']``.
        out_indices: stages to return (0..3 = C2..C5: 256, 512, 768, 1024 channels).
        frozen_stages, norm_cfg, norm_eval, init_cfg: as for ``ResNet`` (-1: nothing frozen;
            0: the stem; i: the stem and stages 1..i).
        ese: the eSE attention in every OSA module (VoVNetV2); off: VoVNetV1 + identity.
    Parameter names: ``stem.{0,1,2}``, ``stages.{s}.{b}.layers.{i}``, ``...concat``,
    ``...ese.fc``.
    """

    ARCH = {
        'V-39': dict(stem=(64, 64, 128), stage_channels=(128, 160, 192, 224),
                     out_channels=(256, 512, 768, 1024), num_layers=5, blocks=(1, 1, 2, 2)),
        'V-57': dict(stem=(64, 64, 128), stage_channels=(128, 160, 192, 224),
                     out_channels=(256, 512, 768, 1024), num_layers=5, blocks=(1, 1, 4, 3)),
        'V-99': dict(stem=(64, 64, 128), stage_channels=(128, 160, 192, 224),
                     out_channels=(256, 512, 768, 1024), num_layers=5, blocks=(1, 3, 9, 3)),
    }

    def __init__(self, arch='V-39', in_channels=3, out_indices=(0, 1, 2, 3), frozen_stages=1,
                 norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, ese=True,
                 init_cfg=None):
        super().__init__()
        if isinstance(arch, str):
            if arch not in self.ARCH:
                raise KeyError(f'unknown VoVNet arch {arch!r}; use one of {sorted(self.ARCH)}')
            arch = self.ARCH[arch]
        if max(out_indices) > 3:
            raise ValueError('VoVNet has stages 0..3')
        self.out_indices, self.frozen_stages = tuple(out_indices), frozen_stages
        self.norm_eval, self.init_cfg = norm_eval, init_cfg
        s = arch['stem']
        self.stem = nn.Sequential(
            ConvModule(in_channels, s[0], 3, stride=2, padding=1, norm_cfg=norm_cfg),
            ConvModule(s[0], s[1], 3, stride=1, padding=1, norm_cfg=norm_cfg),
            ConvModule(s[1], s[2], 3, stride=2, padding=1, norm_cfg=norm_cfg))
        self.stages = nn.ModuleList()
        channels = s[2]
        for i, (mid, out, n) in enumerate(zip(arch['stage_channels'], arch['out_channels'],
                                              arch['blocks'])):
            blocks = [OSAModule(channels if b == 0 else out, mid, out, arch['num_layers'],
                                identity=b > 0, ese=ese, norm_cfg=norm_cfg) for b in range(n)]
            self.stages.append(nn.Sequential(*blocks))
            channels = out
        self.out_channels = [arch['out_channels'][i] for i in self.out_indices]
        self._default_init()
        self._freeze_stages()

    def _default_init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def frozen_modules(self):
        stem = [] if self.frozen_stages < 0 else [self.stem]
        return stem + list(self.stages[:max(self.frozen_stages, 0)])

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
