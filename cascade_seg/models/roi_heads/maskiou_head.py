"""Mask-IoU head (Mask Scoring R-CNN, arXiv 1903.00241; CenterMask's mask scoring): regress the
IoU of each RoI's predicted mask with its ground truth, one output per class."""
import torch
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..fast_linear import Linear
from ..layers import ConvModule


@MODELS.register_module()
class MaskIoUHead(nn.Module):
    """RoI features ``(K, C, S, S)`` concatenated with the predicted mask probabilities
    max-pooled to ``S x S`` (28 -> 14: 2x2) -> ``num_convs`` conv3x3 + ReLU (the last one
    stride 2) -> ``num_fcs`` fc + ReLU -> ``fc_mask_iou``: ``(K, num_classes)`` IoUs.

    ``loss(pred, target)``: L2, ``0.5 (pred - target)^2`` averaged over the RoIs with a target
    above 0, times ``loss_weight``. Parameter names as MMDetection's ``MaskIoUHead``.
    """

    def __init__(self, num_convs=4, num_fcs=2, roi_feat_size=14, in_channels=256,
                 conv_out_channels=256, fc_out_channels=1024, num_classes=80, loss_weight=1.0,
                 init_cfg=None):
        super().__init__()
        if num_convs < 1:
            raise ValueError('MaskIoUHead needs at least one conv (the stride-2 one)')
        self.num_classes, self.loss_weight = num_classes, loss_weight
        self.roi_feat_size = roi_feat_size
        self.convs = nn.ModuleList(
            ConvModule(in_channels + 1 if i == 0 else conv_out_channels, conv_out_channels, 3,
                       stride=2 if i == num_convs - 1 else 1, padding=1)
            for i in range(num_convs))
        pooled = (roi_feat_size - 1) // 2 + 1
        dims = [conv_out_channels * pooled ** 2] + [fc_out_channels] * num_fcs
        self.fcs = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.fc_mask_iou = nn.Linear(dims[-1], num_classes)
        for fc in self.fcs:
            nn.init.kaiming_normal_(fc.weight, mode='fan_out', nonlinearity='relu')
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_mask_iou.weight, std=0.01)
        nn.init.zeros_(self.fc_mask_iou.bias)

    def forward(self, roi_feats, mask_probs):
        """``roi_feats (K, C, S, S)``, ``mask_probs (K, M, M)`` -> IoUs ``(K, num_classes)``."""
        mask = F.adaptive_max_pool2d(mask_probs[:, None].to(roi_feats.dtype),
                                     roi_feats.shape[-2:])
        x = torch.cat([roi_feats, mask], dim=1)
        for conv in self.convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.fc_mask_iou(x)

    def loss(self, iou_pred, iou_targets):
        """``iou_pred``, ``iou_targets``: ``(P,)``; 0 (on the graph) when no target is > 0."""
        valid = iou_targets > 0
        if not valid.any():
            return iou_pred.sum() * 0
        diff = iou_pred[valid].float() - iou_targets[valid].float()
        return self.loss_weight * 0.5 * (diff * diff).mean()
