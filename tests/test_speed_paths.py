"""Speed paths give the plain paths' results: class-wise NMS, channels-last convs, HTC's
last-mask-only test path, chunked mask pasting."""
import torch
from torchvision.ops import batched_nms

import cascade_seg.models  # noqa: F401  (registers everything)
from cascade_seg.models.roi_heads.bbox_heads import (class_wise_nms, postprocess_detections,
                                                     top_class_wise_nms)
from cascade_seg.models.task_utils import paste_masks
from cascade_seg.registry import MODELS

torch.set_num_threads(1)


def _random_dets(n, num_classes, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, num_classes, 2, generator=g) * 100
    wh = torch.rand(n, num_classes, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], dim=2)
    scores = torch.rand(n, num_classes + 1, generator=g).softmax(1)
    if ties:
        scores = (scores * 20).round() / 20  # many equal scores: order must still match
    return boxes.view(n, -1), scores


def test_class_wise_nms_equals_batched_nms():
    for ties in (False, True):
        boxes, scores = _random_dets(200, 12, seed=1, ties=ties)  # 2400 boxes: the loop path
        b = boxes.view(-1, 4)
        s = scores[:, :-1].reshape(-1)
        labels = torch.arange(12).repeat(200)
        keep = class_wise_nms(b, s, labels, 0.5)
        assert torch.equal(keep, batched_nms(b, s, labels, 0.5))
        assert 0 < keep.numel() < b.size(0)
    # small inputs take torchvision's single-NMS path unchanged
    b, s, lab = b[:500], s[:500], labels[:500]
    assert torch.equal(class_wise_nms(b, s, lab, 0.5), batched_nms(b, s, lab, 0.5))


def test_class_wise_nms_on_threads_equals_batched_nms():
    boxes, scores = _random_dets(200, 12, seed=3, ties=True)
    b, s = boxes.view(-1, 4), scores[:, :-1].reshape(-1)
    labels = torch.arange(12).repeat(200)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # the classes' NMS on three threads
        keep = class_wise_nms(b, s, labels, 0.5)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(keep, batched_nms(b, s, labels, 0.5))


def test_top_class_wise_nms_equals_the_full_nms_cut():
    for ties in (False, True):
        boxes, scores = _random_dets(400, 10, seed=4, ties=ties)
        b, s = boxes.view(-1, 4), scores[:, :-1].reshape(-1)
        labels = torch.arange(10).repeat(400)
        full = batched_nms(b, s, labels, 0.5)
        for k, first in ((100, None), (100, 50), (30, 40), (full.numel() + 5, 100)):
            # first < k and few survivors in a small prefix: the prefix has to grow
            keep = top_class_wise_nms(b, s, labels, 0.5, k, first=first)
            ref = full[:k]
            if not ties:
                assert torch.equal(keep, ref), (k, first)
                continue
            # equal scores: the same scores in order, the same boxes above the last score
            # (torchvision orders equal scores by an unstable sort of what it is given)
            assert torch.equal(s[keep], s[ref]), (k, first)
            last = s[ref[-1]]
            assert set(keep[s[keep] > last].tolist()) == set(ref[s[ref] > last].tolist())
    # heavy overlap: almost everything is suppressed, the prefix grows to the whole set
    b = torch.tensor([[0., 0., 10., 10.]]).repeat(3000, 1) + torch.rand(3000, 1)
    s, labels = torch.rand(3000), torch.zeros(3000, dtype=torch.long)
    assert torch.equal(top_class_wise_nms(b, s, labels, 0.5, 100),
                       batched_nms(b, s, labels, 0.5)[:100])


def test_postprocess_detections_unchanged_on_many_classes():
    boxes, scores = _random_dets(300, 20, seed=2)
    det_boxes, det_scores, det_labels = postprocess_detections(boxes, scores, 0.0, 0.5, 100)
    n, c = scores.size(0), 20
    flat_boxes = boxes.view(n, c, 4).reshape(-1, 4)
    flat_scores = scores[:, :-1].reshape(-1)
    flat_labels = torch.arange(c).expand(n, c).reshape(-1)
    keep = batched_nms(flat_boxes, flat_scores, flat_labels, 0.5)[:100]
    assert torch.equal(det_boxes, flat_boxes[keep])
    assert torch.equal(det_scores, flat_scores[keep])
    assert torch.equal(det_labels, flat_labels[keep])


def test_mask_head_channels_last_matches_nchw_reference():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='HTCMaskHead', num_convs=2, in_channels=16,
                             conv_out_channels=16, num_classes=3)).eval()
    x, res = torch.randn(5, 16, 14, 14), torch.randn(5, 16, 14, 14)
    with torch.no_grad():
        logits, feat = head(x, res, return_feat=True)
        assert logits.is_contiguous(memory_format=torch.channels_last)
        with torch.backends.mkldnn.flags(enabled=False):  # plain NCHW kernels
            h = x + head.conv_res(res)
            for conv in head.convs:
                h = conv(h)
            ref = head.conv_logits(torch.relu(head.upsample(h)))
    assert logits.shape == (5, 3, 28, 28)
    assert torch.allclose(feat, h, atol=1e-5)
    assert torch.allclose(logits, ref, atol=1e-5)


def test_detector_features_channels_last_match_nchw():
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='TwoStageDetector',
        backbone=dict(type='ResNet', depth=18, frozen_stages=-1, norm_eval=False),
        neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=16, num_outs=5))
    ).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.extract_feat(x)
        with torch.backends.mkldnn.flags(enabled=False):
            ref = model.neck(model.backbone(x))
    assert feats[0].is_contiguous(memory_format=torch.channels_last)
    for f, r in zip(feats, ref):
        assert f.shape == r.shape and torch.allclose(f, r, rtol=1e-4, atol=1e-4)


def test_htc_last_mask_skips_unused_logits():
    cfg = dict(type='CascadeRoIHead', num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
               bbox_roi_extractor=dict(type='SingleRoIExtractor', out_channels=8,
                                       featmap_strides=[4],
                                       roi_layer=dict(type='RoIAlign', output_size=7)),
               bbox_head=dict(type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=16,
                              num_classes=2, reg_class_agnostic=True),
               mask_roi_extractor=dict(type='SingleRoIExtractor', out_channels=8,
                                       featmap_strides=[4],
                                       roi_layer=dict(type='RoIAlign', output_size=14)),
               mask_head=dict(type='FCNMaskHead', num_convs=1, in_channels=8,
                              conv_out_channels=8, num_classes=2),
               mask_info_flow=True, mask_average='last')
    torch.manual_seed(0)
    head = MODELS.build(cfg).eval()
    calls = []
    for key, m in head.mask_head.items():
        m.register_forward_hook(lambda mod, args, kwargs, out, key=key: calls.append(
            (key, kwargs.get('return_logits', True))), with_kwargs=True)
    x = [torch.randn(1, 8, 16, 16)]
    rois = torch.tensor([[0., 2, 2, 30, 40], [0, 10, 5, 50, 60]])
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        feats, res = head.extractor('mask', 0)(x, rois), None
        probs = head.mask_head.predict(lambda t: feats, rois, labels, {})
        for k in ('0', '1'):
            res = head.mask_head[k](feats, res, return_logits=False)
        ref = head.mask_head['2'].mask_probs(head.mask_head['2'](feats, res), labels)
    assert calls[:3] == [('0', False), ('1', False), ('2', True)]
    assert torch.allclose(probs, ref)


def test_paste_chunking_does_not_change_masks():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(30, 28, 28, generator=g)
    xy = torch.rand(30, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 60 + 1], dim=1)
    small = paste_masks(probs, boxes, (120, 130), chunk_elems=2000)
    large = paste_masks(probs, boxes, (120, 130), chunk_elems=1 << 26)
    assert small.dtype == torch.bool and small.any()
    assert torch.equal(small, large)


def test_avg_pool_to_matches_adaptive_avg_pool():
    from torch.nn import functional as F

    from cascade_seg.models.roi_heads.roi_features import avg_pool_to
    x = torch.randn(3, 4, 14, 14, requires_grad=True)
    out = avg_pool_to(x, (7, 7))
    ref = F.adaptive_avg_pool2d(x, (7, 7))
    assert torch.allclose(out, ref, atol=1e-6)
    g = torch.randn_like(out)
    assert torch.allclose(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    y = torch.randn(2, 4, 10, 10)  # not a whole-number factor: the adaptive op itself
    assert torch.equal(avg_pool_to(y, (7, 7)), F.adaptive_avg_pool2d(y, (7, 7)))


def test_single_level_extractor_pools_directly():
    from torchvision.ops import roi_align
    ext = MODELS.build(dict(type='SingleRoIExtractor', out_channels=4, featmap_strides=[8],
                            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0)))
    feat = torch.randn(2, 4, 16, 16)
    rois = torch.tensor([[0., 3, 4, 60, 90], [1, 0, 0, 128, 128], [0, 10, 10, 12, 11]])
    assert torch.equal(ext([feat], rois), roi_align(feat, rois, 14, 1 / 8, 0, True))
