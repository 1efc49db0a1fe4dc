"""Keypoint R-CNN's head (Mask R-CNN paper, section 5): ``num_convs`` 3x3 convs (512, ReLU) on
14x14 RoI features, a stride-2 transposed conv to one channel per keypoint, bilinear x2:
``K x 56 x 56`` heatmap logits. Parameter names follow MMDetection's conv modules
(``convs.{i}.conv``); torchvision's ``keypoint_head.{2i}`` / ``kps_score_lowres`` convert."""
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import ConvModule, cpu_conv_layout
from ..task_utils import keypoint_loss


@MODELS.register_module()
class KeypointRCNNHead(nn.Module):
    """``forward(x (N, C, S, S)) -> logits (N, num_keypoints, 4S, 4S)``.

    Args:
        loss_normalizer: None divides the loss by the number of valid keypoints in the batch
            (Detectron2's and torchvision's default); a number divides by that number instead
            (Detectron2's ``NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS=False`` uses images x sampled
            RoIs x positive fraction x keypoints).
    """

    def __init__(self, num_keypoints=17, in_channels=256, num_convs=8, conv_out_channels=512,
                 roi_feat_size=14, up_scale=2, conv_cfg=None, norm_cfg=None,
                 loss_normalizer=None, loss_weight=1.0, init_cfg=None):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.roi_feat_size = roi_feat_size
        self.up_scale = up_scale
        self.loss_normalizer = loss_normalizer
        self.loss_weight = loss_weight
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs))
        channels = conv_out_channels if num_convs else in_channels
        self.deconv = nn.ConvTranspose2d(channels, num_keypoints, 4, stride=2, padding=1)
        for m in [c.conv for c in self.convs] + [self.deconv]:
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def heatmap_size(self):
        return self.roi_feat_size * 2 * self.up_scale

    def forward(self, x):
        x = cpu_conv_layout(x, self.training)
        for conv in self.convs:
            x = conv(x)
        x = self.deconv(x)
        if self.up_scale != 1:
            x = F.interpolate(x, scale_factor=float(self.up_scale), mode='bilinear',
                              align_corners=False)
        return x

    def loss(self, logits, cells, valid):
        return keypoint_loss(logits, cells, valid, self.loss_normalizer) * self.loss_weight
