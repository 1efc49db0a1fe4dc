"""GCNet (arXiv 1904.11492) as configs of the framework: the ContextBlock's structure, where it
sits in the bottleneck, its parameter counts on R50 c3-c5, the configs (Mask R-CNN, Cascade,
HTC; ratio 1/16 and 1/4) and MMDetection's key names. The MMDetection parity of the Mask R-CNN
config is in test_parity_mmdet_panet_gcnet.py."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from torch import nn

from cascade_seg.models.backbones import ResNet
from cascade_seg.models.layers import ContextBlock
from cascade_seg.registry import MODELS
from cascade_seg.utils import convert_mmdet

torch.set_num_threads(1)
CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
PLUGINS = Config.fromfile(osp.join(CONFIGS, '_base_', 'models', 'gcb_plugins.py'))


def _randomize(block):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(std=0.2)
    return block


def test_block_is_attention_pooling_transform_and_addition():
    torch.manual_seed(0)
    block = _randomize(ContextBlock(64, ratio=1 / 16))
    x = torch.randn(2, 64, 5, 7)
    # context modelling: a 1x1 conv to one channel, softmax over the H*W positions
    assert isinstance(block.conv_mask, nn.Conv2d) and block.conv_mask.out_channels == 1
    assert block.conv_mask.kernel_size == (1, 1)
    weights = block.conv_mask(x).flatten(2).softmax(dim=-1)            # (2, 1, 35)
    context = (x.flatten(2) * weights).sum(-1)[..., None, None]         # (2, 64, 1, 1)
    torch.testing.assert_close(block.spatial_pool(x), context)
    # transform: 1x1 conv to C/r -> LayerNorm([C/r, 1, 1]) -> ReLU -> 1x1 conv back to C
    t = block.channel_add_conv
    assert [type(m) for m in t] == [nn.Conv2d, nn.LayerNorm, nn.ReLU, nn.Conv2d]
    assert (t[0].in_channels, t[0].out_channels, t[3].out_channels) == (64, 4, 64)
    assert t[1].normalized_shape == (4, 1, 1)
    transformed = t[3](torch.relu(nn.functional.layer_norm(t[0](context), (4, 1, 1), t[1].weight,
                                                           t[1].bias)))
    # fusion: broadcast addition to every position
    torch.testing.assert_close(block(x), x + transformed)
    assert block.channel_mul_conv is None


def test_fresh_block_is_the_identity():
    block = ContextBlock(32, ratio=1 / 4)
    assert not block.channel_add_conv[3].weight.any() and not block.channel_add_conv[3].bias.any()
    assert block.conv_mask.weight.any()  # the attention is live; only the output starts at 0
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_block_sits_after_conv3_before_the_residual_add():
    torch.manual_seed(0)
    model = ResNet(50, plugins=PLUGINS.gcb_r16_c3_c5, frozen_stages=-1).eval()
    blk = model.layer3[1]
    _randomize(blk.context_block)
    seen = {}
    blk.bn3.register_forward_hook(lambda m, i, o: seen.setdefault('bn3', o.clone()))
    blk.context_block.register_forward_hook(lambda m, i, o: seen.update(cb_in=i[0], cb_out=o))
    x = torch.randn(1, 1024, 6, 6)
    out = blk(x)
    torch.testing.assert_close(seen['cb_in'], seen['bn3'])           # after conv3 + its norm
    torch.testing.assert_close(out, torch.relu(seen['cb_out'] + x))  # then identity, then ReLU
    assert blk.plugin_names['after_conv3'] == ['context_block']


@pytest.mark.parametrize('ratio,extra', [('r16', 2_521_741), ('r4', 10_000_909)])
def test_r50_c3_c5_block_parameter_counts(ratio, extra):
    plain = sum(p.numel() for p in ResNet(50).parameters())
    model = ResNet(50, plugins=PLUGINS[f'gcb_{ratio}_c3_c5'])
    assert sum(p.numel() for p in model.parameters()) - plain == extra
    blocks = [m for m in model.modules() if isinstance(m, ContextBlock)]
    assert len(blocks) == 4 + 6 + 3                                   # every c3-c5 bottleneck
    assert not any(isinstance(m, ContextBlock) for m in model.layer1.modules())


def _cfg(rel):
    return Config.fromfile(osp.join(CONFIGS, rel))


PARENTS = {'mask-rcnn': 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
           'cascade-mask-rcnn': 'cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
           'htc': 'htc/htc_r50_fpn_1x_coco.py'}
GCNET_CONFIGS = [(f'gcnet/{arch}_r50-gcb-{r}-c3-c5_fpn_1x_coco.py', parent, r)
                 for arch, parent in PARENTS.items() for r in ('r16', 'r4')]


@pytest.mark.parametrize('rel,parent,ratio', GCNET_CONFIGS, ids=[c[0] for c in GCNET_CONFIGS])
def test_gcnet_configs_are_their_parent_plus_one_key(rel, parent, ratio):
    cfg, base = _cfg(rel).to_dict(), _cfg(parent).to_dict()
    plugins = cfg['model']['backbone'].pop('plugins')
    assert plugins == PLUGINS.to_dict()[f'gcb_{ratio}_c3_c5']
    assert plugins[0]['cfg']['ratio'] == {'r16': 1 / 16, 'r4': 1 / 4}[ratio]
    assert plugins[0]['stages'] == (False, True, True, True)
    assert plugins[0]['position'] == 'after_conv3'
    for key in ('gcb_r16_c3_c5', 'gcb_r4_c3_c5'):  # the mixin's own keys stay as a record
        cfg.pop(key)
    assert cfg == base


def test_gcnet_model_keys_are_mmdetections():
    cfg = _cfg('gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_mmdet.py')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    keys = [k for k in model.state_dict() if '.context_block.' in k]
    assert len(keys) == 13 * 8
    assert {'backbone.layer2.0.context_block.conv_mask.weight',
            'backbone.layer3.5.context_block.channel_add_conv.1.weight',   # LayerNorm
            'backbone.layer4.2.context_block.channel_add_conv.3.bias'} <= set(keys)
    sd = {k: torch.zeros(1) for k in keys}
    assert list(convert_mmdet(sd)[0]) == keys                        # unchanged by conversion
