"""TwoStageDetector end to end on a tiny synthetic batch (Mask R-CNN, Cascade, HTC)."""
import copy
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData, PixelData

from cascade_seg.engine.num_classes import check_num_classes
from cascade_seg.models.detectors import (CascadeRCNN, HybridTaskCascade, MaskRCNN,
                                          TwoStageDetector)
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)
CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
NUM_CLASSES = 3
NUM_SEM = 5

# The R50 base model shrunk: ResNet-18, 16-channel FPN and heads, few RoIs.
TINY = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        num_classes=NUM_CLASSES,
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(in_channels=16, conv_out_channels=16, num_convs=2)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=200, max_per_img=50),
        rcnn=dict(sampler=dict(num=32))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50), rcnn=dict(score_thr=0.0)))
SEMANTIC = dict(roi_head=dict(
    semantic_roi_extractor=dict(
        type='SingleRoIExtractor', out_channels=16, featmap_strides=[8],
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0)),
    semantic_head=dict(type='FusedSemanticHead', num_ins=5, fusion_level=1, num_convs=1,
                       in_channels=16, conv_out_channels=16, num_classes=NUM_SEM)))


def _merge(base, override):
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_cfg(kind='mask'):
    model = Config.fromfile(osp.join(CONFIGS, '_base_/models/mask-rcnn_r50_fpn.py')).model.to_dict()
    model = _merge(model, TINY)
    if kind in ('cascade', 'htc'):
        delta = Config.fromfile(osp.join(CONFIGS, '_base_/models/cascade-mask-rcnn_delta.py'))
        model = _merge(model, delta.cascade_delta.to_dict())
    if kind == 'htc':
        delta = Config.fromfile(osp.join(CONFIGS, '_base_/models/htc_delta.py'))
        model = _merge(_merge(model, delta.htc_delta.to_dict()), SEMANTIC)
    return model


def build(kind='mask', **override):
    torch.manual_seed(0)
    return MODELS.build(_merge(tiny_cfg(kind), override))


def _sample(size=(64, 64), img_shape=(64, 64), ori_shape=(64, 64), boxes=(), ignored=()):
    """A data sample with box-shaped-ellipse masks in the (padded) ``size`` frame."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
    masks = []
    for x1, y1, x2, y2 in boxes:
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        masks.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1)
    sf = (img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0])
    s = DetDataSample(metainfo=dict(img_shape=img_shape, ori_shape=ori_shape, scale_factor=sf,
                                    pad_shape=size, batch_input_shape=size))
    n = len(boxes)
    s.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.arange(n, dtype=torch.long) % NUM_CLASSES,
        masks=torch.stack(masks) if n else torch.zeros(0, h, w, dtype=torch.bool))
    s.ignored_instances = InstanceData(
        bboxes=torch.tensor(ignored, dtype=torch.float32).reshape(-1, 4),
        labels=torch.zeros(len(ignored), dtype=torch.long))
    sem = torch.full((1, h, w), NUM_CLASSES, dtype=torch.long)
    for i, m in enumerate(masks):
        sem[0][m] = i % NUM_CLASSES
    s.gt_sem_seg = PixelData(sem_seg=sem)
    return s


def batch(samples=None):
    torch.manual_seed(1)
    if samples is None:
        samples = [_sample(boxes=[(4., 6., 30., 40.), (28., 20., 60., 58.)]),
                   _sample(img_shape=(60, 48), ori_shape=(30, 24), boxes=[(10., 8., 40., 50.)])]
    return torch.randn(len(samples), 3, 64, 64), samples


def _total(losses):
    return sum(v for k, v in losses.items() if 'loss' in k)


def _assert_finite(losses):
    for k, v in losses.items():
        assert torch.isfinite(v).all(), f'{k} = {v}'


STAGE_KEYS = ['loss_cls', 'acc', 'loss_bbox', 'loss_mask']


@pytest.mark.parametrize('kind,stages,extra', [('mask', 1, []), ('cascade', 3, []),
                                               ('htc', 3, ['loss_semantic_seg'])])
def test_loss_keys_and_finite(kind, stages, extra):
    model = build(kind)
    model.train()
    inputs, samples = batch()
    losses = model(inputs, samples, mode='loss')
    expected = {'loss_rpn_cls', 'loss_rpn_bbox', *extra,
                *(f's{t}.{k}' for t in range(stages) for k in STAGE_KEYS)}
    assert set(losses) == expected
    _assert_finite(losses)
    _total(losses).backward()
    assert model.backbone.conv1.weight.grad is not None


def test_aliases_are_the_detector():
    for cls in (MaskRCNN, CascadeRCNN, HybridTaskCascade):
        assert issubclass(cls, TwoStageDetector)
        assert MODELS.get(cls.__name__) is cls
    assert type(build('htc')).__name__ == 'HybridTaskCascade'


def test_sgd_steps_decrease_the_loss():
    model = build('mask')
    model.train()
    inputs, samples = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(8):
        torch.manual_seed(0)  # same RoI sampling every step
        loss = _total(model.loss(inputs, samples))
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert totals[-1] < 0.8 * totals[0], totals


@pytest.mark.parametrize('kind', ['mask', 'htc'])
def test_predict_fields_at_original_size(kind):
    model = build(kind)
    model.eval()
    inputs, samples = batch()
    with torch.no_grad():
        out = model(inputs, samples, mode='predict')
    assert out is samples
    for s in out:
        pred = s.pred_instances
        n = len(pred)
        assert 0 < n <= 100
        oh, ow = s.ori_shape
        assert pred.bboxes.shape == (n, 4) and pred.bboxes.dtype == torch.float32
        assert pred.scores.shape == (n,) and pred.labels.dtype == torch.long
        assert (pred.labels >= 0).all() and (pred.labels < NUM_CLASSES).all()
        assert pred.masks.shape == (n, oh, ow) and pred.masks.dtype == torch.bool
        assert (pred.bboxes[:, 0::2] <= ow + 1e-3).all()
        assert (pred.bboxes[:, 1::2] <= oh + 1e-3).all()
        assert (pred.bboxes >= -1e-3).all()


def test_predict_rescale_false_keeps_the_input_frame():
    model = build('mask')
    model.eval()
    inputs, samples = batch()
    with torch.no_grad():
        pred = model.predict(inputs, samples, rescale=False)[1].pred_instances
    assert pred.masks.shape[1:] == (60, 48)
    assert pred.bboxes[:, 0::2].max() <= 48 + 1e-3


def test_predict_without_data_samples():
    model = build('mask')
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), mode='predict')
    assert out[0].pred_instances.masks.shape[1:] == (64, 64)


def test_zero_detections():
    model = build('cascade', test_cfg=dict(rcnn=dict(score_thr=1.0)))
    model.eval()
    inputs, samples = batch()
    with torch.no_grad():
        out = model.predict(inputs, samples)
    for s in out:
        pred = s.pred_instances
        assert len(pred) == 0
        assert pred.bboxes.shape == (0, 4) and pred.masks.shape == (0, *s.ori_shape)
        assert pred.masks.dtype == torch.bool


@pytest.mark.parametrize('kind', ['mask', 'htc'])
def test_images_without_gt_and_all_ignored(kind):
    model = build(kind)
    model.train()
    samples = [_sample(),  # no GT at all
               _sample(ignored=[(0., 0., 64., 64.)])]  # every anchor / RoI is ignored
    inputs, samples = batch(samples)
    losses = model.loss(inputs, samples)
    _assert_finite(losses)
    assert losses['s0.loss_mask'] == 0
    _total(losses).backward()
    # a mixed batch works too
    inputs, samples = batch([_sample(), _sample(boxes=[(10., 10., 40., 40.)])])
    _assert_finite(model.loss(inputs, samples))


def test_given_proposals_and_zero_proposals():
    model = build('cascade', rpn_head=None)
    model.train()
    inputs, samples = batch()
    given = torch.tensor([[2., 4., 28., 42.], [30., 18., 62., 60.]])
    samples[0].proposals = InstanceData(bboxes=given)
    samples[1].proposals = InstanceData(bboxes=torch.zeros(0, 4))  # GT boxes are the only RoIs
    losses = model.loss(inputs, samples)
    assert not any('rpn' in k for k in losses)
    _assert_finite(losses)
    model.eval()
    with torch.no_grad():
        out = model.predict(inputs, samples)
    assert len(out[1].pred_instances) == 0 and out[1].pred_instances.masks.shape == (0, 30, 24)
    assert len(out[0].pred_instances) > 0
    del samples[0].proposals
    with pytest.raises(ValueError, match='proposals'):
        model.loss(inputs, samples)


def test_tensor_mode_returns_raw_outputs():
    model = build('cascade')
    model.eval()
    inputs, samples = batch()
    with torch.no_grad():
        (cls_scores, bbox_preds), roi_outs = model(inputs, samples, mode='tensor')
    assert len(cls_scores) == len(bbox_preds) == 5  # one per FPN level
    assert cls_scores[0].shape[:2] == (2, 3)  # 3 anchors per location
    assert roi_outs[0].shape[1] == NUM_CLASSES + 1  # averaged classifier logits


def test_train_step_through_the_preprocessor():
    model = build('mask')
    model.train()
    _, samples = batch()
    data = dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
                        torch.randint(0, 255, (3, 60, 48), dtype=torch.uint8)],
                data_samples=samples)
    from mmengine.optim import OptimWrapper
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.001))
    log_vars = model.train_step(data, wrapper)
    assert math.isfinite(log_vars['loss'].item())
    assert 's0.loss_mask' in log_vars and 'loss_rpn_cls' in log_vars


def test_num_classes_shortcut_reaches_every_head():
    model = build('cascade')
    assert all(h.num_classes == NUM_CLASSES for h in model.roi_head.bbox_head)
    assert all(h.num_classes == NUM_CLASSES for h in model.roi_head.mask_head.values())


def _cfg_with_classes(model, classes):
    data = dict(dataset=dict(type='CocoDataset', metainfo=dict(classes=classes)))
    return Config(dict(model=model, train_dataloader=data, val_dataloader=data))


def test_check_num_classes():
    model = tiny_cfg('cascade')
    assert check_num_classes(_cfg_with_classes(model, ('a', 'b', 'c'))) == 3
    with pytest.raises(ValueError, match=r'roi_head.num_classes = 3 .* 2 classes'):
        check_num_classes(_cfg_with_classes(model, ('a', 'b')))
    # per-head values, MMDetection-style lists and stage overrides are all checked
    model['roi_head'].pop('num_classes')
    model['roi_head']['bbox_head'] = [dict(model['roi_head']['bbox_head'], num_classes=2)] * 3
    model['roi_head']['stage_overrides']['s2']['mask_head'] = dict(num_classes=5)
    with pytest.raises(ValueError) as err:
        check_num_classes(_cfg_with_classes(model, ('a', 'b')))
    msg = str(err.value)
    assert 'mask_head.num_classes = 80' in msg and 'stage_overrides.s2.mask_head' in msg
    assert 'bbox_head' not in msg.split('. Set')[0]  # the list entries (2 classes) are right
    # nothing to check without class names; explicit names win
    assert check_num_classes(Config(dict(model=model))) is None
    assert check_num_classes(Config(dict(model=tiny_cfg())), classes=['x'] * 3) == 3


# ----------------------------------------------------------------- keypoint branch
KEYPOINTS = dict(roi_head=dict(
    keypoint_roi_extractor=dict(
        type='SingleRoIExtractor', out_channels=16, featmap_strides=[4, 8, 16, 32],
        roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0)),
    keypoint_head=dict(type='KeypointRCNNHead', num_keypoints=4, in_channels=16, num_convs=2,
                       conv_out_channels=16)))


def _with_keypoints(samples):
    """Each GT gets its box's four edge midpoints as keypoints (the last one unlabelled)."""
    for s in samples:
        b = s.gt_instances.bboxes
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        kpts = torch.stack([torch.stack([cx, b[:, 1]], 1), torch.stack([cx, b[:, 3] - 1], 1),
                            torch.stack([b[:, 0], cy], 1), torch.stack([b[:, 2] - 1, cy], 1)], 1)
        vis = torch.tensor([2., 2., 1., 0.]).expand(len(b), 4)
        s.gt_instances.keypoints = torch.cat([kpts, vis[..., None]], -1)
    return samples


@pytest.mark.parametrize('kind', ['mask', 'cascade'])
def test_keypoint_branch_beside_the_mask_branch(kind):
    model = build(kind, **KEYPOINTS)
    assert model.roi_head.branch_names == ['mask', 'keypoint']
    stages = 1 if kind == 'mask' else 3
    # the keypoint branch trains at the last stage only, by default
    assert model.roi_head.keypoint_head.stages == [stages - 1]
    model.train()
    inputs, samples = batch()
    losses = model(inputs, _with_keypoints(samples), mode='loss')
    assert f's{stages - 1}.loss_keypoint' in losses and losses[f's{stages - 1}.loss_keypoint'] > 0
    assert not any('keypoint' in k for k in losses if not k.startswith(f's{stages - 1}.'))
    _total(losses).backward()
    assert model.roi_head.keypoint_head[str(stages - 1)].deconv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model.predict(*batch())
    for s in out:
        r = s.pred_instances
        assert r.keypoints.shape == (len(r), 4, 2) and r.keypoint_scores.shape == (len(r), 4)
        assert r.masks.shape[0] == len(r) > 0
        h, w = s.metainfo['ori_shape']
        # keypoints lie in their boxes, in the original frame (image 2 is scaled by 2)
        assert (r.keypoints[..., 0] >= r.bboxes[:, None, 0] - 1e-3).all()
        assert (r.keypoints[..., 1] <= r.bboxes[:, None, 3] + 1e-3).all()
        assert (r.keypoints[..., 0] <= w + 1e-3).all() and (r.keypoints[..., 1] <= h + 1e-3).all()


def test_keypoint_loss_zero_without_keypoints():
    model = build('mask', **KEYPOINTS).train()
    inputs, samples = batch()
    for s in samples:
        s.gt_instances.keypoints = torch.zeros(len(s.gt_instances), 4, 3)  # all unlabelled
    losses = model(inputs, samples, mode='loss')
    assert losses['s0.loss_keypoint'] == 0 and losses['s0.loss_keypoint'].requires_grad
