"""PANet's bottom-up path augmentation (Liu et al. 2018, arXiv 1803.01534, section 3.1).

An FPN whose outputs P2..P5 get a second, bottom-up pass: N2 = P2 and each coarser N is
made from the finer N (3x3 conv, stride 2) plus the FPN map of its own level, followed by a
3x3 conv. The short path from the finest levels to the top carries localisation detail to
the coarse levels. Parameter names are MMDetection's (``downsample_convs``, ``pafpn_convs``).
"""
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import ConvModule
from .fpn import FPN

PAFPN_MODES = ('paper', 'mmdet')


@MODELS.register_module()
class PAFPN(FPN):
    """FPN followed by a bottom-up path. Takes FPN's arguments plus ``mode``.

    ``mode='paper'`` (the paper's equations; ReLU after every bottom-up conv)::

        N2 = P2,   N(i+1) = ReLU(conv3x3(P(i+1) + ReLU(conv3x3_stride2(N(i)))))

    ``mode='mmdet'`` (MMDetection's ``PAFPN``, numerically; loads its weights unchanged):
    the bottom-up sum runs on the FPN maps *before* the output convs and the convs have
    FPN's ``act_cfg`` (none by default)::

        M2 = P2,   M(i+1) = P(i+1) + conv3x3_stride2(M(i)),   N2 = M2,   N(i) = conv3x3(M(i))

    Both give N2 = P2 exactly. Levels beyond the backbone's are made as FPN makes them, from
    the last N (max-pool by default). The extra convs: ``(len(in_channels) - start_level - 1)
    * 2`` 3x3 convs of ``out_channels`` (R50, 256 channels: 3.54 M parameters on top of FPN's
    3.34 M).
    """

    def __init__(self, in_channels, out_channels=256, num_outs=5, start_level=0, end_level=-1,
                 add_extra_convs=False, relu_before_extra_convs=False, no_norm_on_lateral=False,
                 conv_cfg=None, norm_cfg=None, act_cfg=None, upsample_cfg=dict(mode='nearest'),
                 mode='paper', init_cfg=None):
        super().__init__(in_channels, out_channels, num_outs, start_level, end_level,
                         add_extra_convs, relu_before_extra_convs, no_norm_on_lateral,
                         conv_cfg, norm_cfg, act_cfg, upsample_cfg, init_cfg)
        if mode not in PAFPN_MODES:
            raise ValueError(f'PAFPN mode must be one of {PAFPN_MODES}, got {mode!r}')
        self.mode = mode
        bottom_up_act = dict(type='ReLU') if mode == 'paper' else act_cfg
        conv = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=bottom_up_act, inplace=False)
        num_steps = self.backbone_end_level - self.start_level - 1
        self.downsample_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, stride=2, padding=1, **conv)
            for _ in range(num_steps))
        self.pafpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, **conv)
            for _ in range(num_steps))
        self.init_weights()  # Xavier-uniform for every conv, the new ones included

    def _bottom_up(self, outs):
        """FPN maps P of the used levels -> N, the bottom-up path's maps."""
        if self.mode == 'paper':
            news = [outs[0]]
            for down, conv, p in zip(self.downsample_convs, self.pafpn_convs, outs[1:]):
                news.append(conv(p + down(news[-1])))
            return news
        sums = [outs[0]]
        for down, p in zip(self.downsample_convs, outs[1:]):
            sums.append(p + down(sums[-1]))
        return [sums[0]] + [conv(m) for conv, m in zip(self.pafpn_convs, sums[1:])]

    def forward(self, inputs):
        laterals, outs = self._top_down(inputs)
        return self._extra_levels(inputs, laterals, self._bottom_up(outs))
