"""PANet's FCN mask head with adaptive feature pooling (arXiv 1803.01534, section 3.2).

The FCN mask head with its first conv unshared per pyramid level: each level's RoI feature
(``AllLevelRoIExtractor``) goes through its own conv1 (+ norm, ReLU), the levels are fused
element-wise (max or sum), and conv2.., the upsampling and the logits follow as in
``FCNMaskHead``.
"""
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import ConvModule, cpu_conv_layout
from .all_level_roi_extractor import LEVEL_FUSIONS, check_level_input, fuse_levels
from .mask_heads import FCNMaskHead


@MODELS.register_module()
class AFPFCNMaskHead(FCNMaskHead):
    """``forward(x (K, L, C, S, S), res_feat=None, return_logits=True, return_feat=False)``.

    Args:
        num_levels: pyramid levels in the input (``L``); conv1 is ``level_convs.{l}``, one per
            level, and ``convs.{i}`` holds conv2..conv``num_convs``. ``None`` turns adaptive
            pooling off: the input is ``(K, C, S, S)`` and the head is exactly
            :class:`FCNMaskHead` (``convs.0`` is conv1).
        fusion: ``'max'`` (the paper's) or ``'sum'`` over the levels' conv1 outputs.
        Everything else as :class:`FCNMaskHead`. With ``with_conv_res`` (HTC's mask
        information flow) the previous stage's feature, mapped by ``conv_res``, is added to
        every level's input before its conv1 (for FCNMaskHead: to the input before conv1).
    """

    def __init__(self, num_levels=4, fusion='max', num_convs=4, in_channels=256,
                 conv_kernel_size=3, conv_out_channels=256, conv_cfg=None, norm_cfg=None,
                 **kwargs):
        if fusion not in LEVEL_FUSIONS:
            raise ValueError(f'fusion must be one of {LEVEL_FUSIONS}, got {fusion!r}')
        afp = num_levels is not None
        if afp and num_convs < 1:
            raise ValueError('adaptive feature pooling needs at least one conv (conv1)')
        super().__init__(num_convs=num_convs - 1 if afp else num_convs,
                         in_channels=conv_out_channels if afp else in_channels,
                         conv_kernel_size=conv_kernel_size, conv_out_channels=conv_out_channels,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs)
        self.num_levels, self.fusion = num_levels, fusion
        self.in_channels, self.num_convs = in_channels, num_convs
        if afp:
            self.level_convs = nn.ModuleList(
                ConvModule(in_channels, conv_out_channels, conv_kernel_size,
                           padding=(conv_kernel_size - 1) // 2, conv_cfg=conv_cfg,
                           norm_cfg=norm_cfg)
                for _ in range(num_levels))

    def fuse_input(self, x, res_feat=None):
        """The RoI feature after conv1 (fused over levels; ``(K, C, S, S)``), with the
        information-flow residual added to the input first. Without adaptive pooling: the
        input plus the residual, conv1 left to ``convs``."""
        if res_feat is not None and not self.with_conv_res:
            raise ValueError('res_feat given to a mask head built without with_conv_res')
        res = self.conv_res(res_feat) if res_feat is not None else None
        if self.num_levels is None:
            return x if res is None else cpu_conv_layout(x, self.training) + res
        check_level_input(x, self.num_levels, type(self).__name__)
        if res is not None:
            x = x + res.unsqueeze(1)
        return fuse_levels([conv(cpu_conv_layout(x[:, lvl], self.training))
                            for lvl, conv in enumerate(self.level_convs)], self.fusion)

    def forward(self, x, res_feat=None, return_logits=True, return_feat=False):
        return super().forward(self.fuse_input(x, res_feat), None, return_logits, return_feat)
