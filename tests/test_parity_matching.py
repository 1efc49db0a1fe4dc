"""The detection matcher of the parity tests: it forgives near-tie flips it can name and
nothing else (constructed examples, no reference needed)."""
import pytest
import torch

from parity_utils import assert_same_detections, explain_flip


def dets(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float)
    labels = torch.zeros(len(boxes), dtype=torch.long) if labels is None else torch.tensor(labels)
    return dict(bboxes=boxes, scores=torch.tensor(scores), labels=labels)


def grid(n, score0=0.9, step=0.05):
    """``n`` disjoint boxes with well-separated, falling scores."""
    return [[20. * k, 0, 20. * k + 10, 10] for k in range(n)], \
        [score0 - step * k for k in range(n)]


def test_identical_and_reordered_sets_match():
    boxes, scores = grid(5)
    ref = dets(boxes, scores)
    perm = torch.tensor([3, 0, 4, 1, 2])
    ours = {k: v[perm] for k, v in ref.items()}
    assert len(assert_same_detections(ours, ref, min_mask_iou=None)) == 5


def test_cut_flip_at_max_num_is_forgiven_only_with_the_cut():
    boxes, scores = grid(5)
    ref = dets(boxes, scores)
    # ours cut a near-tie at the 5th place the other way: another box at 2e-6 above
    ours = dets(boxes[:4] + [[200., 0, 210, 10]], scores[:4] + [scores[4] + 2e-6])
    assert explain_flip(4, ref, ours, score_atol=1e-4, max_num=5) == 'cut'
    assert len(assert_same_detections(ours, ref, min_mask_iou=None, max_num=5)) == 4
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(ours, ref, min_mask_iou=None)     # no cut: a real difference
    # a clear score gap at the cut is no tie
    ours_gap = dets(boxes[:4] + [[200., 0, 210, 10]], scores[:4] + [scores[4] + 0.01])
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(ours_gap, ref, min_mask_iou=None, max_num=5)


def test_nms_flip_needs_an_iou_at_the_threshold():
    # B lies inside A with IoU 0.5004: ref kept it (its IoU came out <= 0.5), ours did not
    a, b = [0., 0, 100, 10], [0., 0, 100, 5.004]
    ref = dets([a, b], [0.9, 0.8])
    ours = dets([a], [0.9])
    assert len(assert_same_detections(ours, ref, min_mask_iou=None, nms_iou=0.5)) == 1
    # the same flip with an IoU far from the threshold is a real difference
    far = dets([a, [0., 0, 100, 7]], [0.9, 0.8])     # IoU 0.7
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(dets([a], [0.9]), far, min_mask_iou=None, nms_iou=0.5)
    # other classes do not suppress each other (class-wise NMS)
    other_class = dets([a, b], [0.9, 0.8], labels=[0, 1])
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(ours, other_class, min_mask_iou=None, nms_iou=0.5)


def test_nms_order_flip_between_near_equal_scores():
    # A and B overlap well above the threshold with near-equal scores: each side kept another
    a, b = [0., 0, 100, 10], [1., 0, 101, 10]
    ref = dets([a], [0.700001])
    ours = dets([b], [0.700003])
    assert len(assert_same_detections(ours, ref, min_mask_iou=None, nms_iou=0.5)) == 0
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(dets([b], [0.72]), ref, min_mask_iou=None, nms_iou=0.5)


def test_shifted_scores_or_boxes_fail():
    boxes, scores = grid(6)
    ref = dets(boxes, scores)
    with pytest.raises(AssertionError):
        assert_same_detections(dets(boxes, [s + 1e-3 for s in scores]), ref,
                               min_mask_iou=None, max_num=6, nms_iou=0.5)
    with pytest.raises(AssertionError):
        assert_same_detections(dets([[x1 + 0.5, y1, x2 + 0.5, y2] for x1, y1, x2, y2 in boxes],
                                    scores), ref, min_mask_iou=None, max_num=6, nms_iou=0.5)
    with pytest.raises(AssertionError):
        assert_same_detections(dets(boxes, scores, labels=[1] * 6), ref, min_mask_iou=None)


def test_flips_are_bounded_in_number():
    # 3 near-tied detections at the cut, each side keeping other ones: more than 2 flips
    boxes, scores = grid(10)
    tied = [scores[9]] * 3
    ref = dets(boxes[:7] + [[300., 0, 310, 10], [330., 0, 340, 10], [360., 0, 370, 10]],
               scores[:7] + tied)
    ours = dets(boxes[:7] + [[400., 0, 410, 10], [430., 0, 440, 10], [460., 0, 470, 10]],
                scores[:7] + tied)
    with pytest.raises(AssertionError, match='unmatched: 3'):
        assert_same_detections(ours, ref, min_mask_iou=None, max_num=10)
    assert assert_same_detections(ours, ref, min_mask_iou=None, max_num=10,
                                  max_flip_fraction=0.3)


def test_traced_detections_of_a_flipped_input():
    boxes, scores = grid(3)
    ref = dets(boxes, scores)
    extra = dets([[100., 50, 120, 70]], [0.6])       # from a proposal only ours has
    ours = dets(boxes + [[100., 50, 120, 70]], scores + [0.6])
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(ours, ref, min_mask_iou=None, nms_iou=0.5)
    assert len(assert_same_detections(ours, ref, min_mask_iou=None, nms_iou=0.5,
                                      extra_ours=extra)) == 3
    # ...and a reference detection that ours lost to NMS against it
    ref2 = dets(boxes + [[101., 50, 121, 70]], scores + [0.5])
    assert len(assert_same_detections(ours, ref2, min_mask_iou=None, nms_iou=0.5,
                                      extra_ours=extra)) == 3
