"""ResNet backbone (torchvision parameter names) with frozen stages, norm_eval and plugins."""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from cascade_seg.registry import MODELS

from ..fused_conv import conv_norm_act, fold_into
from ..layers import build_norm_layer, build_plugin
from ..tracing import is_tracing
from .base import StagedBackbone, load_local_state_dict  # noqa: F401 (re-exported)

PLUGIN_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')


def conv3x3(in_planes, out_planes, stride=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class _Block(nn.Module):
    """Shared plugin and checkpointing plumbing of BasicBlock and Bottleneck.

    A plugin is stored under its ``_abbr_`` plus optional ``postfix`` as MMDetection does
    (e.g. ``layer2.0.context_block``), so MMDetection GCNet checkpoints load unchanged.
    """

    def _make_plugins(self, plugins, channels_at):
        self.plugin_names = {pos: [] for pos in PLUGIN_POSITIONS}
        for plugin in plugins or []:
            position = plugin['position']
            if position not in channels_at:
                raise ValueError(f'{type(self).__name__} has no plugin position {position!r}')
            cfg = dict(plugin['cfg'])
            name, layer = build_plugin(cfg, channels_at[position], postfix=cfg.pop('postfix', ''))
            if hasattr(self, name):
                raise ValueError(f'duplicate plugin name {name!r}; give one a "postfix"')
            self.add_module(name, layer)
            self.plugin_names[position].append(name)

    def _plugins(self, x, position):
        for name in self.plugin_names[position]:
            x = getattr(self, name)(x)
        return x

    def _last(self, out, conv, norm, position, identity):
        """``relu(norm(conv(out)) + identity)``: one oneDNN call at CPU inference once the norm
        is folded (fused_conv.py), unless a plugin sits between the norm and the sum."""
        if self.plugin_names[position]:
            return self.relu(self._plugins(norm(conv(out)), position) + identity)
        return conv_norm_act(out, conv, norm, self.relu, residual=identity)

    def fold_norms(self):
        """Fold the BatchNorms into their convs (fused_conv.fuse_for_inference)."""
        pairs = [(self, getattr(self, f'conv{i}'), f'bn{i}') for i in (1, 2, 3)
                 if hasattr(self, f'bn{i}')]
        if self.downsample is not None:
            pairs.append((self.downsample, self.downsample[0], '1'))
        return sum(fold_into(*pair) for pair in pairs)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._residual, x, identity, use_reentrant=False)
        return self._residual(x, identity)


class BasicBlock(_Block):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, style='pytorch',
                 norm_cfg=dict(type='BN'), plugins=None, with_cp=False):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = build_norm_layer(norm_cfg, planes)[1]
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = build_norm_layer(norm_cfg, planes)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.with_cp = downsample, with_cp
        self._make_plugins(plugins, {'after_conv1': planes, 'after_conv2': planes})

    def _residual(self, x, identity):
        out = self._plugins(conv_norm_act(x, self.conv1, self.bn1, self.relu), 'after_conv1')
        return self._last(out, self.conv2, self.bn2, 'after_conv2', identity)


class Bottleneck(_Block):
    """1x1 -> 3x3 -> 1x1. 'pytorch' style strides the 3x3 conv, 'caffe' style the first 1x1."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, style='pytorch',
                 norm_cfg=dict(type='BN'), plugins=None, with_cp=False):
        super().__init__()
        if style not in ('pytorch', 'caffe'):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        stride1, stride2 = (1, stride) if style == 'pytorch' else (stride, 1)
        self.conv1 = conv1x1(inplanes, planes, stride1)
        self.bn1 = build_norm_layer(norm_cfg, planes)[1]
        self.conv2 = conv3x3(planes, planes, stride2, dilation)
        self.bn2 = build_norm_layer(norm_cfg, planes)[1]
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = build_norm_layer(norm_cfg, planes * self.expansion)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.with_cp = downsample, with_cp
        self._make_plugins(plugins, {'after_conv1': planes, 'after_conv2': planes,
                                     'after_conv3': planes * self.expansion})

    def _residual(self, x, identity):
        out = self._plugins(conv_norm_act(x, self.conv1, self.bn1, self.relu), 'after_conv1')
        out = self._plugins(conv_norm_act(out, self.conv2, self.bn2, self.relu), 'after_conv2')
        return self._last(out, self.conv3, self.bn3, 'after_conv3', identity)


def stem_max_pool(pool, x):
    """``pool(x)`` for the stem's 3x3 stride-2 max pool. PyTorch's CPU kernel for an NCHW map is
    slow (64 x 256 x 256: 12 ms on two Zen 5 cores, 0.7 ms channels-last); where no gradient
    is needed (a frozen stem in training), two separable passes of ``torch.maximum`` give the
    same values in ~2.4 ms."""
    plain = (x.requires_grad and torch.is_grad_enabled()) or x.device.type != 'cpu' or \
        not x.is_contiguous() or x.dim() != 4 or is_tracing() or \
        (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode) != \
        (3, 2, 1, 1, False)
    if plain:
        return pool(x)
    x = F.pad(x, (1, 1, 1, 1), value=float('-inf'))
    oh, ow = (x.shape[-2] - 3) // 2 + 1, (x.shape[-1] - 3) // 2 + 1
    cols = torch.maximum(x[..., 0:2 * ow - 1:2], x[..., 1:2 * ow:2])
    torch.maximum(cols, x[..., 2:2 * ow + 1:2], out=cols)
    out = torch.maximum(cols[..., 0:2 * oh - 1:2, :], cols[..., 1:2 * oh:2, :])
    return torch.maximum(out, cols[..., 2:2 * oh + 1:2, :], out=out)


def make_res_layer(block, inplanes, planes, num_blocks, stride=1, dilation=1, style='pytorch',
                   norm_cfg=dict(type='BN'), plugins=None, with_cp=False):
    """One stage: ``num_blocks`` blocks, the first one strided and with a projection shortcut."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride),
                                   build_norm_layer(norm_cfg, planes * block.expansion)[1])
    kwargs = dict(dilation=dilation, style=style, norm_cfg=norm_cfg, plugins=plugins,
                  with_cp=with_cp)
    layers = [block(inplanes, planes, stride, downsample=downsample, **kwargs)]
    layers += [block(planes * block.expansion, planes, **kwargs) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


def stage_plugins(plugins, stage_idx):
    """The plugin entries (``cfg`` + ``position``) active in stage ``stage_idx``."""
    out = []
    for p in plugins or []:
        stages = p.get('stages')
        if p['position'] not in PLUGIN_POSITIONS:
            raise ValueError(f"plugin position must be one of {PLUGIN_POSITIONS}, "
                             f"got {p['position']!r}")
        if stages is None or stages[stage_idx]:
            out.append(dict(cfg=p['cfg'], position=p['position']))
    return out


@MODELS.register_module()
class ResNet(StagedBackbone):
    """ResNet returning the outputs of the stages in ``out_indices`` (C2..C5: strides 4..32).

    Args:
        depth: 18, 34 (BasicBlock), 50, 101, 152 (Bottleneck).
        frozen_stages: -1 nothing frozen; 0 the stem; i the stem and stages 1..i
            (eval mode, ``requires_grad=False``).
        norm_cfg: ``dict(type='BN'|'SyncBN'|'FrozenBN'|'GN', requires_grad=True, ...)``.
        norm_eval: keep BatchNorm layers in eval mode during training.
        plugins: ``[dict(cfg=dict(type='ContextBlock', ratio=1/16),
            stages=(False, True, True, True), position='after_conv3')]``
            (module names: see :class:`_Block`).
        zero_init_residual: start the last norm of every block at zero.
        init_cfg: ``dict(type='Pretrained', checkpoint='/local/file.pth', prefix=None)`` loads a
            local state dict in :meth:`init_weights`; anything else keeps the default init
            (Kaiming for convs, ones/zeros for norms).
        with_cp: gradient checkpointing of each block.
    """

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth, in_channels=3, base_channels=64, num_stages=4, strides=(1, 2, 2, 2),
                 dilations=(1, 1, 1, 1), out_indices=(0, 1, 2, 3), style='pytorch',
                 frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True,
                 plugins=None, zero_init_residual=False, with_cp=False, init_cfg=None):
        super().__init__()
        if depth not in self.arch_settings:
            raise KeyError(f'invalid ResNet depth {depth}; use one of {list(self.arch_settings)}')
        if not 1 <= num_stages <= 4:
            raise ValueError('num_stages must be in [1, 4]')
        if len(strides) < num_stages or len(dilations) < num_stages \
                or max(out_indices) >= num_stages:
            raise ValueError('strides/dilations/out_indices do not match num_stages')
        self.depth, self.num_stages = depth, num_stages
        self.out_indices, self.frozen_stages = tuple(out_indices), frozen_stages
        self.norm_eval, self.zero_init_residual = norm_eval, zero_init_residual
        self.init_cfg = init_cfg
        block, stage_blocks = self.arch_settings[depth]
        self.block = block

        self.conv1 = nn.Conv2d(in_channels, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, base_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = base_channels
        self.res_layers = []
        for i in range(num_stages):
            planes = base_channels * 2 ** i
            layer = make_res_layer(block, inplanes, planes, stage_blocks[i], strides[i],
                                   dilations[i], style, norm_cfg, stage_plugins(plugins, i),
                                   with_cp)
            inplanes = planes * block.expansion
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
        self.out_channels = [base_channels * 2 ** i * block.expansion for i in self.out_indices]
        self.feat_dim = inplanes

        self._default_init()
        self._freeze_stages()

    def _default_init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Plugins (e.g. ContextBlock's zero-initialised last conv) define their own init.
        for m in self.modules():
            if m is not self and hasattr(m, 'init_weights'):
                m.init_weights()
        if self.zero_init_residual:
            for m in self.modules():
                last = getattr(m, 'bn3', None) if isinstance(m, Bottleneck) else \
                    getattr(m, 'bn2', None) if isinstance(m, BasicBlock) else None
                if last is not None and isinstance(getattr(last, 'weight', None), nn.Parameter):
                    nn.init.zeros_(last.weight)

    ignored_keys = ('fc.', )  # the ImageNet classifier

    def frozen_modules(self):
        stem = [] if self.frozen_stages < 0 else [self.conv1, self.bn1]
        return stem + [getattr(self, f'layer{i}') for i in range(1, self.frozen_stages + 1)]

    def fold_norms(self):
        """Fold the stem's BatchNorm into its conv (the blocks fold their own)."""
        return fold_into(self, self.conv1, 'bn1')

    def forward(self, x):
        x = stem_max_pool(self.maxpool, conv_norm_act(x, self.conv1, self.bn1, self.relu))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
