"""CenterMask's spatial attention-guided mask head (SAG-Mask, arXiv 1911.06667 sec. 3.3)."""
import torch
from torch import nn

from cascade_seg.registry import MODELS

from ..layers import cpu_conv_layout
from .mask_heads import FCNMaskHead


class SpatialAttention(nn.Module):
    """Channel-wise mean and max of the feature -> concat (2 channels) -> conv ``k x k``
    2 -> 1 without bias -> sigmoid: a per-pixel weight multiplied onto every channel."""

    def __init__(self, kernel_size=3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(descriptor))


@MODELS.register_module()
class SAGMaskHead(FCNMaskHead):
    """The FCN mask head (4 x conv3x3 + ReLU, 2x2 stride-2 ConvTranspose + ReLU, 1x1 per-class
    logits) with :class:`SpatialAttention` between the convs and the upsampling. Same options,
    loss and names as ``FCNMaskHead``, plus ``spatial_attention.conv``; ``attention_kernel``
    3 (the paper's) or 7."""

    def __init__(self, attention_kernel=3, **kwargs):
        super().__init__(**kwargs)
        if attention_kernel not in (3, 7):
            raise ValueError(f'attention_kernel must be 3 or 7, got {attention_kernel}')
        self.spatial_attention = SpatialAttention(attention_kernel)

    def _forward(self, x, res_feat=None, return_logits=True, return_feat=False):
        x = cpu_conv_layout(x, self.training)
        if res_feat is not None:
            if not self.with_conv_res:
                raise ValueError('res_feat given to a mask head built without with_conv_res')
            x = x + self.conv_res(res_feat)
        for conv in self.convs:
            x = conv(x)
        feat = x = self.spatial_attention(x)
        if not return_logits:
            return feat
        logits = self.conv_logits(self._upsampled(x))
        return (logits, feat) if return_feat else logits
