"""Keypoint R-CNN parity with torchvision's ``keypointrcnn_resnet50_fpn`` on converted weights.

A seeded torchvision model (random weights, random BatchNorm statistics, a sharpened
classifier) is converted with ``convert_torchvision`` and loaded into
``keypoint-rcnn_r50_fpn_torchvision.py``; both run on the same image at a size torchvision
keeps, and must give the same detections and keypoints (within 0.5 px). The keypoint targets
and loss are compared with torchvision's on the same logits. Each check is shown to fail for
a plausible mistake: a target quantised one cell off, and heatmaps mapped to the image
without resizing them to the box.
"""
import pytest
import torch
import torchvision
from torchvision.models.detection import roi_heads as tv_roi_heads

from cascade_seg.models.roi_heads.branches import keypoint_branch
from cascade_seg.models.task_utils import keypoint_loss, keypoint_targets
from cascade_seg.structures import DetDataSample
from cascade_seg.utils import convert_torchvision
from parity_utils import (assert_same_detections, build_from_config, capture, load_converted,
                          pre_nms_detections, randomize_norms, unpaired)

pytestmark = [pytest.mark.slow, pytest.mark.parity]

CONFIG = 'configs/keypoint_rcnn/keypoint-rcnn_r50_fpn_torchvision.py'
H, W = 320, 384
KPT_TOL = 0.5   # pixels
# Box logits agree to ~3e-4 (4e-5 of their scale, float sums through ResNet-50); the sharpened
# 2-class softmax turns that into score differences up to ~2e-4.
SCORE_ATOL = 5e-4


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    tv = torchvision.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=H, max_size=W)
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8)  # RGB
    image = img.float() / 255
    randomize_norms(tv, [image], seed=2)
    with torch.no_grad():
        # random init scores every box ~0.5 person: spread the scores (and raise them above
        # the 0.05 threshold) so that NMS and the 100-detection cut see few near-ties
        tv.roi_heads.box_predictor.cls_score.weight.mul_(6.0)
        tv.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 2.0]))
    tv.eval()
    model = build_from_config(CONFIG)
    sd, unmapped = convert_torchvision(tv.state_dict())
    assert not unmapped
    load_converted(model, sd, unmapped)
    data = model.data_preprocessor(
        dict(inputs=[img.flip(0)],  # ours reads BGR like cv2
             data_samples=[DetDataSample(metainfo=dict(
                 img_shape=(H, W), ori_shape=(H, W), scale_factor=(1.0, 1.0)))]), False)
    with torch.no_grad():
        tv_props = []
        undo = capture(tv.rpn, 'filter_proposals', tv_props)
        try:
            tv_out = tv([image])[0]
        finally:
            undo()
    return tv, model, data, tv_out, (tv_props[0][0][0], tv_props[0][1][0])


@torch.no_grad()
def predict_and_compare(model, data, tv_out, tv_proposals):
    """Our detections against torchvision's (near-tie flips traced to their proposal), then
    every keypoint of every paired detection within ``KPT_TOL`` pixels."""
    inputs, samples = data['inputs'], data['data_samples']
    props = []
    undo = capture(model.rpn_head, 'predict', props)
    try:
        ours = model.predict(inputs, samples)[0].pred_instances
    finally:
        undo()
    feats = model.extract_feat(inputs)
    rpn_cfg, rcnn_cfg = model.test_cfg['rpn'], model.test_cfg['rcnn']
    tv_boxes, tv_scores = tv_proposals
    roi_pairs = assert_same_detections(
        props[0][0].to_dict(), dict(bboxes=tv_boxes, scores=tv_scores,
                                    labels=torch.zeros(len(tv_boxes), dtype=torch.long)),
        min_mask_iou=None, max_num=rpn_cfg['max_per_img'],
        nms_iou=rpn_cfg['nms']['iou_threshold'], class_agnostic_nms=True)
    extra_ours, extra_ref = (
        pre_nms_detections(model.roi_head, feats, boxes[unpaired(roi_pairs, len(boxes), side)],
                           samples[0])
        for boxes, side in ((props[0][0].bboxes, 1), (tv_boxes, 0)))
    extra_ref['labels'] += 1
    ref = dict(bboxes=tv_out['boxes'], scores=tv_out['scores'], labels=tv_out['labels'])
    assert len(ref['scores']) >= 20, 'test setup: too few detections to compare'
    pairs = assert_same_detections(ours.to_dict(), ref, label_offset=1, score_atol=SCORE_ATOL,
                                   max_num=rcnn_cfg['max_per_img'],
                                   score_thr=rcnn_cfg['score_thr'],
                                   nms_iou=rcnn_cfg['nms']['iou_threshold'],
                                   extra_ours=extra_ours, extra_ref=extra_ref)
    ri, oj = (torch.tensor(x) for x in zip(*pairs))
    err = (ours.keypoints[oj] - tv_out['keypoints'][ri, :, :2]).abs().amax(-1)
    far = err > KPT_TOL
    # forgiven only where our own heatmap has torchvision's point as a near-tie, and rarely
    if far.any() and far.float().mean() <= 0.01:
        rows, kpts = torch.nonzero(far, as_tuple=True)
        boxes = ours.bboxes[oj[rows]]
        heat = keypoint_heatmaps(model, feats, boxes, samples[0])[torch.arange(len(rows)), kpts]
        gap = resized_peak_gap(heat, boxes, tv_out['keypoints'][ri[rows], kpts, :2])
        far[rows, kpts] = gap > 1e-4 * heat.abs().amax((1, 2))
    assert not far.any(), \
        f'{int(far.sum())} of {err.numel()} keypoints off by more than {KPT_TOL} px (max ' \
        f'{err[far].max():.2f}) and not at a near-tie of the heatmap'
    score_err = (ours.keypoint_scores[oj] - tv_out['keypoints_scores'][ri]).abs().max()
    assert score_err <= 1e-3 * tv_out['keypoints_scores'].abs().max(), \
        f'keypoint scores differ by {score_err:.3g}'
    return len(pairs), err


def keypoint_heatmaps(model, feats, boxes, sample):
    """Our keypoint head's heatmaps for ``boxes`` (K, 4) of one image."""
    from cascade_seg.models.task_utils import boxes_to_rois
    head = model.roi_head
    rois = boxes_to_rois([boxes])
    return head.keypoint_head['0'](head.extractor('keypoint', 0)(feats, rois))


def resized_peak_gap(heat, boxes, xy):
    """Per row: the max of the heatmap resized to its box (as the decoding does) minus its
    value at the point ``xy``."""
    gaps = []
    for h, box, p in zip(heat, boxes, xy):
        w, hh = (box[2:] - box[:2]).clamp(min=1).tolist()
        rw, rh = int(torch.tensor(w).ceil()), int(torch.tensor(hh).ceil())
        roi_map = torch.nn.functional.interpolate(h[None, None], size=(rh, rw), mode='bicubic',
                                                  align_corners=False)[0, 0]
        x = int(((p[0] - box[0]) / (w / rw) - 0.5).round().clamp(0, rw - 1))
        y = int(((p[1] - box[1]) / (hh / rh) - 0.5).round().clamp(0, rh - 1))
        gaps.append(roi_map.max() - roi_map[y, x])
    return torch.stack(gaps)


def test_torchvision_keypoint_parity(setup):
    tv, model, data, tv_out, tv_proposals = setup
    n, err = predict_and_compare(model, data, tv_out, tv_proposals)
    assert n >= 20 and err.numel() == n * 17


def _decode_without_resize(heatmaps, boxes):
    """A plausible wrong mapping: the argmax of the 56x56 map, scaled to the box, without
    resizing the heatmap to the box first."""
    n, k, s, _ = heatmaps.shape
    pos = heatmaps.flatten(2).argmax(-1)
    cx, cy = (pos % s).float(), torch.div(pos, s, rounding_mode='floor').float()
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
    xy = torch.stack([boxes[:, None, 0] + (cx + 0.5) * wh[:, None, 0] / s,
                      boxes[:, None, 1] + (cy + 0.5) * wh[:, None, 1] / s], -1)
    return xy, heatmaps.flatten(2).amax(-1)


def test_torchvision_keypoint_parity_fails_for_a_wrong_heatmap_mapping(setup, monkeypatch):
    tv, model, data, tv_out, tv_proposals = setup
    monkeypatch.setattr(keypoint_branch, 'heatmaps_to_keypoints', _decode_without_resize)
    with pytest.raises(AssertionError, match='keypoints off by more than'):
        predict_and_compare(model, data, tv_out, tv_proposals)


def _random_keypoint_batch(seed=0, n=64, k=17, size=56):
    g = torch.Generator().manual_seed(seed)
    xy1 = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy1, xy1 + 8 + torch.rand(n, 2, generator=g) * 150], 1)
    # keypoints around the boxes (some outside), some exactly on the right/bottom edges
    kx = boxes[:, None, 0] + (torch.rand(n, k, generator=g) * 1.3 - 0.15) * (boxes[:, 2:3] - boxes[:, 0:1])
    ky = boxes[:, None, 1] + (torch.rand(n, k, generator=g) * 1.3 - 0.15) * (boxes[:, 3:4] - boxes[:, 1:2])
    kx[:, 0], ky[:, 1] = boxes[:, 2], boxes[:, 3]
    vis = torch.randint(0, 3, (n, k), generator=g).float()
    logits = torch.randn(n, k, size, size, generator=g)
    return boxes, torch.stack([kx, ky, vis], -1), logits


def test_keypoint_targets_and_loss_match_torchvision():
    boxes, kpts, logits = _random_keypoint_batch()
    cells, valid = keypoint_targets(boxes, kpts, 56)
    tv_cells, tv_valid = tv_roi_heads.keypoints_to_heatmap(kpts, boxes, 56)
    assert torch.equal(valid, tv_valid.bool()) and torch.equal(cells, tv_cells)
    assert bool(valid[:, 0].any()) and int(cells.max()) < 56 * 56   # edge points kept, in range
    ours = keypoint_loss(logits, cells, valid)
    theirs = tv_roi_heads.keypointrcnn_loss(logits, [boxes], [kpts], [torch.arange(len(boxes))])
    torch.testing.assert_close(ours, theirs)


def test_keypoint_loss_check_fails_for_an_off_by_one_quantisation():
    boxes, kpts, logits = _random_keypoint_batch(seed=1)
    # ceil instead of floor: every keypoint lands one cell right/down
    shifted = kpts.clone()
    shifted[..., :2] += (boxes[:, None, 2:] - boxes[:, None, :2]) / 56
    cells, valid = keypoint_targets(boxes, shifted, 56)
    theirs = tv_roi_heads.keypointrcnn_loss(logits, [boxes], [kpts], [torch.arange(len(boxes))])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(keypoint_loss(logits, cells, valid), theirs)


def test_keypoint_loss_without_valid_keypoints_is_zero_and_connected():
    logits = torch.randn(3, 4, 56, 56, requires_grad=True)
    cells = torch.zeros(3, 4, dtype=torch.long)
    loss = keypoint_loss(logits, cells, torch.zeros(3, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0
    # the fixed normaliser (Detectron2's alternative) divides the summed loss by that number
    valid = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(keypoint_loss(logits, cells, valid, normalizer=24.0),
                               keypoint_loss(logits, cells, valid) * 12 / 24)
