"""FCOS: target assignment on a constructed example, centerness, post-processing, the head's
losses and proposals, and the one-stage detector."""
import math
import os.path as osp

import pytest
import torch
from mmengine.structures import InstanceData

from cascade_seg.models.dense_heads.fcos_head import (centerness_targets, distances_to_boxes,
                                                      fcos_detections, fcos_targets,
                                                      level_points)
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ----------------------------------------------------------------------------- targets
def _assign(points_per_level, boxes, labels, center_sampling=True):
    strides, ranges = [8, 16], [(-1, 64), (64, 128)]
    pts = torch.tensor([p for lvl in points_per_level for p in lvl], dtype=torch.float32)
    return fcos_targets(pts, [len(lvl) for lvl in points_per_level], strides, ranges,
                        torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(labels),
                        num_classes=2, center_sampling=center_sampling, radius=1.5)


# A large box A (label 0) and a small box B (label 1) inside it, both centred on (50, 50).
BOXES, LABELS = [(0., 0., 100., 100.), (40., 40., 60., 60.)], [0, 1]
P3 = [(50., 50.),   # in A and B, both in P3's range and centre regions -> the smaller, B
      (20., 20.),   # only in A, but max(l, t, r, b) = 80 > 64 -> not at P3
      (45., 58.)]   # in both -> B, distances (5, 18, 15, 2)
P4 = [(20., 20.),   # A in P4's range (80), but outside A's centre square (50 +- 24)
      (30., 30.)]   # A: in range (70) and inside the centre square -> A


def test_fcos_targets_range_center_sampling_and_smallest_box():
    labels, ltrb, inds = _assign([P3, P4], BOXES, LABELS)
    assert labels.tolist() == [1, 2, 1, 2, 0]          # 2 = background
    assert inds.tolist() == [1, -1, 1, -1, 0]
    assert ltrb[0].tolist() == [10, 10, 10, 10]
    assert ltrb[2].tolist() == [5, 18, 15, 2]
    assert ltrb[4].tolist() == [30, 30, 70, 70]
    # without centre sampling any location inside the box is a candidate: P4's (20, 20) -> A
    labels, ltrb, _ = _assign([P3, P4], BOXES, LABELS, center_sampling=False)
    assert labels.tolist() == [1, 2, 1, 0, 0] and ltrb[3].tolist() == [20, 20, 80, 80]


def test_fcos_center_region_is_cut_to_the_box_and_scales_with_the_stride():
    # a 20x100 box: P3's centre square (+-12) is cut to the box's width (x in 40..60)
    box = [(40., 0., 60., 100.)]
    labels, _, _ = _assign([[(50., 40.), (50., 37.), (39., 50.)], [(50., 27.)]], box, [0])
    # y=40 within 12 of 50; y=37 not; x=39 outside the box; P4's square is +-24: y=27 inside,
    # but max(l, t, r, b) = 73 -> P4's range
    assert labels.tolist() == [0, 2, 2, 0]


def test_fcos_regress_range_ends_are_inclusive():
    # a location whose largest distance is exactly 64 belongs to P3 and P4 (MMDetection)
    labels, _, _ = _assign([[(64., 40.)], [(64., 40.)]], [(0., 0., 128., 90.)], [1],
                           center_sampling=False)
    assert labels.tolist() == [1, 1]


def test_fcos_targets_without_gt_are_background():
    labels, ltrb, inds = _assign([P3, P4], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert labels.tolist() == [2] * 5 and (inds == -1).all() and ltrb.shape == (5, 4)


def test_centerness_targets_and_points():
    t = centerness_targets(torch.tensor([[10., 10., 10., 10.], [20., 20., 80., 80.]]))
    assert torch.allclose(t, torch.tensor([1.0, 0.25]))
    assert centerness_targets(torch.zeros(0, 4)).shape == (0, )
    pts = level_points([(2, 3)], [8])[0]
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    boxes = distances_to_boxes(torch.tensor([[10., 10.]]), torch.tensor([[5., 20., 100., 1.]]),
                               max_shape=(64, 48))
    assert boxes.tolist() == [[5, 0, 48, 11]]


# ----------------------------------------------------------------------------- inference
def _one_level_outputs():
    """One 1x3 level, 2 classes: three locations with near-identical boxes."""
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    cls = torch.tensor([[logit(0.9), logit(0.6), logit(0.03)],    # class 0
                        [logit(0.02), logit(0.02), logit(0.7)]])  # class 1
    ctr = torch.tensor([[logit(0.25), logit(0.81), logit(0.5)]])
    dist = torch.full((4, 3), 8.0)
    return [cls[:, None]], [dist[:, None]], [ctr[:, None]], level_points([(1, 3)], [4])


def test_fcos_detections_scores_topk_and_nms():
    cls, dist, ctr, pts = _one_level_outputs()
    cfg = dict(score_thr=0.05, nms_pre=1000, nms=dict(iou_threshold=0.6), max_per_img=100)
    boxes, scores, labels = fcos_detections(cls, dist, ctr, pts, (64, 64), cfg)
    # class 0: cls x ctr = 0.225 and 0.486 (overlapping boxes: NMS keeps 0.486); class 1: 0.35
    assert labels.tolist() == [0, 1]
    assert torch.allclose(scores, torch.tensor([0.486, 0.35]).sqrt(), atol=1e-5)
    assert boxes[0].tolist() == [0, 0, 14, 10]
    mm = fcos_detections(cls, dist, ctr, pts, (64, 64), dict(cfg, sqrt_score=False))[1]
    assert torch.allclose(mm, torch.tensor([0.486, 0.35]), atol=1e-5)
    # one candidate per level: FCOS ranks by cls x centerness, MMDetection by cls alone
    one = dict(cfg, nms_pre=1)
    assert fcos_detections(cls, dist, ctr, pts, (64, 64), one)[2].tolist() == [0]
    kept = fcos_detections(cls, dist, ctr, pts, (64, 64), dict(one, topk_by='cls'))
    assert torch.allclose(kept[1], torch.tensor([0.225]).sqrt())
    assert len(fcos_detections(cls, dist, ctr, pts, (64, 64), dict(cfg, max_per_img=1))[0]) == 1
    assert len(fcos_detections(cls, dist, ctr, pts, (64, 64), dict(cfg, score_thr=0.95))[0]) == 0


# ----------------------------------------------------------------------------- head / detector
def _head(**kw):
    torch.manual_seed(0)
    return MODELS.build(dict(type='FCOSHead', num_classes=3, in_channels=8, feat_channels=8,
                             stacked_convs=2, norm_cfg=dict(type='GN', num_groups=4), **kw))


def _feats(b=2, size=64):
    torch.manual_seed(1)
    return [torch.randn(b, 8, math.ceil(size / s), math.ceil(size / s))
            for s in (8, 16, 32, 64, 128)]


def _sample(boxes, size=(64, 64)):
    s = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, scale_factor=(1., 1.),
                                    pad_shape=size, batch_input_shape=size))
    s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  labels=torch.arange(len(boxes)) % 3)
    return s


def test_head_outputs_losses_and_proposals():
    head = _head()
    cls, reg, ctr = head(_feats())
    assert [c.shape[1:] for c in cls][0] == (3, 8, 8) and reg[0].shape[1] == 4
    assert all((r >= 0).all() for r in reg)
    samples = [_sample([(4., 6., 30., 40.), (10., 10., 60., 62.)]), _sample([])]
    losses, proposals = head.loss_and_predict(_feats(), samples,
                                              proposal_cfg=dict(score_thr=0.0, max_per_img=7))
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert head.scales[0].scale.grad is not None and head.conv_centerness.weight.grad is not None
    assert [len(p) for p in proposals] == [7, 7]
    assert {'bboxes', 'scores', 'labels'} <= set(proposals[0].keys())
    assert not proposals[0].bboxes.requires_grad
    # no GT anywhere: the box and centerness losses are zeros still on the graph
    losses = head.loss(_feats(), [_sample([]), _sample([])])
    assert losses['loss_bbox'] == 0 and losses['loss_bbox'].requires_grad


def test_regression_in_pixels_is_stride_times_relu():
    head = _head()
    with torch.no_grad():
        head.conv_reg.bias.fill_(-1.0)
        head.scales[1].scale.fill_(-2.0)
    _, reg, _ = head(_feats())
    raw = head.conv_reg(_tower(head, _feats()[1]))
    assert torch.allclose(reg[1], (-2.0 * raw).clamp(min=0) * 16)
    assert (reg[0] == 0).any()   # ReLU'd


def _tower(head, x):
    for conv in head.reg_convs:
        x = conv(x)
    return x


def test_fcos_one_stage_detector_modes():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs/centermask/fcos_r18_fpn_synthetic.py')).model
    cfg.neck.out_channels = 8
    cfg.bbox_head.update(in_channels=8, feat_channels=8, stacked_convs=1,
                         norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    cfg.test_cfg.score_thr = 0.0
    torch.manual_seed(0)
    model = MODELS.build(cfg.to_dict())
    x = torch.randn(2, 3, 64, 64)
    samples = [_sample([(4., 6., 30., 40.)]), _sample([(10., 8., 40., 50.)])]
    losses = model(x, samples, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    model.eval()
    with torch.no_grad():
        out = model(x, samples, mode='predict')
        raw = model(x, mode='tensor')
    assert len(out[0].pred_instances) == 100 and len(raw) == 3 and len(raw[0]) == 5
    with pytest.raises(ValueError, match='mode'):
        model(x, samples, mode='nope')
