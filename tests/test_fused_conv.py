"""Inference-time fusion: BatchNorm folded into convolutions, ReLU and residual sum as oneDNN
post-ops. Same values as the plain ops, taken only where they should be, and a folded model
refuses to train."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cascade_seg.models import fused_conv
from cascade_seg.models.fused_conv import (FoldedNorm, conv2d, conv_transpose2d, fold_norm,
                                           fuse_for_inference)
from cascade_seg.models.layers import ConvModule, FrozenBatchNorm2d
from cascade_seg.registry import MODELS

needs_op = pytest.mark.skipif(not fused_conv._HAS_OPS, reason='torch built without oneDNN')


def _count_fused(monkeypatch):
    """Count the calls that reach the oneDNN kernels."""
    calls = []
    for name in ('_convolution_pointwise', '_convolution_transpose_pointwise'):
        def counting(*args, _real=getattr(torch.ops.mkldnn, name), _name=name):
            calls.append(_name)
            return _real(*args)
        monkeypatch.setattr(torch.ops.mkldnn, name, counting)
    return calls


def _random_bn(c, gen):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen))
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.1)
    return bn.eval()


@needs_op
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('relu,with_residual', [(False, False), (True, False), (False, True),
                                                (True, True)])
def test_conv2d_equals_plain_ops(monkeypatch, channels_last, relu, with_residual):
    calls = _count_fused(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    x = torch.randn(2, 16, 17, 15, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = conv(x)
    residual = torch.randn(expected.shape, generator=gen) if with_residual else None
    if with_residual:
        expected = expected + residual
    if relu:
        expected = expected.relu()
    with torch.no_grad():
        out = conv2d(x, conv, relu=relu, residual=residual)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert calls == ['_convolution_pointwise']


@needs_op
def test_conv_transpose2d_equals_plain_ops(monkeypatch):
    calls = _count_fused(monkeypatch)
    deconv = nn.ConvTranspose2d(16, 8, 2, stride=2)
    x = torch.randn(5, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    expected = F.relu(deconv(x))
    with torch.no_grad():
        out = conv_transpose2d(x, deconv, relu=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert calls == ['_convolution_transpose_pointwise']


def test_gradients_and_other_cases_take_the_plain_ops(monkeypatch):
    calls = _count_fused(monkeypatch)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    res = torch.randn(1, 4, 8, 8)
    out = conv2d(x, conv, relu=True, residual=res)             # autograd needs the plain ops
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        conv2d(x.double(), copy.deepcopy(conv).double(), relu=True)   # float64
        conv2d(x, conv, residual=torch.randn(1, 4, 1, 1))     # broadcasting residual
        monkeypatch.setenv('CASCADE_SEG_ONEDNN_FUSION', '0')
        conv2d(x.float(), conv.float(), relu=True)
    assert calls == []


@needs_op
def test_conv2d_under_bf16_autocast(monkeypatch):
    calls = _count_fused(monkeypatch)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 12, 12)
    res = torch.randn(1, 16, 12, 12).bfloat16()   # in the models a bfloat16 conv output
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        expected = (conv(x) + res).relu()
        out = conv2d(x, conv, relu=True, residual=res)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    assert calls == ['_convolution_pointwise']


@pytest.mark.parametrize('norm', ['bn', 'frozen', 'bn_bias'])
def test_fold_norm_keeps_the_function(norm):
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=norm == 'bn_bias')
    bn = _random_bn(12, gen)
    if norm == 'frozen':
        bn = FrozenBatchNorm2d.convert(bn)
    x = torch.randn(2, 8, 9, 9, generator=gen)
    with torch.no_grad():
        expected = bn(conv(x))
        assert fold_norm(conv, bn)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_unfoldable_norms_are_left_alone():
    conv = nn.Conv2d(8, 8, 1)
    w = conv.weight.detach().clone()
    assert not fold_norm(conv, nn.GroupNorm(2, 8))              # depends on the data
    assert not fold_norm(conv, nn.BatchNorm2d(8).train())       # batch statistics
    assert torch.equal(conv.weight, w)
    m = ConvModule(8, 8, 3, padding=1, norm_cfg=dict(type='GN', num_groups=2))
    assert fuse_for_inference(m.eval()) == 0 and isinstance(m.gn, nn.GroupNorm)


def _backbone_and_neck(plugins=None):
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type='ResNet', depth=50, base_channels=8, frozen_stages=-1,
                                 norm_eval=False, plugins=plugins))
    neck = MODELS.build(dict(type='FPN', in_channels=backbone.out_channels, out_channels=16,
                             num_outs=5))
    model = nn.Sequential(backbone, neck)
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():          # non-trivial statistics, so the fold is seen
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(_random_bn(m.num_features, gen).state_dict())
    return model.eval()


@needs_op
@pytest.mark.parametrize('plugins', [None, [dict(cfg=dict(type='ContextBlock', ratio=1 / 4),
                                                 stages=(False, True, True, True),
                                                 position='after_conv3')]])
def test_fused_resnet_fpn_equals_unfused(monkeypatch, plugins):
    model = _backbone_and_neck(plugins)
    if plugins:
        for m in model.modules():      # a fresh context block is the identity: make it act
            if hasattr(m, 'channel_add_conv'):
                nn.init.normal_(m.channel_add_conv[-1].weight, std=0.1)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        folded = fuse_for_inference(model)
        calls = _count_fused(monkeypatch)
        out = model(x)
    # stem + 16 blocks x 3 + 4 projection shortcuts
    assert folded == 1 + 16 * 3 + 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # stem + 3 per block (the last with the residual, unless a plugin sits before the sum)
    # + 4 FPN laterals (3 with the top-down sum) + 4 FPN output convs
    blocks_with_plugin = 13 if plugins else 0
    assert len(calls) == 1 + 16 * 3 - blocks_with_plugin + 4 + 4
    for o, e in zip(out, expected):   # random weights: values up to ~1e8, compare relatively
        scale = e.abs().max()
        torch.testing.assert_close(o / scale, e / scale, rtol=0, atol=1e-5)


def test_fused_model_refuses_to_train():
    model = _backbone_and_neck()
    with pytest.raises(ValueError, match='eval mode'):
        fuse_for_inference(model.train())
    fuse_for_inference(model.eval())
    model.train()
    with pytest.raises(RuntimeError, match='prepared for inference'):
        model(torch.randn(1, 3, 32, 32))
    assert all(isinstance(m, FoldedNorm) for m in model.modules()
               if 'Norm' in type(m).__name__)


@pytest.mark.parametrize('kind', ['mask', 'htc'])
def test_fused_detector_predicts_what_the_unfused_one_does(kind):
    from test_detector import batch, build
    model = build(kind, backbone=dict(norm_eval=True)).eval()
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():          # statistics that make the fold change the weights
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(_random_bn(m.num_features, gen).state_dict())
    inputs, samples = batch()
    with torch.no_grad():
        expected = model.predict(inputs, samples)
        assert fuse_for_inference(model) > 0
        got = model.predict(inputs, samples)
    for e, g in zip(expected, got):
        e, g = e.pred_instances, g.pred_instances
        assert len(e) == len(g) > 0
        torch.testing.assert_close(g.bboxes, e.bboxes, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(g.scores, e.scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(g.labels, e.labels)
        assert (g.masks != e.masks).float().mean() < 1e-3


def test_stem_max_pool_equals_max_pool2d():
    from cascade_seg.models.backbones.resnet import stem_max_pool
    pool = nn.MaxPool2d(3, 2, 1)
    for shape in [(1, 8, 64, 64), (2, 8, 63, 41), (1, 4, 7, 8), (1, 2, 2, 3)]:
        x = torch.randn(shape)
        x[0, 0, 0, :2] = float('nan')
        assert torch.equal(stem_max_pool(pool, x).nan_to_num(7.), pool(x).nan_to_num(7.))
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    out = stem_max_pool(pool, x)                    # with a gradient: the plain op
    assert out.grad_fn is not None and 'MaxPool' in type(out.grad_fn).__name__
