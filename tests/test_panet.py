"""PANet (arXiv 1803.01534) as parts of the framework: the PAFPN neck, adaptive feature pooling
(all-level RoI extractor, AFP box and mask heads), the fully-connected fusion mask head, the
configs that compose them with Mask R-CNN / Cascade / HTC, and the Table 3 ablation spec.
The MMDetection parity of PAFPN's ``mmdet`` mode is in test_parity_mmdet_panet_gcnet.py."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import InstanceData
from torch import nn
from torchvision.ops import roi_align

from cascade_seg.models.necks import FPN, PAFPN
from cascade_seg.models.roi_heads import (AFPFCNMaskHead, AFPShared2FCBBoxHead,
                                          AllLevelRoIExtractor, FCNMaskHead, FFMaskHead,
                                          SingleRoIExtractor)
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
R50_CHANNELS = [256, 512, 1024, 2048]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def _feats(channels, sizes, batch=1):
    torch.manual_seed(0)
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(channels, sizes)]


# ----------------------------------------------------------------------------- PAFPN

def test_pafpn_parameter_count_on_resnet50():
    assert n_params(FPN(R50_CHANNELS, 256, num_outs=5)) == 3_344_384
    for mode in ('paper', 'mmdet'):
        neck = MODELS.build(dict(type='PAFPN', in_channels=R50_CHANNELS, out_channels=256,
                                 num_outs=5, mode=mode))
        assert n_params(neck) == 6_884_864
        # MMDetection's parameter names: FPN's plus the bottom-up convs
        names = {n for n, _ in neck.named_parameters()}
        assert {'downsample_convs.2.conv.weight', 'pafpn_convs.2.conv.bias',
                'fpn_convs.3.conv.weight'} <= names


@pytest.mark.parametrize('mode', ['paper', 'mmdet'])
def test_pafpn_equations(mode):
    torch.manual_seed(0)
    neck = PAFPN([8, 16, 32, 64], 8, num_outs=5, mode=mode).eval()
    with torch.no_grad():  # non-zero biases, so that a missing term would show
        for m in neck.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.normal_()
    inputs = _feats([8, 16, 32, 64], [(25, 19), (13, 10), (7, 5), (4, 3)])
    outs = neck(inputs)
    p = FPN.forward(neck, inputs)  # the same weights' plain FPN outputs P2..P6
    assert [o.shape for o in outs] == [q.shape for q in p]
    torch.testing.assert_close(outs[0], p[0], rtol=0, atol=0)  # N2 = P2 exactly
    down, conv = neck.downsample_convs, neck.pafpn_convs
    if mode == 'paper':
        n = [p[0]]
        for i in range(3):
            n.append(F.relu(conv[i].conv(p[i + 1] + F.relu(down[i].conv(n[-1])))))
        assert all((o >= 0).all() for o in outs[1:4])
    else:  # sums of P before the output convs, no activation
        m = [p[0]]
        for i in range(3):
            m.append(p[i + 1] + down[i].conv(m[-1]))
        n = [m[0]] + [conv[i].conv(m[i + 1]) for i in range(3)]
        assert not hasattr(down[0], 'activate') and not hasattr(conv[0], 'activate')
    for lvl in range(4):
        torch.testing.assert_close(outs[lvl], n[lvl])
    torch.testing.assert_close(outs[4], n[3][:, :, ::2, ::2])  # extra level from N5


def test_pafpn_takes_fpns_arguments():
    neck = PAFPN([64, 128, 256, 512], 16, num_outs=6, start_level=1, add_extra_convs='on_output',
                 norm_cfg=dict(type='GN', num_groups=4))
    assert len(neck.downsample_convs) == 2 and hasattr(neck.pafpn_convs[0], 'gn')
    outs = neck(_feats([64, 128, 256, 512], [(32, 32), (16, 16), (8, 8), (4, 4)]))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1, 1]
    with pytest.raises(ValueError, match='mode'):
        PAFPN([8, 16], 8, num_outs=2, mode='nope')


# ----------------------------------------------------------------------------- AFP

def _extractor(cls, size=7, channels=8, **kw):
    return cls(dict(type='RoIAlign', output_size=size, sampling_ratio=0, aligned=True),
               channels, [4, 8, 16, 32], **kw)


def _rois():
    return torch.tensor([[0, 2., 3., 30., 28.], [1, 10., 4., 120., 90.], [0, 5., 5., 6., 7.]])


def test_all_level_extractor_pools_every_level():
    feats = _feats([8] * 4, [(32, 32), (16, 16), (8, 8), (4, 4)], batch=2)
    rois = _rois()
    out = _extractor(AllLevelRoIExtractor).eval()(feats, rois)
    assert out.shape == (3, 4, 8, 7, 7)
    for lvl, (f, s) in enumerate(zip(feats, [4, 8, 16, 32])):
        torch.testing.assert_close(out[:, lvl], roi_align(f, rois, 7, 1 / s, 0, True))
    # the single-level extractor's choice is one of the levels
    single = _extractor(SingleRoIExtractor).eval()
    levels = single.map_roi_levels(rois, 4)
    torch.testing.assert_close(single(feats, rois), out[torch.arange(3), levels])
    empty = _extractor(AllLevelRoIExtractor).eval()(feats, rois[:0])
    assert empty.shape == (0, 4, 8, 7, 7)


def test_all_level_extractor_trains_every_level_even_without_rois():
    feats = [f.requires_grad_() for f in _feats([8] * 4, [(32, 32), (16, 16), (8, 8), (4, 4)])]
    ext = _extractor(AllLevelRoIExtractor).train()
    ext(feats, _rois()[:1]).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    ext(feats, _rois()[:0]).sum().backward()  # connected, zero gradient


def test_afp_box_head_fc1_is_unshared_per_level():
    head = AFPShared2FCBBoxHead(num_levels=4, in_channels=256, roi_feat_size=7,
                                fc_out_channels=1024, num_classes=80)
    fc1 = [n_params(fc) for fc in head.level_fcs]
    assert fc1 == [12_846_080] * 4            # 256 * 7 * 7 * 1024 + 1024 each, not shared
    assert len({fc.weight.data_ptr() for fc in head.level_fcs}) == 4
    assert n_params(head.shared_fcs) == 1024 * 1024 + 1024  # fc2
    assert n_params(head) == 4 * 12_846_080 + 1_049_600 + 1024 * 81 + 81 + 1024 * 320 + 320


@pytest.mark.parametrize('fusion', ['max', 'sum'])
def test_afp_box_head_fuses_after_fc1(fusion):
    torch.manual_seed(0)
    head = AFPShared2FCBBoxHead(num_levels=3, fusion=fusion, in_channels=4, roi_feat_size=2,
                                fc_out_channels=6, num_classes=2)
    x = torch.randn(5, 3, 4, 2, 2)
    cls, reg = head(x)
    per = torch.stack([F.relu(fc(x[:, i].flatten(1))) for i, fc in enumerate(head.level_fcs)])
    fused = per.max(0).values if fusion == 'max' else per.sum(0)
    h = F.relu(head.shared_fcs[0](fused))
    torch.testing.assert_close(cls, head.fc_cls(h))
    torch.testing.assert_close(reg, head.fc_reg(h))
    assert cls.shape == (5, 3) and reg.shape == (5, 8)
    with pytest.raises(ValueError, match=r'\(K, 3, C, S, S\)'):
        head(x[:, 0])                            # single-level features are refused
    with pytest.raises(ValueError, match='fusion'):
        AFPShared2FCBBoxHead(fusion='mean')


def test_afp_mask_head_conv1_per_level_then_fcn():
    torch.manual_seed(0)
    head = AFPFCNMaskHead(num_levels=4, fusion='max', num_convs=4, in_channels=8,
                          conv_out_channels=8, num_classes=3).eval()
    assert len(head.level_convs) == 4 and len(head.convs) == 3     # conv1 x 4, conv2..4
    x = torch.randn(2, 4, 8, 14, 14)
    fused = torch.stack([c(x[:, i]) for i, c in enumerate(head.level_convs)]).max(0).values
    expected = FCNMaskHead.forward(head, fused)
    torch.testing.assert_close(head(x), expected)
    assert head(x).shape == (2, 3, 28, 28)
    # without adaptive pooling it is the FCN head, with the same parameter names
    plain = AFPFCNMaskHead(num_levels=None, in_channels=8, conv_out_channels=8,
                           num_classes=3).eval()
    fcn = FCNMaskHead(in_channels=8, conv_out_channels=8, num_classes=3).eval()
    fcn.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain(x[:, 0]), fcn(x[:, 0]))


def test_afp_mask_head_information_flow():
    torch.manual_seed(0)
    head = AFPFCNMaskHead(num_levels=2, in_channels=8, conv_out_channels=8, num_classes=3,
                          with_conv_res=True).eval()
    x, res = torch.randn(2, 2, 8, 14, 14), torch.randn(2, 8, 14, 14)
    logits, feat = head(x, res, return_feat=True)
    # the residual is added to every level's input, before the level convs
    torch.testing.assert_close(logits, head(x + head.conv_res(res)[:, None]))
    torch.testing.assert_close(feat, head(x, res, return_logits=False))
    assert feat.shape == (2, 8, 14, 14)
    with pytest.raises(ValueError, match='with_conv_res'):
        AFPFCNMaskHead(num_levels=2, in_channels=8, conv_out_channels=8)(x, res)


# ----------------------------------------------------------------------------- FF

def test_ff_fc_parameter_count():
    head = FFMaskHead(num_levels=4, in_channels=256, conv_out_channels=256, num_classes=80)
    assert n_params(head.ff_fc) == 19_669_776    # 128 * 14 * 14 -> 28 * 28
    assert head.ff_convs[0].conv.out_channels == 256 and head.ff_convs[1].conv.out_channels == 128
    assert head.mask_size == 28 and not head.fc_relu


@pytest.mark.parametrize('num_levels', [None, 4])
def test_ff_adds_one_class_agnostic_map_to_every_class(num_levels):
    torch.manual_seed(0)
    head = FFMaskHead(num_levels=num_levels, in_channels=8, conv_out_channels=8,
                      num_classes=3).eval()
    nn.init.normal_(head.ff_fc.weight, std=0.05)
    nn.init.normal_(head.ff_fc.bias)
    x = torch.randn(2, 8, 14, 14) if num_levels is None else torch.randn(2, 4, 8, 14, 14)
    logits = head(x)
    fcn = FCNMaskHead._forward(head, head.fuse_input(x))  # the FCN path with the same weights
    diff = logits - fcn
    assert diff.abs().max() > 0.1
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff))  # the same for every class
    # the branch leaves after conv3: conv4_fc, conv5_fc, fc on conv3's output
    h = head.fuse_input(x)
    for conv in head.convs[:-1]:
        h = conv(h)
    expected = head.ff_fc(head.ff_convs[1](head.ff_convs[0](h)).flatten(1)).view(2, 1, 28, 28)
    torch.testing.assert_close(diff[:, :1], expected)
    # the released code's ReLU on the fc output, as a switch
    head.fc_relu = True
    torch.testing.assert_close(head(x) - fcn, F.relu(expected).expand_as(diff))


def test_ff_head_as_htc_mask_head():
    torch.manual_seed(0)
    first = FFMaskHead(num_levels=4, in_channels=8, conv_out_channels=8, num_classes=3).eval()
    second = FFMaskHead(num_levels=4, in_channels=8, conv_out_channels=8, num_classes=3,
                        with_conv_res=True).eval()
    x = torch.randn(2, 4, 8, 14, 14)
    feat = first(x, return_logits=False)
    assert feat.shape == (2, 8, 14, 14)
    logits, feat2 = second(x, feat, return_feat=True)
    assert logits.shape == (2, 3, 28, 28) and feat2.shape == feat.shape
    torch.testing.assert_close(logits, second(x + second.conv_res(feat)[:, None]))
    with pytest.raises(ValueError, match='sigmoid'):
        FFMaskHead(predictor='softmax')


def test_ff_head_trains_and_loss_is_the_mask_loss():
    head = FFMaskHead(num_levels=4, in_channels=8, conv_out_channels=8, num_classes=3).train()
    x = torch.randn(3, 4, 8, 14, 14)
    loss = head.loss(head(x), (torch.rand(3, 28, 28) > 0.5).float(), torch.tensor([0, 2, 1]))
    loss.backward()
    assert head.ff_fc.weight.grad.abs().sum() > 0
    assert head.level_convs[3].conv.weight.grad is not None


# ----------------------------------------------------------------------------- configs

def _cfg(rel):
    """A config as the tools load it (the class count follows the dataset)."""
    from cascade_seg.engine.runner_utils import load_config
    return load_config(osp.join(ROOT, 'configs', rel))


def test_panet_config_is_mask_rcnn_plus_three_components():
    panet = _cfg('panet/panet_r50_fpn_1x_coco.py')
    base = _cfg('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    assert panet.model.neck == dict(base.model.neck, type='PAFPN', mode='paper')
    rh, brh = panet.model.roi_head, base.model.roi_head
    assert rh.bbox_roi_extractor == dict(brh.bbox_roi_extractor, type='AllLevelRoIExtractor')
    assert rh.mask_roi_extractor == dict(brh.mask_roi_extractor, type='AllLevelRoIExtractor')
    assert rh.bbox_head == dict(brh.bbox_head, type='AFPShared2FCBBoxHead', num_levels=4,
                                fusion='max')
    assert rh.mask_head == dict(brh.mask_head, type='FFMaskHead', num_levels=4, fusion='max',
                                fc_relu=False)
    # everything else is Mask R-CNN's
    strip = ('neck', 'roi_head')
    assert {k: v for k, v in panet.model.items() if k not in strip} == \
        {k: v for k, v in base.model.items() if k not in strip}
    with torch.device('meta'):
        model = MODELS.build(panet.model)
    assert type(model.neck).__name__ == 'PAFPN'
    assert type(model.roi_head.bbox_head[0]).__name__ == 'AFPShared2FCBBoxHead'
    assert type(model.roi_head.mask_head['0']).__name__ == 'FFMaskHead'


@pytest.mark.parametrize('child,parent', [
    ('panet/cascade-mask-rcnn_panet_r50_fpn_1x_coco.py',
     'cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py'),
    ('panet/htc_panet_r50_fpn_1x_coco.py', 'htc/htc_r50_fpn_1x_coco.py'),
    ('panet/panet_r18_fpn_synthetic.py', 'mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'),
    ('panet/cascade-mask-rcnn_panet_r18_fpn_synthetic.py',
     'cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'),
    ('panet/htc-without-semantic_panet_r18_fpn_synthetic.py',
     'htc/htc-without-semantic_r18_fpn_synthetic.py'),
    ('panet/htc_panet_r18_fpn_synthetic.py', 'htc/htc_r18_fpn_synthetic.py')])
def test_panet_combinations_are_their_parent_plus_the_panet_delta(child, parent):
    c, p = _cfg(child), _cfg(parent)
    delta = _cfg('_base_/models/panet_delta.py').panet_delta
    expected = copy.deepcopy(p.model.to_dict())
    expected['neck'].update(delta.neck)
    for key, value in delta.roi_head.items():
        expected['roi_head'][key] = dict(expected['roi_head'][key], **value)
    assert c.model.to_dict() == expected
    for key in ('train_dataloader', 'optim_wrapper', 'param_scheduler'):
        assert c[key] == p[key]


def _synthetic_model(rel, **roi_head):
    cfg = _cfg(rel)
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=100, max_per_img=30)
    cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=30)
    cfg.model.train_cfg.rcnn.sampler.num = 32
    cfg.model.roi_head.update(roi_head)
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _batch(with_sem=False):
    torch.manual_seed(1)
    samples = []
    for boxes in ([(4., 6., 30., 40.), (28., 20., 60., 58.)], [(10., 8., 40., 50.)]):
        s = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                        scale_factor=(1., 1.), pad_shape=(64, 64),
                                        batch_input_shape=(64, 64)))
        b = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), 64, 64, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            masks[i, int(y1):int(y2), int(x1):int(x2)] = True
        s.gt_instances = InstanceData(bboxes=b, labels=torch.arange(len(boxes)), masks=masks)
        if with_sem:
            from mmengine.structures import PixelData
            s.gt_sem_seg = PixelData(sem_seg=torch.randint(0, 9, (1, 64, 64)))
        samples.append(s)
    return torch.randn(2, 3, 64, 64), samples


def _train_and_predict(model, with_sem=False):
    inputs, samples = _batch(with_sem)
    model.train()
    losses = model(inputs, samples, mode='loss')
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name in ('neck.downsample_convs.0.conv.weight', 'neck.pafpn_convs.2.conv.weight',
                 'roi_head.bbox_head.0.level_fcs.3.weight',
                 'roi_head.mask_head.0.level_convs.0.conv.weight',
                 'roi_head.mask_head.0.ff_fc.weight'):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        out = model(inputs, samples, mode='predict')
    assert all(s.pred_instances.masks.shape[1:] == (64, 64) for s in out)
    assert sum(len(s.pred_instances) for s in out) > 0
    return losses


@pytest.mark.parametrize('rel', ['panet/panet_r18_fpn_synthetic.py',
                                 'panet/htc-without-semantic_panet_r18_fpn_synthetic.py'])
def test_panet_synthetic_models_train_and_predict(rel):
    losses = _train_and_predict(_synthetic_model(rel))
    assert 's0.loss_mask' in losses


def test_htc_panet_with_semantic_branch_trains_and_predicts():
    """HTC's semantic feature (K, C, S, S) is added to every level of the AFP RoI features."""
    model = _synthetic_model('panet/htc_panet_r18_fpn_synthetic.py')
    losses = _train_and_predict(model, with_sem=True)
    assert 'loss_semantic_seg' in losses


# ----------------------------------------------------------------------------- ablation spec

def test_panet_ablation_spec_follows_table_3(monkeypatch):
    from cascade_seg.ablation.spec import build_variant_config, load_spec
    monkeypatch.chdir(ROOT)
    path = osp.join('configs', 'ablations', 'specs', 'panet.py')
    spec = load_spec(path)
    assert [v.name for v in spec.variants] == ['baseline', '+BPA', '+AFP', '+BPA+AFP', '+FF']
    paper = {v['name']: v.get('paper') for v in Config.fromfile(path).variants}
    assert {k: (p or {}).get('segm_mAP') for k, p in paper.items()} == {
        'baseline': 35.7, '+BPA': 36.4, '+AFP': None, '+BPA+AFP': 36.9, '+FF': 37.6}
    cfgs = {v.name: build_variant_config(spec, v) for v in spec.variants}
    types = {name: (c.model.neck.type, c.model.roi_head.bbox_head.type,
                    c.model.roi_head.mask_head.type) for name, c in cfgs.items()}
    assert types == {
        'baseline': ('FPN', 'Shared2FCBBoxHead', 'FCNMaskHead'),
        '+BPA': ('PAFPN', 'Shared2FCBBoxHead', 'FCNMaskHead'),
        '+AFP': ('FPN', 'AFPShared2FCBBoxHead', 'AFPFCNMaskHead'),
        '+BPA+AFP': ('PAFPN', 'AFPShared2FCBBoxHead', 'AFPFCNMaskHead'),
        '+FF': ('PAFPN', 'AFPShared2FCBBoxHead', 'FFMaskHead')}
    # the last row is the shipped synthetic PANet config (under the spec's common settings)
    from cascade_seg.ablation.spec import Variant
    shipped = Variant(name='shipped', config='configs/panet/panet_r18_fpn_synthetic.py',
                      overrides={})
    assert cfgs['+FF'].model == build_variant_config(spec, shipped).model


@pytest.mark.parametrize('spec_name', ['panet.py', 'mask_class_agnostic.py', 'backbone.py'])
def test_paper_numbers_name_columns_of_the_table(spec_name):
    """The papers' numbers (``paper=dict(metric=value)``, in %) name metrics of the spec's own
    table, so a renderer can print them in the matching column."""
    spec = Config.fromfile(osp.join(ROOT, 'configs', 'ablations', 'specs', spec_name))
    columns = set(spec.report['columns'])
    papers = [v['paper'] for v in spec.variants if 'paper' in v]
    assert len(papers) >= 2
    for paper in papers:
        assert paper and set(paper) <= columns, (paper, columns)
        assert all(0 < value < 100 for value in paper.values())
