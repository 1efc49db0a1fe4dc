"""Feature Pyramid Network (Lin et al. 2017) with MMDetection's options and parameter names."""
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import ConvModule


@MODELS.register_module()
class FPN(nn.Module):
    """Top-down pyramid: 1x1 laterals, upsample-and-add, 3x3 output convs, extra levels.

    Args:
        in_channels: channels of each backbone level given to ``forward``.
        out_channels: channels of every output level.
        num_outs: number of outputs; levels beyond the backbone's are extra levels, made by
            ``max_pool2d(kernel 1, stride 2)`` of the last output (``add_extra_convs=False``)
            or by stride-2 3x3 convs on the last backbone input (``'on_input'``, also ``True``),
            the last lateral (``'on_lateral'``) or the last output (``'on_output'``).
        start_level, end_level: backbone levels used (``end_level=-1``: up to the last one).
        relu_before_extra_convs: ReLU before the 2nd, 3rd, ... extra conv.
        upsample_cfg: ``F.interpolate`` kwargs; without ``scale_factor`` the coarser map is
            resized to the finer one's exact size, so odd sizes work.
    """

    def __init__(self, in_channels, out_channels=256, num_outs=5, start_level=0, end_level=-1,
                 add_extra_convs=False, relu_before_extra_convs=False, no_norm_on_lateral=False,
                 conv_cfg=None, norm_cfg=None, act_cfg=None, upsample_cfg=dict(mode='nearest'),
                 init_cfg=None):
        super().__init__()
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_ins, self.num_outs = len(in_channels), num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg)
        if end_level == -1 or end_level == self.num_ins - 1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError('num_outs must cover every used backbone level')
        else:
            self.backbone_end_level = end_level + 1
            if end_level >= self.num_ins or num_outs != end_level - start_level + 1:
                raise ValueError('end_level/num_outs mismatch')
        self.start_level, self.end_level = start_level, end_level
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        if add_extra_convs not in (False, 'on_input', 'on_lateral', 'on_output'):
            raise ValueError(f'bad add_extra_convs {add_extra_convs!r}')
        self.add_extra_convs = add_extra_convs

        conv = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
        lateral = dict(conv, norm_cfg=None if no_norm_on_lateral else norm_cfg)
        used = range(start_level, self.backbone_end_level)
        self.lateral_convs = nn.ModuleList(
            ConvModule(self.in_channels[i], out_channels, 1, **lateral) for i in used)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, **conv) for _ in used)
        num_extra = num_outs - self.backbone_end_level + start_level
        if add_extra_convs:
            for i in range(num_extra):
                c_in = self.in_channels[self.backbone_end_level - 1] \
                    if i == 0 and add_extra_convs == 'on_input' else out_channels
                self.fpn_convs.append(
                    ConvModule(c_in, out_channels, 3, stride=2, padding=1, **conv))
        self.init_weights()

    def init_weights(self):
        # Xavier-uniform convs, zero biases (MMDetection's FPN default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _upsample(self, coarse, size):
        if 'scale_factor' in self.upsample_cfg:
            return F.interpolate(coarse, **self.upsample_cfg)
        return F.interpolate(coarse, size=size, **self.upsample_cfg)

    def forward(self, inputs):
        laterals, outs = self._top_down(inputs)
        return self._extra_levels(inputs, laterals, outs)

    def _top_down(self, inputs):
        """Laterals after the top-down sum, and the output convs' maps of the used levels."""
        if len(inputs) != self.num_ins:
            raise ValueError(f'{type(self).__name__} expects {self.num_ins} inputs, '
                             f'got {len(inputs)}')
        # Coarse to fine, each lateral conv adding the upsampled coarser lateral to its output
        # (in the conv's oneDNN call at CPU inference, see fused_conv.py).
        levels = inputs[self.start_level:self.backbone_end_level]
        laterals = [None] * len(levels)
        laterals[-1] = self.lateral_convs[-1](levels[-1])
        for i in range(len(levels) - 1, 0, -1):
            laterals[i - 1] = self.lateral_convs[i - 1](
                levels[i - 1], residual=self._upsample(laterals[i], levels[i - 1].shape[-2:]))
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        return laterals, outs

    def _extra_levels(self, inputs, laterals, outs):
        """``outs`` (one map per used level) extended to ``num_outs`` levels."""
        outs = list(outs)
        num_used = len(laterals)
        if self.num_outs > num_used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - num_used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {'on_input': inputs[self.backbone_end_level - 1],
                          'on_lateral': laterals[-1], 'on_output': outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[num_used](source))
                for i in range(num_used + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return tuple(outs)
