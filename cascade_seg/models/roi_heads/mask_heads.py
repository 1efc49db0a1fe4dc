"""Mask heads: the FCN head (Mask R-CNN, with HTC's residual input) and the MLP ablation head.

Both predict per-RoI mask logits ``(K, C', M, M)``. ``predictor='sigmoid'`` (decoupled, the
paper's choice): one channel per class (or 1 if class-agnostic), per-pixel sigmoid, loss on
the GT class channel only. ``predictor='softmax'`` (coupled ablation): one extra background
channel (last), per-pixel softmax over all channels. Parameter names follow MMDetection.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from cascade_seg.registry import MODELS

from ..fast_linear import Linear
from ..fused_conv import conv_transpose2d
from ..layers import ConvModule, cpu_conv_layout
from ..losses import mask_softmax_loss


class _MaskPredictor(nn.Module):
    """Channel layout, loss and probabilities shared by the mask heads."""

    def __init__(self, num_classes, class_agnostic, predictor, loss_mask):
        super().__init__()
        if predictor not in ('sigmoid', 'softmax'):
            raise ValueError(f"predictor must be 'sigmoid' or 'softmax', got {predictor!r}")
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.predictor = predictor
        self.loss_mask = MODELS.build(loss_mask)
        self.num_logits = (1 if class_agnostic else num_classes) + (predictor == 'softmax')

    def _channels(self, labels):
        return torch.zeros_like(labels) if self.class_agnostic else labels.long()

    def loss(self, mask_logits, mask_targets, labels):
        """Mask loss: logits ``(P, C', M, M)``, binary targets ``(P, M, M)``, labels ``(P,)``."""
        if mask_logits.size(0) == 0:
            return mask_logits.sum()
        channels = self._channels(labels)
        if self.predictor == 'softmax':
            loss = mask_softmax_loss(mask_logits, mask_targets, channels)
            return loss * self.loss_mask.loss_weight
        return self.loss_mask(mask_logits, mask_targets, channels)

    def mask_probs(self, mask_logits, labels):
        """Foreground probability ``(K, M, M)`` of each RoI's class, after the activation."""
        channels = self._channels(labels)
        inds = torch.arange(mask_logits.size(0), device=mask_logits.device)
        if self.predictor == 'softmax':
            return mask_logits.float().softmax(dim=1)[inds, channels]
        return mask_logits[inds, channels].float().sigmoid()  # float32 for averaging, pasting


@MODELS.register_module()
class FCNMaskHead(_MaskPredictor):
    """``num_convs`` 3x3 convs, 2x upsampling, 1x1 ``conv_logits``.

    ``with_conv_res`` (HTC mask information flow): a 1x1 ``conv_res`` maps the previous stage's
    mask feature, which is added to the input. ``forward(x, res_feat=None, return_logits=True,
    return_feat=False)`` returns the logits, the feature after the convs (what the next stage
    takes as ``res_feat``), or both as ``(logits, feat)``.

    ``with_cp`` (activation checkpointing, training only): keep only the head's inputs for
    backward and recompute its convolutions there. A head on P RoIs keeps ~10 maps of
    ``P x 256 x 14 x 14`` (28 x 28 after the upsampling) otherwise; HTC runs 1 + 2 + 3 mask
    heads per image (its information flow), so this is where its training memory grows with the
    positives. It costs one more forward of the head in backward.
    """

    def __init__(self, num_convs=4, roi_feat_size=14, in_channels=256, conv_kernel_size=3,
                 conv_out_channels=256, num_classes=80, class_agnostic=False,
                 upsample_cfg=dict(type='deconv', scale_factor=2), conv_cfg=None, norm_cfg=None,
                 predictor='sigmoid',
                 loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0),
                 with_conv_res=False, with_cp=False, init_cfg=None):
        super().__init__(num_classes, class_agnostic, predictor, loss_mask)
        self.with_cp = with_cp
        self.roi_feat_size = roi_feat_size
        self.conv_out_channels = conv_out_channels
        self.with_conv_res = with_conv_res
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels,
                       conv_kernel_size, padding=(conv_kernel_size - 1) // 2,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs))
        channels = conv_out_channels if num_convs else in_channels
        upsample_cfg = dict(upsample_cfg or dict(type=None))
        self.upsample_method = upsample_cfg.get('type')
        scale = upsample_cfg.get('scale_factor', 2)
        if self.upsample_method == 'deconv':
            self.upsample = nn.ConvTranspose2d(channels, conv_out_channels, scale, stride=scale)
            channels = conv_out_channels
        elif self.upsample_method in ('nearest', 'bilinear'):
            self.upsample = nn.Upsample(scale_factor=scale, mode=self.upsample_method,
                                        align_corners=None if self.upsample_method == 'nearest'
                                        else False)
        elif self.upsample_method is None:
            self.upsample = None
        else:
            raise ValueError(f'unknown upsample type {self.upsample_method!r}')
        self.conv_logits = nn.Conv2d(channels, self.num_logits, 1)
        if with_conv_res:
            self.conv_res = ConvModule(conv_out_channels, conv_out_channels, 1,
                                       conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        for m in (self.upsample, self.conv_logits):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(m.bias)

    def forward(self, x, res_feat=None, return_logits=True, return_feat=False):
        if self.with_cp and self.training and torch.is_grad_enabled() and x.requires_grad:
            return cp.checkpoint(self._forward, x, res_feat, return_logits, return_feat,
                                 use_reentrant=False)
        return self._forward(x, res_feat, return_logits, return_feat)

    def _forward(self, x, res_feat=None, return_logits=True, return_feat=False):
        x = cpu_conv_layout(x, self.training)
        if res_feat is not None:
            if not self.with_conv_res:
                raise ValueError('res_feat given to a mask head built without with_conv_res')
            x = x + self.conv_res(res_feat)
        for conv in self.convs:
            x = conv(x)
        feat = x
        if not return_logits:
            return feat
        logits = self.conv_logits(self._upsampled(x))
        return (logits, feat) if return_feat else logits

    def _upsampled(self, x):
        """The 2x upsampling (a deconvolution is followed by a ReLU)."""
        if self.upsample_method == 'deconv':
            # in place, or fused into the deconvolution at inference (fused_conv.py): the
            # deconvolution's backward does not need its output, and a second
            # P x 256 x 28 x 28 map (80 MB for 100 RoIs) costs its page faults
            return conv_transpose2d(x, self.upsample, relu=True)
        return x if self.upsample is None else self.upsample(x)


@MODELS.register_module()
class HTCMaskHead(FCNMaskHead):
    """MMDetection's config name for the FCN head with the residual input on by default."""

    def __init__(self, with_conv_res=True, **kwargs):
        super().__init__(with_conv_res=with_conv_res, **kwargs)


@MODELS.register_module()
class MLPMaskHead(_MaskPredictor):
    """Mask R-CNN paper's MLP ablation (Table 2e): fc 1024 -> fc 1024 -> C * M * M.

    The RoI feature ``(K, C, S, S)`` is flattened; ``fcs.{i}`` and ``fc_logits`` are Linear.
    There is no spatial feature to pass on, so HTC's information flow is not supported.
    """

    def __init__(self, in_channels=256, roi_feat_size=14, num_fcs=2, fc_out_channels=1024,
                 mask_size=28, num_classes=80, class_agnostic=False, predictor='sigmoid',
                 loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0),
                 with_conv_res=False, init_cfg=None):
        super().__init__(num_classes, class_agnostic, predictor, loss_mask)
        if with_conv_res:
            raise ValueError('MLPMaskHead does not support the mask information flow')
        self.with_conv_res = False
        self.mask_size = mask_size
        dims = [in_channels * roi_feat_size ** 2] + [fc_out_channels] * num_fcs
        self.fcs = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.fc_logits = Linear(dims[-1], self.num_logits * mask_size ** 2)
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_logits.weight, std=0.001)
        nn.init.zeros_(self.fc_logits.bias)

    def forward(self, x, res_feat=None, return_logits=True, return_feat=False):
        if res_feat is not None:
            raise ValueError('MLPMaskHead does not support the mask information flow')
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        if not return_logits:
            return x
        logits = self.fc_logits(x).view(x.size(0), self.num_logits, self.mask_size, self.mask_size)
        return (logits, x) if return_feat else logits
