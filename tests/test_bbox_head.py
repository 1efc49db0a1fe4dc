"""Box head module and the pure box logic around it (targets, refinement, per-class NMS)."""
import pytest
import torch

from cascade_seg.models.roi_heads.bbox_heads import (ConvFCBBoxHead, Shared2FCBBoxHead,
                                                     bbox_targets, postprocess_detections,
                                                     refine_boxes, regress_by_class)
from cascade_seg.models.task_utils import DeltaXYWHBBoxCoder, SamplingResult

torch.set_num_threads(1)
STDS = (0.1, 0.1, 0.2, 0.2)


def _coder():
    return DeltaXYWHBBoxCoder(target_means=(0.,) * 4, target_stds=STDS)


def _sampling(pos, neg, pos_gt, labels, is_gt):
    pos, neg, pos_gt = (torch.tensor(b, dtype=torch.float32).reshape(-1, 4)
                        for b in (pos, neg, pos_gt))
    n = len(pos) + len(neg)
    return SamplingResult(
        pos_inds=torch.arange(len(pos)), neg_inds=torch.arange(len(pos), n),
        all_priors=torch.cat([pos, neg]), pos_priors=pos, neg_priors=neg,
        pos_gt_inds=torch.zeros(len(pos), dtype=torch.long), pos_gt_bboxes=pos_gt,
        pos_gt_labels=torch.tensor(labels, dtype=torch.long),
        pos_is_gt=torch.tensor(is_gt, dtype=torch.bool), num_gts=len(pos_gt))


def test_bbox_targets_layout_and_weights():
    coder = _coder()
    s1 = _sampling([[0, 0, 10, 10], [1, 1, 11, 11]], [[30, 30, 40, 40]],
                   [[0, 0, 10, 10], [0, 0, 10, 12]], [2, 1], [True, False])
    s2 = _sampling([], [[5, 5, 9, 9], [6, 6, 9, 9]], [], [], [])
    labels, lw, targets, weights = bbox_targets([s1, s2], num_classes=3, coder=coder,
                                                pos_weight=2.0)
    assert labels.tolist() == [2, 1, 3, 3, 3]          # background = num_classes, positives first
    assert lw.tolist() == [2.0, 2.0, 1.0, 1.0, 1.0]
    assert weights.sum(1).tolist() == [4, 4, 0, 0, 0]
    expected = coder.encode(s1.pos_priors, s1.pos_gt_bboxes)
    assert torch.allclose(targets[:2], expected) and targets[2:].abs().sum() == 0
    assert torch.allclose(targets[0], torch.zeros(4))   # a GT proposal regresses to itself
    _, lw, decoded, _ = bbox_targets([s1], 3, coder, pos_weight=-1, reg_decoded_bbox=True)
    assert lw[:2].tolist() == [1.0, 1.0] and torch.equal(decoded[:2], s1.pos_gt_bboxes)


def test_regress_by_class_uses_the_label_deltas():
    coder = _coder()
    boxes = torch.tensor([[10., 10, 20, 20], [10, 10, 20, 20]])
    deltas = torch.zeros(2, 12)
    deltas[0, 4:8] = torch.tensor([1., 0, 0, 0])   # class 1 of RoI 0 moves right by 0.1 * 10
    out = regress_by_class(boxes, torch.tensor([1, 0]), deltas, coder, (64, 64))
    assert torch.allclose(out, torch.tensor([[11., 10, 21, 20], [10, 10, 20, 20]]))
    rois = torch.cat([torch.tensor([[0.], [1.]]), boxes], 1)
    out = regress_by_class(rois, torch.tensor([1, 0]), deltas, coder, (64, 64))
    assert out[:, 0].tolist() == [0, 1]
    assert torch.allclose(out[0, 1:], torch.tensor([11., 10, 21, 20]))
    clipped = regress_by_class(boxes, torch.tensor([0, 0]), torch.full((2, 4), 5.), coder, (16, 16))
    assert clipped.max() <= 16                      # clipped to the image


def test_refine_boxes_drops_gt_proposals_and_uses_argmax_for_negatives():
    coder = _coder()
    rois = torch.tensor([[0, 0, 0, 10, 10], [0, 1, 1, 11, 11], [0, 20, 20, 30, 30],
                         [1, 5, 5, 15, 15], [1, 2, 2, 8, 8]], dtype=torch.float)
    labels = torch.tensor([0, 1, 2, 0, 2])          # num_classes = 2: label 2 is background
    cls_score = torch.zeros(5, 3)
    cls_score[2, 1] = 5.                            # negative RoI 2's best class is 1
    cls_score[4, 2] = 9.                            # background logit is ignored for the argmax
    bbox_pred = torch.zeros(5, 8)
    bbox_pred[2, 4] = 1.                            # class-1 deltas of RoI 2 shift it
    pos_is_gt = [torch.tensor([True, False]), torch.tensor([False])]
    out = refine_boxes(rois, labels, cls_score, bbox_pred, pos_is_gt, coder, [(64, 64)] * 2, 2)
    assert [len(b) for b in out] == [2, 2]          # the GT proposal of image 0 is gone
    assert torch.allclose(out[0], torch.tensor([[1., 1, 11, 11], [21, 20, 31, 30]]))
    assert torch.allclose(out[1], rois[3:, 1:]) and not out[0].requires_grad


def test_postprocess_detections_is_per_class_nms():
    boxes = torch.tensor([[0., 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [40, 40, 50, 50]])
    per_class = boxes.repeat(1, 2)                   # 2 classes
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.85, 0.01, 0.1], [0.02, 0.03, 0.95], [0.3, 0.2, 0.5]])
    b, s, l = postprocess_detections(per_class, scores, score_thr=0.05, nms_iou=0.5,
                                     max_per_img=100)
    # class 0: RoI 1 is suppressed by RoI 0; class 1: RoI 0 survives although it overlaps class 0.
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.3, 0.2])
    assert l.tolist() == [0, 1, 0, 1]
    assert torch.equal(b[0], boxes[0]) and torch.equal(b[2], boxes[3])
    b, s, l = postprocess_detections(boxes, scores, 0.05, 0.5, max_per_img=2)  # shared boxes
    assert len(s) == 2 and s.tolist() == pytest.approx([0.9, 0.8])
    b, s, l = postprocess_detections(boxes, scores, score_thr=0.95, nms_iou=0.5)
    assert len(b) == 0 and b.shape == (0, 4) and l.dtype == torch.long  # background never kept
    small = torch.tensor([[0., 0, 2, 2], [0, 0, 20, 20]])
    _, s, _ = postprocess_detections(small, torch.tensor([[.9, .1], [.8, .2]]), 0.05, 0.5,
                                     min_bbox_size=3)
    assert s.tolist() == pytest.approx([0.8])


def test_head_names_shapes_and_registry():
    from cascade_seg.registry import MODELS
    head = MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=8, roi_feat_size=7,
                             fc_out_channels=32, num_classes=3))
    names = {n for n, _ in head.named_parameters()}
    assert {'shared_fcs.0.weight', 'shared_fcs.1.weight', 'fc_cls.weight', 'fc_reg.weight'} <= names
    cls_score, bbox_pred = head(torch.randn(5, 8, 7, 7))
    assert cls_score.shape == (5, 4) and bbox_pred.shape == (5, 12)
    conv = ConvFCBBoxHead(num_shared_convs=2, num_shared_fcs=1, in_channels=8, conv_out_channels=8,
                          fc_out_channels=16, num_classes=3, reg_class_agnostic=True,
                          norm_cfg=dict(type='GN', num_groups=4))
    names = {n for n, _ in conv.named_parameters()}
    assert {'shared_convs.1.conv.weight', 'shared_convs.1.gn.weight',
            'shared_fcs.0.weight'} <= names
    assert 'shared_convs.0.conv.bias' not in names    # no conv bias before a norm
    assert conv(torch.randn(0, 8, 7, 7))[1].shape == (0, 4)


def test_head_loss_matches_manual_computation():
    torch.manual_seed(0)
    head = Shared2FCBBoxHead(in_channels=4, roi_feat_size=2, fc_out_channels=8, num_classes=2,
                             loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=2.0))
    cls_score = torch.randn(3, 3, requires_grad=True)
    bbox_pred = torch.randn(3, 8, requires_grad=True)
    labels = torch.tensor([1, 0, 2])
    targets = torch.randn(3, 4)
    weights = torch.tensor([[1.] * 4, [1.] * 4, [0.] * 4])
    rois = torch.zeros(3, 5)
    out = head.loss(cls_score, bbox_pred, rois, labels, torch.ones(3), targets, weights)
    manual_cls = torch.nn.functional.cross_entropy(cls_score, labels)
    assert torch.allclose(out['loss_cls'], manual_cls)
    pos_pred = torch.stack([bbox_pred[0, 4:8], bbox_pred[1, 0:4]])
    manual = torch.nn.functional.smooth_l1_loss(pos_pred, targets[:2], reduction='sum') / 3 * 2.0
    assert torch.allclose(out['loss_bbox'], manual)
    assert 0 <= float(out['acc']) <= 100
    # no positives: zero box loss that still reaches bbox_pred
    out = head.loss(cls_score, bbox_pred, torch.zeros(3, 5), torch.full((3,), 2), torch.ones(3),
                    targets, torch.zeros(3, 4))
    assert out['loss_bbox'].requires_grad and out['loss_bbox'].detach() == 0
