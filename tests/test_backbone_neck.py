"""ResNet backbone, FPN neck and the shared layers (ConvModule, norms, ContextBlock)."""
import pytest
import torch
import torchvision
from torch import nn

from cascade_seg.models.backbones import ResNet
from cascade_seg.models.layers import (ConvModule, ContextBlock, FrozenBatchNorm2d,
                                       build_norm_layer, build_plugin)
from cascade_seg.models.necks import FPN
from cascade_seg.registry import MODELS

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def r50():
    torch.manual_seed(0)
    return ResNet(50, frozen_stages=-1)


# ----------------------------------------------------------------------------- layers

def test_build_norm_layer_names_and_requires_grad():
    name, bn = build_norm_layer(dict(type='BN', requires_grad=False), 8)
    assert name == 'bn' and isinstance(bn, nn.BatchNorm2d)
    assert not any(p.requires_grad for p in bn.parameters())
    assert build_norm_layer(dict(type='SyncBN'), 8)[0] == 'bn'
    name, gn = build_norm_layer(dict(type='GN', num_groups=4), 8, postfix=1)
    assert name == 'gn1' and gn.num_groups == 4 and gn.num_channels == 8
    with pytest.raises(KeyError):
        build_norm_layer(dict(type='Nope'), 8)


def test_frozen_bn_matches_eval_bn_and_loads_bn_state():
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())          # num_batches_tracked is dropped
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    assert list(frozen.parameters()) == [] and frozen.eps == 1e-5
    converted = FrozenBatchNorm2d.convert(nn.Sequential(nn.Conv2d(3, 6, 1), bn))
    assert isinstance(converted[1], FrozenBatchNorm2d)
    torch.testing.assert_close(converted[1](x), bn(x))


def test_conv_module_names_bias_and_activation():
    m = ConvModule(3, 8, 3, padding=1, norm_cfg=dict(type='GN', num_groups=2))
    assert [n for n, _ in m.named_parameters()] == ['conv.weight', 'gn.weight', 'gn.bias']
    assert m.norm is m.gn and isinstance(m.activate, nn.ReLU)
    plain = ConvModule(3, 8, 1, act_cfg=None)
    assert plain.conv.bias is not None and not hasattr(plain, 'activate')
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(plain(x), plain.conv(x))
    assert (m(x) >= 0).all()                         # ReLU applied
    bn = ConvModule(3, 8, 1, norm_cfg=dict(type='BN'), act=False)
    assert [n for n, _ in bn.named_parameters()] == ['conv.weight', 'bn.weight', 'bn.bias']


def test_context_block_identity_at_init_and_registered():
    block = MODELS.build(dict(type='ContextBlock', in_channels=16, ratio=1 / 4))
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(block(x), x)          # zero-initialised last conv
    nn.init.normal_(block.channel_add_conv[3].weight)
    out = block(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    # the added term is one vector per image, constant over space
    diff = out - x
    torch.testing.assert_close(diff, diff[:, :, :1, :1].expand_as(diff))
    name, mul = build_plugin(dict(type='ContextBlock', ratio=1 / 4, fusion_types=('channel_mul',),
                                  pooling_type='avg'), 16, postfix='_x')
    assert name == 'context_block_x' and mul.channel_add_conv is None
    assert mul(x).shape == x.shape


# ----------------------------------------------------------------------------- ResNet

def test_resnet18_output_shapes_and_strides():
    model = ResNet(18).eval()
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6),
                                              (1, 512, 2, 3)]
    assert model.out_channels == [64, 128, 256, 512]


def test_resnet50_output_shapes(r50):
    outs = r50.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4),
                                              (1, 2048, 2, 2)]


def test_resnet50_param_names_match_torchvision(r50):
    tv = torchvision.models.resnet50(weights=None)
    tv_keys = {k for k in tv.state_dict() if not k.startswith('fc.')}
    assert set(r50.state_dict()) == tv_keys
    for k, v in tv.state_dict().items():
        if not k.startswith('fc.'):
            assert r50.state_dict()[k].shape == v.shape, k


def test_out_indices_dilation_and_caffe_style():
    model = ResNet(50, out_indices=(1, 3), strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                   style='caffe').eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 8, 8), (1, 2048, 4, 4)]
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.layer4[0].conv2.dilation == (2, 2)


@pytest.mark.parametrize('frozen_stages', [-1, 0, 2])
def test_frozen_stages_freeze_exactly_stem_and_stages(frozen_stages):
    model = ResNet(18, frozen_stages=frozen_stages, norm_eval=False)
    model.train()
    frozen_prefixes = (['conv1.', 'bn1.'] if frozen_stages >= 0 else []) + \
        [f'layer{i}.' for i in range(1, frozen_stages + 1)]
    for name, p in model.named_parameters():
        assert p.requires_grad != name.startswith(tuple(frozen_prefixes)), name
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training != (name + '.').startswith(tuple(frozen_prefixes)), name


def test_norm_eval_keeps_bn_in_eval_mode():
    model = ResNet(18, frozen_stages=-1, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.layer1[0].conv1.weight.requires_grad          # still trainable
    before = model.layer3[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(model.layer3[0].bn1.running_mean, before)


def test_gn_and_frozen_bn_variants_build_and_run():
    gn = ResNet(18, norm_cfg=dict(type='GN', num_groups=32, requires_grad=True))
    assert isinstance(gn.layer1[0].bn1, nn.GroupNorm) and isinstance(gn.bn1, nn.GroupNorm)
    assert all(o.isfinite().all() for o in gn(torch.randn(1, 3, 32, 32)))
    frozen = ResNet(18, norm_cfg=dict(type='FrozenBN'), frozen_stages=-1)
    assert isinstance(frozen.layer4[1].bn2, FrozenBatchNorm2d)
    assert not any('bn' in n for n, _ in frozen.named_parameters())
    assert all(o.isfinite().all() for o in frozen.train()(torch.randn(1, 3, 32, 32)))


def test_zero_init_residual():
    model = ResNet(18, zero_init_residual=True)
    assert all(float(b.bn2.weight.abs().sum()) == 0 for b in model.layer1)
    assert float(model.layer1[0].bn1.weight.sum()) > 0


def test_context_block_plugin_inserted_and_changes_output(r50):
    plugins = [dict(cfg=dict(type='ContextBlock', ratio=1 / 16), stages=(False, True, True, True),
                    position='after_conv3')]
    model = ResNet(50, plugins=plugins, frozen_stages=-1).eval()
    assert not hasattr(model.layer1[0], 'context_block')
    assert isinstance(model.layer2[0].context_block, ContextBlock)
    assert model.layer4[2].context_block.in_channels == 2048
    plain_keys = set(r50.state_dict())
    extra = set(model.state_dict()) - plain_keys
    assert extra and all('.context_block.' in k for k in extra)
    assert plain_keys <= set(model.state_dict())
    model.load_state_dict(r50.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    ref = r50.eval()(x)
    torch.testing.assert_close(model(x)[-1], ref[-1])      # identity at init
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ContextBlock):
                m.channel_add_conv[3].weight.normal_(std=0.1)
    assert not torch.allclose(model(x)[-1], ref[-1])
    torch.testing.assert_close(model(x)[0], ref[0])         # stage 1 has no plugin


def test_basic_block_plugin_positions():
    plugins = [dict(cfg=dict(type='ContextBlock', ratio=1 / 4), position='after_conv2')]
    model = ResNet(18, plugins=plugins)
    assert model.layer1[1].plugin_names['after_conv2'] == ['context_block']
    bad = [dict(cfg=dict(type='ContextBlock', ratio=1 / 4), position='after_conv3')]
    with pytest.raises(ValueError):
        ResNet(18, plugins=bad)


@pytest.mark.parametrize('wrap', ['raw_torchvision', 'state_dict_with_prefix'])
def test_pretrained_local_checkpoint(tmp_path, wrap):
    torch.manual_seed(1)
    src = torchvision.models.resnet18(weights=None)
    state = src.state_dict()
    if wrap == 'state_dict_with_prefix':
        state = {'state_dict': {f'backbone.{k}': v for k, v in state.items()
                                if not k.startswith('fc.')} | {'neck.x': torch.zeros(1)}}
    path = tmp_path / 'r18.pth'
    torch.save(state, path)
    model = ResNet(18, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    assert not torch.equal(model.conv1.weight, src.conv1.weight)
    model.init_weights()
    for k, v in src.state_dict().items():
        if not k.startswith('fc.'):
            assert torch.equal(model.state_dict()[k], v), k
    assert not model.conv1.weight.requires_grad                # frozen_stages=1 still applies
    x = torch.randn(1, 3, 32, 32)
    src.eval(), model.eval()
    expected = src.layer4(src.layer3(src.layer2(src.layer1(src.maxpool(src.relu(src.bn1(
        src.conv1(x))))))))
    torch.testing.assert_close(model(x)[-1], expected)


def test_pretrained_missing_file_raises():
    model = ResNet(18, init_cfg=dict(type='Pretrained', checkpoint='/nonexistent/r18.pth'))
    with pytest.raises(FileNotFoundError):
        model.init_weights()


# ----------------------------------------------------------------------------- FPN

def _feats(sizes, channels=(64, 128, 256, 512)):
    return [torch.randn(2, c, h, w) for c, (h, w) in zip(channels, sizes)]


def test_fpn_shapes_with_odd_sizes_and_names():
    fpn = FPN([64, 128, 256, 512], 32, num_outs=5)
    sizes = [(25, 19), (13, 10), (7, 5), (4, 3)]
    outs = fpn(_feats(sizes))
    assert [tuple(o.shape[-2:]) for o in outs] == sizes + [(2, 2)]
    assert all(o.shape[:2] == (2, 32) for o in outs)
    names = {n for n, _ in fpn.named_parameters()}
    assert {'lateral_convs.0.conv.weight', 'lateral_convs.3.conv.bias',
            'fpn_convs.3.conv.weight'} <= names
    assert not any(n.startswith('fpn_convs.4') for n in names)


def test_fpn_top_down_and_max_pool_level():
    torch.manual_seed(0)
    fpn = FPN([8, 16], 4, num_outs=3)
    c2, c3 = torch.randn(1, 8, 9, 7), torch.randn(1, 16, 5, 4)
    p2, p3, p4 = fpn([c2, c3])
    lat3 = fpn.lateral_convs[1](c3)
    torch.testing.assert_close(p3, fpn.fpn_convs[1](lat3))
    top_down = fpn.lateral_convs[0](c2) + nn.functional.interpolate(lat3, size=(9, 7))
    torch.testing.assert_close(p2, fpn.fpn_convs[0](top_down))
    torch.testing.assert_close(p4, p3[:, :, ::2, ::2])


@pytest.mark.parametrize('mode', ['on_input', 'on_lateral', 'on_output', True])
def test_fpn_extra_convs(mode):
    fpn = FPN([64, 128, 256, 512], 16, num_outs=6, start_level=1, add_extra_convs=mode,
              relu_before_extra_convs=True)
    outs = fpn(_feats([(32, 32), (16, 16), (8, 8), (4, 4)]))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1, 1]
    c_in = 512 if mode in ('on_input', True) else 16
    assert fpn.fpn_convs[3].conv.in_channels == c_in and len(fpn.fpn_convs) == 6


def test_fpn_norm_and_resnet_integration():
    fpn = FPN([64, 128, 256, 512], 32, num_outs=5, norm_cfg=dict(type='GN', num_groups=8))
    assert fpn.lateral_convs[0].conv.bias is None and hasattr(fpn.fpn_convs[0], 'gn')
    backbone = ResNet(18).eval()
    outs = fpn(backbone(torch.randn(1, 3, 75, 101)))
    assert [o.shape[-2:] for o in outs] == [(19, 26), (10, 13), (5, 7), (3, 4), (2, 2)]
