"""FCN / HTC / MLP mask heads and HTC's fused semantic head."""
import pytest
import torch
import torch.nn.functional as F

from cascade_seg.models.roi_heads import FCNMaskHead, FusedSemanticHead, HTCMaskHead, MLPMaskHead
from cascade_seg.registry import MODELS

torch.set_num_threads(1)


def _fcn(**kw):
    kw = dict(dict(num_convs=2, in_channels=8, conv_out_channels=8, num_classes=3), **kw)
    return FCNMaskHead(**kw)


def test_fcn_names_and_shapes():
    head = MODELS.build(dict(type='FCNMaskHead', num_convs=2, in_channels=8, conv_out_channels=8,
                             num_classes=3))
    names = {n for n, _ in head.named_parameters()}
    assert names == {'convs.0.conv.weight', 'convs.0.conv.bias', 'convs.1.conv.weight',
                     'convs.1.conv.bias', 'upsample.weight', 'upsample.bias',
                     'conv_logits.weight', 'conv_logits.bias'}
    x = torch.randn(4, 8, 14, 14)
    assert head(x).shape == (4, 3, 28, 28)
    logits, feat = head(x, return_feat=True)
    assert feat.shape == (4, 8, 14, 14) and torch.equal(logits, head(x))
    assert torch.equal(head(x, return_logits=False), feat)
    assert _fcn(class_agnostic=True)(x).shape == (4, 1, 28, 28)
    assert _fcn(upsample_cfg=dict(type='bilinear', scale_factor=2))(x).shape == (4, 3, 28, 28)


def test_htc_residual_input():
    head = HTCMaskHead(num_convs=1, in_channels=8, conv_out_channels=8, num_classes=3)
    assert head.with_conv_res and 'conv_res.conv.weight' in dict(head.named_parameters())
    x, res = torch.randn(2, 8, 14, 14), torch.randn(2, 8, 14, 14)
    assert not torch.allclose(head(x, res), head(x))
    with torch.no_grad():
        head.conv_res.conv.weight.zero_()
        head.conv_res.conv.bias.zero_()
    assert torch.allclose(head(x, res), head(x))     # residual enters only through conv_res
    with pytest.raises(ValueError, match='with_conv_res'):
        _fcn()(x, res)


def test_sigmoid_loss_uses_the_label_channel_only():
    head = _fcn(loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=2.0))
    logits = torch.randn(3, 3, 28, 28)
    targets = (torch.rand(3, 28, 28) > 0.5).float()
    labels = torch.tensor([2, 0, 1])
    manual = F.binary_cross_entropy_with_logits(logits[[0, 1, 2], labels], targets) * 2.0
    assert torch.allclose(head.loss(logits, targets, labels), manual)
    logits2 = logits.clone()
    logits2[0, 0] += 5                                 # a non-GT channel does not matter
    assert torch.allclose(head.loss(logits2, targets, labels), manual)
    empty = torch.zeros(0, 3, 28, 28, requires_grad=True)
    loss = head.loss(empty, torch.zeros(0, 28, 28), torch.zeros(0, dtype=torch.long))
    assert loss.requires_grad and loss.detach() == 0
    probs = head.mask_probs(logits, labels)
    assert torch.allclose(probs, logits[[0, 1, 2], labels].sigmoid())


def test_softmax_predictor_is_coupled():
    head = _fcn(predictor='softmax')
    x = torch.randn(3, 8, 14, 14)
    logits = head(x)
    assert logits.shape == (3, 4, 28, 28)             # + background channel (last)
    targets = (torch.rand(3, 28, 28) > 0.5).float()
    labels = torch.tensor([2, 0, 1])
    pixel_cls = torch.where(targets > 0.5, labels.view(-1, 1, 1), 3)   # background: channel 3
    assert torch.allclose(head.loss(logits, targets, labels), F.cross_entropy(logits, pixel_cls))
    probs = head.mask_probs(logits, labels)
    assert torch.allclose(probs, logits.softmax(1)[[0, 1, 2], labels])
    # coupled: raising another class's logit lowers this class's probability
    logits2 = logits.clone()
    logits2[0, 0] += 3
    assert (head.mask_probs(logits2, labels)[0] < probs[0]).all()
    with pytest.raises(ValueError):
        _fcn(predictor='tanh')


def test_mlp_mask_head():
    head = MODELS.build(dict(type='MLPMaskHead', in_channels=8, roi_feat_size=14,
                             fc_out_channels=32, mask_size=28, num_classes=3))
    assert {n for n, _ in head.named_parameters()} == {
        'fcs.0.weight', 'fcs.0.bias', 'fcs.1.weight', 'fcs.1.bias', 'fc_logits.weight',
        'fc_logits.bias'}
    x = torch.randn(2, 8, 14, 14)
    logits = head(x)
    assert logits.shape == (2, 3, 28, 28)
    loss = head.loss(logits, torch.ones(2, 28, 28), torch.tensor([0, 2]))
    loss.backward()
    assert head.fcs[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        head(x, res_feat=torch.randn(2, 32))
    with pytest.raises(ValueError):
        MLPMaskHead(in_channels=8, num_classes=3, with_conv_res=True)


def test_fused_semantic_head():
    head = MODELS.build(dict(type='FusedSemanticHead', num_ins=3, fusion_level=1, num_convs=2,
                             in_channels=8, conv_out_channels=8, num_classes=5))
    names = {n for n, _ in head.named_parameters()}
    assert {'lateral_convs.2.conv.weight', 'convs.1.conv.weight', 'conv_embedding.conv.weight',
            'conv_logits.weight'} <= names
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    logits, feat = head(feats)
    assert logits.shape == (2, 5, 8, 8) and feat.shape == (2, 8, 8, 8)  # fusion level's size
    gt = torch.randint(0, 5, (2, 1, 64, 64))
    gt[0, :, :32] = 255
    loss = head.loss(logits, gt)
    labels = gt[:, 0, ::8, ::8]                        # nearest downsampling by 8
    manual = F.cross_entropy(logits, labels, ignore_index=255, reduction='none').mean() * 0.2
    assert torch.allclose(loss, manual)
    # ignored pixels count in the mean (MMDetection's default), so the loss is smaller than
    # the mean over valid pixels only
    assert loss < F.cross_entropy(logits, labels, ignore_index=255) * 0.2
    compat = FusedSemanticHead(num_ins=3, in_channels=8, conv_out_channels=8, num_classes=5,
                               loss_seg=dict(type='CrossEntropyLoss', ignore_index=7,
                                             loss_weight=1.0))
    assert compat.ignore_label == 7 and compat.loss_weight == 1.0
