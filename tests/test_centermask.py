"""CenterMask: the SAG-Mask and mask-IoU heads, the mask-IoU branch on the mask branch's
outputs, the detector end to end (FCOS proposals -> branches on given boxes), its configs and
training on a foreign COCO dataset."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from cascade_seg.models.roi_heads.branches.maskiou_branch import (mask_area_ratios,
                                                                  mask_iou_targets)
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC = osp.join(REPO, 'configs/centermask/centermask_r18_fpn_synthetic.py')
NC = 3


# ----------------------------------------------------------------------------- heads
def test_parameter_checks():
    with torch.device('meta'):
        sag = MODELS.build(dict(type='SAGMaskHead', in_channels=256, conv_out_channels=256,
                                num_classes=80))
        iou = MODELS.build(dict(type='MaskIoUHead', in_channels=256, conv_out_channels=256,
                                num_classes=80))
    assert sum(p.numel() for p in sag.parameters()) == 2_643_298
    assert sum(p.numel() for p in iou.parameters()) == 16_340_304
    assert sag.spatial_attention.conv.weight.shape == (1, 2, 3, 3)
    assert sag.spatial_attention.conv.bias is None


def test_sag_head_is_the_fcn_head_with_spatial_attention():
    torch.manual_seed(0)
    kw = dict(num_convs=2, in_channels=8, conv_out_channels=8, num_classes=NC)
    sag = MODELS.build(dict(type='SAGMaskHead', **kw))
    fcn = MODELS.build(dict(type='FCNMaskHead', **kw))
    fcn.load_state_dict({k: v for k, v in sag.state_dict().items()
                         if not k.startswith('spatial_attention')})
    x = torch.randn(5, 8, 14, 14)
    logits = sag(x)
    assert logits.shape == (5, NC, 28, 28)
    assert not torch.allclose(logits, fcn(x))
    # attention = sigmoid(conv([mean_c, max_c])) multiplied onto the conv features
    feat = x
    for conv in fcn.convs:
        feat = conv(feat)
    att = torch.sigmoid(sag.spatial_attention.conv(
        torch.cat([feat.mean(1, keepdim=True), feat.amax(1, keepdim=True)], 1)))
    assert torch.allclose(sag(x, return_logits=False), feat * att, atol=1e-6)
    empty = sag(torch.zeros(0, 8, 14, 14))
    assert empty.shape == (0, NC, 28, 28)
    loss = sag.loss(logits, (torch.rand(5, 28, 28) > 0.5).float(), torch.tensor([0, 1, 2, 0, 1]))
    assert torch.isfinite(loss) and loss > 0
    assert sag.loss(empty, torch.zeros(0, 28, 28), torch.zeros(0, dtype=torch.long)) == 0


def test_mask_area_ratios_and_iou_targets():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 0:10, 0:10] = True          # 100 px
    masks[1, 5:15, 5:15] = True          # 100 px
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 5., 10.], [5., 5., 15., 15.],
                          [-3., -3., 25., 25.]])
    ratios = mask_area_ratios(boxes, torch.tensor([0, 0, 1, 1]), masks)
    assert ratios.tolist() == [1.0, 0.5, 1.0, 1.0]
    # on a 4x4 grid: the GT fills the left half of the RoI, which holds half of the GT
    target = torch.zeros(1, 4, 4)
    target[0, :, :2] = 1
    pred = torch.full((1, 4, 4), -1.0)
    pred[0, :, :2] = 1.0                 # exactly the target part
    full = mask_iou_targets(pred, target, torch.tensor([1.0]))
    half = mask_iou_targets(pred, target, torch.tensor([0.5]))
    assert full.tolist() == [1.0] and half.tolist() == [0.5]   # 8 / (8 + 16 - 8)
    pred[0, :, 2:] = 1.0                 # the whole RoI
    assert mask_iou_targets(pred, target, torch.tensor([1.0])).tolist() == [0.5]
    assert mask_iou_targets(pred[:0], target[:0], torch.zeros(0)).shape == (0, )
    assert mask_area_ratios(boxes[:0], torch.zeros(0, dtype=torch.long), masks).shape == (0, )


def test_maskiou_head_shapes_and_loss():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='MaskIoUHead', num_convs=2, in_channels=8,
                             conv_out_channels=8, fc_out_channels=16, num_classes=NC))
    ious = head(torch.randn(4, 8, 14, 14), torch.rand(4, 28, 28))
    assert ious.shape == (4, NC)
    assert head(torch.zeros(0, 8, 14, 14), torch.zeros(0, 28, 28)).shape == (0, NC)
    pred = torch.tensor([0.5, 0.2, 0.9], requires_grad=True)
    loss = head.loss(pred, torch.tensor([0.7, 0.0, 0.8]))   # the zero target is left out
    assert torch.isclose(loss, torch.tensor(0.5 * (0.04 + 0.01) / 2))
    none = head.loss(pred, torch.zeros(3))
    assert none == 0 and none.requires_grad


# ----------------------------------------------------------------------------- detector
def tiny_cfg():
    """The synthetic CenterMask shrunk: 16-channel FPN, 2-conv towers and heads."""
    m = Config.fromfile(SYNTHETIC).model
    m.neck.out_channels = 16
    m.proposal_generator.update(in_channels=16, feat_channels=16, stacked_convs=2,
                                norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    m.roi_head.num_classes = NC
    m.roi_head.mask_roi_extractor.out_channels = 16
    m.roi_head.mask_head.update(in_channels=16, conv_out_channels=16, num_convs=2)
    m.roi_head.mask_iou_head.update(in_channels=16, conv_out_channels=16, fc_out_channels=32,
                                    num_convs=2)
    m.train_cfg.rcnn.sampler.num = 32
    return m.to_dict()


def build(cfg=None):
    torch.manual_seed(0)
    return MODELS.build(cfg or tiny_cfg())


def sample(boxes, size=(64, 64)):
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
    masks = [((xs - (a + c) / 2) / ((c - a) / 2)) ** 2 + ((ys - (b + d) / 2) / ((d - b) / 2)) ** 2
             <= 1 for a, b, c, d in boxes]
    s = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, scale_factor=(1., 1.),
                                    pad_shape=size, batch_input_shape=size))
    s.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.arange(len(boxes)) % NC,
        masks=torch.stack(masks) if boxes else torch.zeros(0, h, w, dtype=torch.bool))
    return s


def batch():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64), [sample([(4., 6., 30., 40.), (28., 20., 60., 58.)]),
                                       sample([(10., 8., 40., 50.)])]


def test_centermask_train_step_predict_and_tensor_mode():
    model = build()
    assert model.proposal_generator.num_classes == NC   # from roi_head.num_classes
    assert model.roi_head.branch_names == ['mask', 'mask_iou']
    x, samples = batch()
    losses = model(x, samples, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness', 's0.loss_mask',
                           's0.loss_mask_iou'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    iou_head = model.roi_head.mask_iou_head['0']
    assert iou_head.fc_mask_iou.weight.grad.abs().sum() > 0
    assert model.proposal_generator.conv_cls.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        # a fresh FCOS scores every location ~0.01 < score_thr: no detections, empty fields
        r = model(x, copy.deepcopy(samples), mode='predict')[0].pred_instances
        assert len(r) == 0 and r.masks.shape == (0, 64, 64) and r.mask_scores.shape == (0, )
        model.proposal_generator.test_cfg['score_thr'] = 0.0
        out = model(x, copy.deepcopy(samples), mode='predict')
        raw = model(x, samples, mode='tensor')
    for s in out:
        r = s.pred_instances
        assert len(r) == 50                                  # test_cfg.rpn.max_per_img
        assert r.masks.shape == (50, 64, 64) and r.masks.dtype == torch.bool
        assert torch.equal(r.mask_scores, r.scores * r.mask_iou)
    fcos_outs, roi_outs = raw
    assert len(fcos_outs) == 3
    rois, probs, ious = roi_outs
    assert rois.shape == (100, 5) and probs.shape == (100, 28, 28) and ious.shape == (100, )


def test_batches_without_rois():
    model = build()
    x = torch.randn(2, 3, 64, 64)
    losses = model.loss(x, [sample([]), sample([])])    # no GT, no FCOS detections: no RoI
    assert losses['s0.loss_mask'] == 0 and losses['s0.loss_mask_iou'] == 0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_mask_iou_pools_with_the_mask_extractor_once():
    model = build()
    assert not hasattr(model.roi_head, 'mask_iou_roi_extractor')
    extractor = model.roi_head.mask_roi_extractor['0']
    calls = []
    extractor.register_forward_hook(lambda m, i, o: calls.append(o))
    x, samples = batch()
    model.loss(x, samples)
    assert len(calls) == 1
    model.eval()
    model.proposal_generator.test_cfg['score_thr'] = 0.0
    with torch.no_grad():
        model.predict(x, samples)
    assert len(calls) == 2
    bad = tiny_cfg()
    bad['roi_head']['mask_iou_roi_extractor'] = 'keypoint'
    with pytest.raises(ValueError, match="mask_iou_roi_extractor='keypoint'"):
        build(bad)


def test_one_class_count_key():
    cfg = tiny_cfg()
    cfg['roi_head']['num_classes'] = 5
    model = build(cfg)
    assert model.proposal_generator.conv_cls.out_channels == 5
    assert {h.num_classes for _, h in model.roi_head.class_heads()} == {5}
    cfg['proposal_generator']['num_classes'] = 4
    with pytest.raises(ValueError, match='set only roi_head.num_classes'):
        build(cfg)
    from cascade_seg.engine.num_classes import check_num_classes
    from cascade_seg.engine.runner_utils import load_config
    full = load_config(SYNTHETIC)  # the class count follows the dataset (6 classes)
    assert check_num_classes(full) == 6
    full.merge_from_dict({'model.roi_head.num_classes': 2})
    with pytest.raises(ValueError, match='model.roi_head.num_classes=6'):
        check_num_classes(full)


# ----------------------------------------------------------------------------- configs
def test_centermask_configs():
    cfg = Config.fromfile(osp.join(REPO, 'configs/centermask/centermask_r50_fpn_1x_coco.py'))
    m = cfg.model
    assert m.type == 'CenterMask' and m.backbone.style == 'caffe'
    assert m.neck.start_level == 1 and m.neck.add_extra_convs == 'on_output'
    assert m.neck.relu_before_extra_convs and m.neck.num_outs == 5
    pg = m.proposal_generator
    assert pg.type == 'FCOSHead' and 'num_classes' not in pg
    assert pg.center_sampling and pg.center_sample_radius == 1.5 and pg.norm_on_bbox
    assert pg.centerness_on_reg and pg.loss_bbox.type == 'GIoULoss'
    head = m.roi_head
    assert head.num_stages == 0 and head.bbox_head is None
    assert head.mask_roi_extractor.featmap_strides == [8, 16, 32]
    assert head.mask_roi_extractor.roi_layer.output_size == 14
    assert head.mask_roi_extractor.level_mapping.type == 'AreaRatioLevelMapping'
    assert head.mask_head.type == 'SAGMaskHead' and head.mask_iou_roi_extractor == 'mask'
    assert m.test_cfg.rpn.max_per_img == 50 and m.test_cfg.rpn.nms.iou_threshold == 0.6
    assert m.train_cfg.rpn_proposal.max_per_img == 100
    assert m.train_cfg.rcnn.assigner.pos_iou_thr == 0.5
    assert m.train_cfg.rcnn.sampler.add_gt_as_proposals
    v39 = Config.fromfile(osp.join(REPO, 'configs/centermask/centermask_v39_fpn_1x_coco.py'))
    assert v39.model.backbone.type == 'VoVNet' and v39.model.backbone.arch == 'V-39'
    assert v39.model.roi_head == head   # only the backbone (and the FPN's inputs) change
    mmdet = Config.fromfile(osp.join(REPO,
                                     'configs/centermask/fcos_r50-caffe_fpn_gn-head_mmdet.py'))
    assert mmdet.model.test_cfg.topk_by == 'cls' and not mmdet.model.test_cfg.sqrt_score
    assert mmdet.model.bbox_head == dict(Config.fromfile(osp.join(
        REPO, 'configs/centermask/fcos_r50-caffe_fpn_gn-head_1x_coco.py')).model.bbox_head)


@pytest.mark.slow
def test_small_centermask_trains_on_a_foreign_coco_dataset(foreign_coco, tmp_path):
    """Only the dataset keys and the class count change."""
    from cascade_seg.engine.runner_utils import build_runner
    classes = ('person', 'cat', 'toothbrush')
    data = dict(data_root=str(foreign_coco.root) + '/', ann_file='annotations/instances.json',
                data_prefix=dict(img='images/', seg='seg/'), metainfo=dict(classes=classes))
    options = {f'{split}_dataloader.dataset': data for split in ('train', 'val', 'test')}
    options.update({f'{split}_evaluator.ann_file': str(foreign_coco.ann_file)
                    for split in ('val', 'test')})
    options.update({
        'model.roi_head.num_classes': len(classes),
        # a short run, not a dataset change
        'train_dataloader.batch_size': 2, 'train_cfg.max_epochs': 1,
        'train_cfg.val_interval': 1, 'log_level': 'WARNING'})
    runner = build_runner(SYNTHETIC, work_dir=str(tmp_path), cfg_options=options, seed=0)
    runner.train()
    assert runner.iter == 2   # 4 images survive the training filter (crowd/empty/tiny go)
    metrics = runner.val_loop.evaluator.metrics[0]
    assert metrics.dataset_meta['classes'] == classes
    model = runner.model
    assert model.proposal_generator.num_classes == 3
    assert model.roi_head.mask_head['0'].num_classes == 3
