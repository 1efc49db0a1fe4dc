"""HTC's fused semantic segmentation head: a whole-image branch whose feature is pooled per RoI."""
import torch
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import ConvModule, cpu_conv_layout


@MODELS.register_module()
class FusedSemanticHead(nn.Module):
    """Fuse all pyramid levels at ``fusion_level``'s resolution, then 3x3 convs.

    ``forward(feats) -> (seg_logits (B, num_classes, h, w), semantic_feat (B, C, h, w))`` with
    ``(h, w)`` the size of ``feats[fusion_level]`` (stride 8 for P3 with the default level 1).
    Parameter names follow MMDetection (``lateral_convs.{i}.conv``, ``convs.{i}.conv``,
    ``conv_embedding.conv``, ``conv_logits``). ``loss_seg`` (MMDetection's style) may set
    ``ignore_index`` and ``loss_weight`` instead of ``ignore_label`` / ``loss_weight``.
    """

    def __init__(self, num_ins=5, fusion_level=1, seg_scale_factor=1 / 8, num_convs=4,
                 in_channels=256, conv_out_channels=256, num_classes=183, ignore_label=255,
                 loss_weight=0.2, conv_cfg=None, norm_cfg=None, loss_seg=None, init_cfg=None):
        super().__init__()
        if loss_seg is not None:
            ignore_label = loss_seg.get('ignore_index', ignore_label)
            loss_weight = loss_seg.get('loss_weight', loss_weight)
        self.fusion_level = fusion_level
        self.seg_scale_factor = seg_scale_factor
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.loss_weight = loss_weight
        self.lateral_convs = nn.ModuleList(
            ConvModule(in_channels, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                       inplace=False)
            for _ in range(num_ins))
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs))
        self.conv_embedding = ConvModule(conv_out_channels, conv_out_channels, 1,
                                         conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1)
        nn.init.kaiming_normal_(self.conv_logits.weight, mode='fan_out', nonlinearity='relu')
        nn.init.zeros_(self.conv_logits.bias)

    def forward(self, feats):
        x = self.lateral_convs[self.fusion_level](feats[self.fusion_level])
        size = x.shape[-2:]
        for i, feat in enumerate(feats):
            if i != self.fusion_level:
                feat = F.interpolate(feat, size=size, mode='bilinear', align_corners=True)
                x = x + self.lateral_convs[i](feat)
        x = cpu_conv_layout(x, self.training)
        for conv in self.convs:
            x = conv(x)
        # the embedding is pooled per RoI by RoIAlign, which wants NCHW
        return self.conv_logits(x), self.conv_embedding(x).contiguous()

    def loss(self, seg_logits, gt_sem_seg):
        """Cross-entropy against the label map ``(B, 1, H, W)`` nearest-resized to the logits.

        As in MMDetection, ignored pixels add 0 but still count in the mean.
        """
        if gt_sem_seg.dim() == 3:
            gt_sem_seg = gt_sem_seg[:, None]
        # Same sampling as MMDetection's ``scale_factor=seg_scale_factor`` when the padded
        # input is divisible by the stride; sizing by the logits keeps shapes equal otherwise.
        labels = F.interpolate(gt_sem_seg.float(), size=seg_logits.shape[-2:], mode='nearest')
        labels = labels[:, 0].long()
        loss = F.cross_entropy(seg_logits.float(), labels, ignore_index=self.ignore_label,
                               reduction='none')
        return loss.mean() * self.loss_weight
