"""PANet's fully-connected fusion mask head (arXiv 1803.01534, section 3.4, Fig. 4).

The FCN mask head predicts each class's mask with a conv at every pixel; a fully connected
layer sees the whole RoI at once. PANet adds such a layer beside the FCN: from conv3's output
a short branch (conv4_fc 3x3, conv5_fc 3x3 with half the channels) ends in an fc to
``mask_size ** 2`` values, reshaped to one ``M x M`` map that is added to every class's mask
logits (it is class-agnostic).

The fc output activation. The paper's text and figure describe the fc output as reshaped and
added, with no activation; the authors' released code applies a ReLU to it, so the branch can
only raise mask logits. ``fc_relu=False`` (the default) follows the paper's description and
lets the branch push logits either way; ``fc_relu=True`` reproduces the released code.
"""
import torch.nn.functional as F
from torch import nn

from cascade_seg.registry import MODELS

from ..fast_linear import Linear
from ..layers import ConvModule, cpu_conv_layout
from .afp_mask_head import AFPFCNMaskHead


@MODELS.register_module()
class FFMaskHead(AFPFCNMaskHead):
    """FCN mask head + PANet's fully-connected fusion branch, optionally with adaptive pooling.

    Args:
        num_levels: ``None`` (default): the input is ``(K, C, S, S)`` from a single-level
            extractor. An int ``L``: the input is ``(K, L, C, S, S)`` from
            ``AllLevelRoIExtractor`` and conv1 is unshared per level (see
            :class:`AFPFCNMaskHead`, with ``fusion``).
        num_ff_convs: convs of the fusion branch (2: conv4_fc, conv5_fc), 3x3; all but the last
            have ``conv_out_channels``, the last ``ff_conv_out_channels``.
        ff_conv_out_channels: channels of the last branch conv (``None``: half of
            ``conv_out_channels``, i.e. 128 for 256).
        fc_relu: ReLU on the fc output before it is added (the released code); ``False``
            follows the paper's text. See the module docstring.
        Everything else as :class:`FCNMaskHead` (``num_convs >= 2``: the branch leaves after
        conv ``num_convs - 1``, conv3 of the usual four).

    Parameters: the FCN head's (conv1 as ``convs.0``, or ``level_convs.{l}`` with adaptive
    pooling), ``ff_convs.{i}`` and ``ff_fc`` (128 x 14 x 14 -> 28 x 28: 19.67 M parameters).
    ``forward`` takes ``res_feat``/``return_logits``/``return_feat`` as FCNMaskHead does, so it
    works as an HTC mask head with the information flow; the feature it passes on is the FCN
    branch's (after the last conv).
    """

    def __init__(self, num_levels=None, num_convs=4, roi_feat_size=14, conv_kernel_size=3,
                 conv_out_channels=256, num_ff_convs=2, ff_conv_out_channels=None,
                 fc_relu=False, upsample_cfg=dict(type='deconv', scale_factor=2),
                 predictor='sigmoid', conv_cfg=None, norm_cfg=None, **kwargs):
        if num_convs < 2:
            raise ValueError('FFMaskHead needs num_convs >= 2 (the fusion branch leaves '
                             'before the last conv)')
        if predictor != 'sigmoid':
            raise ValueError('FFMaskHead adds one map to every class logit; a softmax over '
                             "classes would cancel it, so only predictor='sigmoid' is supported")
        if num_ff_convs < 1:
            raise ValueError('the fusion branch needs at least one conv')
        super().__init__(num_levels=num_levels, num_convs=num_convs, roi_feat_size=roi_feat_size,
                         conv_kernel_size=conv_kernel_size, conv_out_channels=conv_out_channels,
                         upsample_cfg=upsample_cfg, predictor=predictor, conv_cfg=conv_cfg,
                         norm_cfg=norm_cfg, **kwargs)
        self.fc_relu = fc_relu
        up = dict(upsample_cfg or {})
        self.mask_size = int(roi_feat_size * (up.get('scale_factor', 2) if up.get('type') else 1))
        last = ff_conv_out_channels or conv_out_channels // 2
        widths = [conv_out_channels] * (num_ff_convs - 1) + [last]
        self.ff_convs = nn.ModuleList(
            ConvModule(conv_out_channels if i == 0 else widths[i - 1], w, conv_kernel_size,
                       padding=(conv_kernel_size - 1) // 2, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i, w in enumerate(widths))
        self.ff_fc = Linear(last * roi_feat_size ** 2, self.mask_size ** 2)
        # near zero at the start, like MLPMaskHead's fc_logits: the head begins as the FCN
        nn.init.normal_(self.ff_fc.weight, std=0.001)
        nn.init.zeros_(self.ff_fc.bias)

    def _forward(self, x, res_feat=None, return_logits=True, return_feat=False):
        # x is already fused (AFPFCNMaskHead.forward); with_cp checkpoints from here
        x = cpu_conv_layout(x, self.training)
        for i, conv in enumerate(self.convs):
            if i == len(self.convs) - 1:
                branch_in = x  # conv3's output (the last conv's input)
            x = conv(x)
        feat = x
        if not return_logits:
            return feat
        logits = self.conv_logits(self._upsampled(x))
        logits = logits + self.fused_fc(branch_in).to(logits.dtype)
        return (logits, feat) if return_feat else logits

    def fused_fc(self, x):
        """The fully-connected branch: conv3's output ``(K, C, S, S)`` -> ``(K, 1, M, M)``."""
        for conv in self.ff_convs:
            x = conv(x)
        out = self.ff_fc(x.flatten(1))
        if self.fc_relu:
            out = F.relu(out)
        return out.view(-1, 1, self.mask_size, self.mask_size)
