"""PANet's box head with adaptive feature pooling (arXiv 1803.01534, section 3.2, Fig. 6).

The 2-fc box head, except that its first fc is one per pyramid level: a RoI pooled from
every level (``AllLevelRoIExtractor``) goes through each level's own fc1 (+ ReLU), the level
outputs are fused element-wise (max, the paper's choice, or sum), and the shared fc2,
classifier and regressor follow as in ``Shared2FCBBoxHead``.
"""
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..fast_linear import Linear
from .all_level_roi_extractor import LEVEL_FUSIONS, check_level_input, fuse_levels
from .bbox_heads import ConvFCBBoxHead


@MODELS.register_module()
class AFPShared2FCBBoxHead(ConvFCBBoxHead):
    """``forward(x (K, L, C, S, S)) -> (cls_score, bbox_pred)``.

    Args:
        num_levels: pyramid levels in the input (``L``); each has its own fc1,
            ``level_fcs.{l}`` (``C * S * S -> fc_out_channels``, unshared: 4 x 12.8 M
            parameters for R50-FPN's 256 x 7 x 7 -> 1024).
        fusion: ``'max'`` (element-wise maximum over levels) or ``'sum'``.
        Everything else as :class:`Shared2FCBBoxHead`; ``shared_fcs.0`` is fc2.
    """

    def __init__(self, num_levels=4, fusion='max', in_channels=256, roi_feat_size=7,
                 fc_out_channels=1024, **kwargs):
        if fusion not in LEVEL_FUSIONS:
            raise ValueError(f'fusion must be one of {LEVEL_FUSIONS}, got {fusion!r}')
        kwargs.update(num_shared_convs=0, num_shared_fcs=1)
        # The parent's single shared fc is fc2: it takes the fused fc1 output, a vector of
        # fc_out_channels, which is what in_channels=fc_out_channels with a 1x1 "RoI" gives.
        super().__init__(in_channels=fc_out_channels, roi_feat_size=1,
                         fc_out_channels=fc_out_channels, **kwargs)
        self.num_levels, self.fusion = num_levels, fusion
        self.in_channels, self.roi_feat_size = in_channels, roi_feat_size
        self.level_fcs = nn.ModuleList(
            Linear(in_channels * roi_feat_size ** 2, fc_out_channels)
            for _ in range(num_levels))
        for fc in self.level_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x):
        check_level_input(x, self.num_levels, type(self).__name__)
        x = fuse_levels([F.relu(fc(x[:, lvl].flatten(1)))
                         for lvl, fc in enumerate(self.level_fcs)], self.fusion)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.predict_logits(x)
