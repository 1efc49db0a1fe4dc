import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from cascade_seg.models.task_utils import (AnchorGenerator, AssignResult, DeltaXYWHBBoxCoder,
                                           MaxIoUAssigner, PseudoSampler, RandomSampler,
                                           bbox_overlaps, box_iof, box_iou, boxes_to_rois,
                                           clip_boxes, decode_deltas, encode_deltas, flip_boxes,
                                           max_iou_assign, random_sample, rescale_boxes,
                                           rois_to_boxes)
from cascade_seg.registry import TASK_UTILS


def rand_boxes(n, size=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


# ---------------------------------------------------------------- box coder
def test_coder_round_trip_with_means_stds():
    boxes, gts = rand_boxes(20, seed=1), rand_boxes(20, seed=2)
    means, stds = (0.1, -0.1, 0.0, 0.2), (0.1, 0.1, 0.2, 0.2)
    deltas = encode_deltas(boxes, gts, means, stds)
    assert deltas.shape == (20, 4)
    torch.testing.assert_close(decode_deltas(boxes, deltas, means, stds), gts, atol=1e-4, rtol=0)
    coder = TASK_UTILS.build(dict(type='DeltaXYWHBBoxCoder', target_means=means, target_stds=stds))
    torch.testing.assert_close(coder.decode(boxes, coder.encode(boxes, gts)),
                               gts,
                               atol=1e-4,
                               rtol=0)


def test_coder_known_values():
    box = torch.tensor([[0., 0., 10., 20.]])
    gt = torch.tensor([[5., 0., 25., 20.]])  # centre +10 in x, width x2
    d = encode_deltas(box, gt)
    torch.testing.assert_close(d, torch.tensor([[1.0, 0.0, math.log(2), 0.0]]))


def test_decode_class_specific():
    boxes = rand_boxes(6)
    gts = [rand_boxes(6, seed=s) for s in (3, 4, 5)]
    deltas = torch.cat([encode_deltas(boxes, g, stds=(.1, .1, .2, .2)) for g in gts], 1)  # (6, 12)
    out = decode_deltas(boxes, deltas, stds=(.1, .1, .2, .2))
    assert out.shape == (6, 12)
    for k, g in enumerate(gts):
        torch.testing.assert_close(out[:, 4 * k:4 * k + 4], g, atol=1e-4, rtol=0)


def test_decode_clamps_huge_dw_and_clips():
    box = torch.tensor([[10., 10., 20., 20.]])
    out = decode_deltas(box, torch.tensor([[0., 0., 50., -50.]]))
    w, h = out[0, 2] - out[0, 0], out[0, 3] - out[0, 1]
    torch.testing.assert_close(w, torch.tensor(10 * 1000 / 16.))
    torch.testing.assert_close(h, torch.tensor(10 * 16 / 1000.))
    # torchvision clamps only from above
    out_tv = decode_deltas(box, torch.tensor([[0., 0., 0., -50.]]), symmetric_clamp=False)
    assert (out_tv[0, 3] - out_tv[0, 1]) < 1e-6
    clipped = decode_deltas(box, torch.tensor([[0., 0., 50., 50.]]), max_shape=(30, 40))
    assert clipped.tolist() == [[0., 0., 40., 30.]]
    coder = DeltaXYWHBBoxCoder(clip_border=False)
    assert coder.decode(box, torch.tensor([[0., 0., 5., 5.]]), max_shape=(30, 40)).min() < 0


def test_decode_ctr_clamp():
    box = torch.tensor([[0., 0., 100., 100.]])
    out = decode_deltas(box, torch.tensor([[1., 0., 0., 0.]]), add_ctr_clamp=True, ctr_clamp=32)
    torch.testing.assert_close(out, torch.tensor([[32., 0., 132., 100.]]))


def test_coder_matches_torchvision_boxcoder():
    from torchvision.models.detection._utils import BoxCoder
    stds = (0.1, 0.1, 0.2, 0.2)
    tv = BoxCoder(weights=tuple(1 / s for s in stds))
    boxes, gts = rand_boxes(10, seed=7), rand_boxes(10, seed=8)
    torch.testing.assert_close(encode_deltas(boxes, gts, stds=stds), tv.encode_single(gts, boxes))
    deltas = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode_deltas(boxes, deltas, stds=stds, symmetric_clamp=False),
                               tv.decode_single(deltas, boxes).reshape(10, 8),
                               atol=1e-4,
                               rtol=1e-5)


def test_coder_empty_and_half():
    assert decode_deltas(torch.zeros(0, 4), torch.zeros(0, 8)).shape == (0, 8)
    assert encode_deltas(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    boxes, gts = rand_boxes(4), rand_boxes(4, seed=3)
    d = encode_deltas(boxes.half(), gts.half())
    assert d.dtype == torch.float32
    assert decode_deltas(boxes.half(), d.half()).dtype == torch.float32


# ---------------------------------------------------------------- boxes
def test_iou_iof():
    a = torch.tensor([[0., 0., 10., 10.], [0., 0., 2., 2.]])
    b = torch.tensor([[5., 0., 15., 10.]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 3], [0.]]))
    torch.testing.assert_close(box_iof(a, b), torch.tensor([[0.5], [0.]]))
    torch.testing.assert_close(box_iof(b, a), torch.tensor([[0.5, 0.]]))
    torch.testing.assert_close(bbox_overlaps(a, b), box_iou(a, b))
    assert bbox_overlaps(torch.zeros(0, 4), b).shape == (0, 1)
    # degenerate boxes give 0, not NaN
    z = torch.tensor([[3., 3., 3., 3.]])
    assert bbox_overlaps(z, z).item() == 0


def test_small_box_helpers():
    boxes = torch.tensor([[-5., 2., 50., 70.]])
    assert clip_boxes(boxes, (60, 40)).tolist() == [[0., 2., 40., 60.]]
    b = torch.tensor([[1., 2., 4., 8.]])
    assert flip_boxes(b, (10, 20)).tolist() == [[16., 2., 19., 8.]]
    assert flip_boxes(torch.tensor([[1., 1., 4., 3.]]), (10, 20),
                      'vertical').tolist() == [[1., 7., 4., 9.]]
    assert flip_boxes(flip_boxes(b, (10, 20), 'diagonal'), (10, 20),
                      'diagonal').tolist() == b.tolist()
    torch.testing.assert_close(rescale_boxes(torch.tensor([[2., 4., 6., 8.]]), (2.0, 4.0)),
                               torch.tensor([[1., 1., 3., 2.]]))
    rois = boxes_to_rois([rand_boxes(2), torch.zeros(0, 4), rand_boxes(3)])
    assert rois.shape == (5, 5) and rois[:, 0].tolist() == [0, 0, 2, 2, 2]
    back = rois_to_boxes(rois, 3)
    assert [len(x) for x in back] == [2, 0, 3]
    torch.testing.assert_close(back[2], rand_boxes(3))


# ---------------------------------------------------------------- assigner
def assign(overlaps, pos=0.5, neg=0.4, **kw):
    overlaps = torch.tensor(overlaps)
    return max_iou_assign(overlaps, torch.arange(overlaps.shape[0]) + 10, pos, neg, **kw)


def test_assign_thresholds():
    # 2 GTs x 4 priors
    r = assign([[0.9, 0.45, 0.1, 0.0], [0.2, 0.3, 0.6, 0.0]], match_low_quality=False)
    assert r.gt_inds.tolist() == [1, -1, 2, 0]
    assert r.labels.tolist() == [10, -1, 11, -1]
    torch.testing.assert_close(r.max_overlaps, torch.tensor([0.9, 0.45, 0.6, 0.0]))
    # neg_iou_thr as (lo, hi): priors below lo stay ignored
    r = assign([[0.9, 0.45, 0.1, 0.0]], neg=(0.05, 0.5), match_low_quality=False)
    assert r.gt_inds.tolist() == [1, 0, 0, -1]


def test_assign_low_quality_gives_every_gt_its_best_prior():
    ov = [[0.3, 0.2, 0.0], [0.0, 0.35, 0.35]]
    r = assign(ov, pos=0.7, neg=0.1, min_pos_iou=0.25)
    assert r.gt_inds.tolist() == [1, 2, 2]  # gt_max_assign_all: both ties of gt 2
    r = assign(ov, pos=0.7, neg=0.1, min_pos_iou=0.25, gt_max_assign_all=False)
    assert r.gt_inds.tolist() == [1, 2, -1]
    r = assign(ov, pos=0.7, neg=0.1, min_pos_iou=0.31)
    assert r.gt_inds.tolist() == [-1, 2, 2]  # gt 1 is below min_pos_iou


def test_assign_low_quality_later_gt_overrides():
    # prior 0 is best for both GTs and >= pos for GT 1: MMDetection's loop lets GT 2 win
    ov = [[0.9, 0.1], [0.8, 0.0]]
    r = assign(ov, pos=0.5, neg=0.3)
    assert r.gt_inds.tolist() == [2, 0]
    assert r.labels.tolist() == [11, -1]
    r = assign(ov, pos=0.5, neg=0.3, gt_max_assign_all=False)
    assert r.gt_inds.tolist() == [2, 0]


def reference_assign(overlaps, pos, neg, min_pos, all_, lq):
    """MMDetection's sequential algorithm, literally."""
    G, N = overlaps.shape
    inds = torch.full((N, ), -1, dtype=torch.long)
    mo, am = overlaps.max(0)
    gmo, gam = overlaps.max(1)
    inds[(mo >= 0) & (mo < neg)] = 0
    inds[mo >= pos] = am[mo >= pos] + 1
    if lq:
        for i in range(G):
            if gmo[i] >= min_pos:
                if all_:
                    inds[overlaps[i] == gmo[i]] = i + 1
                else:
                    inds[gam[i]] = i + 1
    return inds


@pytest.mark.parametrize('all_', [True, False])
def test_assign_matches_sequential_reference(all_):
    g = torch.Generator().manual_seed(0)
    ov = (torch.rand(7, 60, generator=g) * 4).round() / 4  # many ties
    ov[:, :5] = -1  # ignored priors
    r = max_iou_assign(ov, torch.zeros(7, dtype=torch.long), 0.75, 0.3, 0.2, all_, True)
    assert r.gt_inds.tolist() == reference_assign(ov, 0.75, 0.3, 0.2, all_, True).tolist()


def test_assigner_zero_gts_and_zero_priors():
    a = MaxIoUAssigner(0.5, 0.5)
    r = a.assign(rand_boxes(5), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert r.num_gts == 0 and r.gt_inds.tolist() == [0] * 5 and r.labels.tolist() == [-1] * 5
    r = a.assign(torch.zeros(0, 4), rand_boxes(2), torch.tensor([1, 2]))
    assert r.gt_inds.shape == (0, ) and r.max_overlaps.shape == (0, ) and r.labels.shape == (0, )


def test_assigner_boxes_and_ignore():
    priors = torch.tensor([[0., 0., 10., 10.], [10., 10., 20., 20.], [50., 50., 60., 60.],
                           [100., 100., 110., 110.]])
    gts = torch.tensor([[0., 0., 10., 9.]])
    ignore = torch.tensor([[48., 48., 70., 70.]])
    a = TASK_UTILS.build(
        dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, ignore_iof_thr=0.5))
    r = a.assign(priors, gts, torch.tensor([3]), gt_bboxes_ignore=ignore)
    assert r.gt_inds.tolist() == [1, 0, -1, 0]
    assert r.labels.tolist() == [3, -1, -1, -1]
    r = a.assign(priors, gts, torch.tensor([3]))  # no ignore boxes
    assert r.gt_inds.tolist() == [1, 0, 0, 0]
    # gpu_assign_thr path (more GTs than the threshold -> computed on CPU) gives the same result
    r2 = MaxIoUAssigner(0.5, 0.5, ignore_iof_thr=0.5,
                        gpu_assign_thr=0.5).assign(priors, gts, torch.tensor([3]), ignore)
    assert r2.gt_inds.tolist() == [1, 0, -1, 0]


def test_add_gt():
    r = AssignResult(2, torch.tensor([0, 2, -1]), torch.tensor([0.1, 0.8, 0.0]),
                     torch.tensor([-1, 7, -1]))
    r.add_gt_(torch.tensor([5, 7]))
    assert r.gt_inds.tolist() == [1, 2, 0, 2, -1]
    assert r.labels.tolist() == [5, 7, -1, 7, -1]
    assert r.max_overlaps.tolist()[:2] == [1.0, 1.0] and r.num_preds == 5


# ---------------------------------------------------------------- sampler
def make_assign(num_pos, num_neg, num_ign=0, num_gts=2):
    gt_inds = torch.cat([
        torch.arange(num_pos) % num_gts + 1,
        torch.zeros(num_neg, dtype=torch.long), -torch.ones(num_ign, dtype=torch.long)
    ])
    labels = torch.where(gt_inds > 0, gt_inds + 100, torch.full_like(gt_inds, -1))
    return AssignResult(num_gts, gt_inds, torch.rand(gt_inds.numel()), labels)


def test_random_sample_fraction_and_ub():
    gt_inds = make_assign(100, 400, 10).gt_inds
    torch.manual_seed(0)
    pos, neg = random_sample(gt_inds, 64, 0.25)
    assert pos.numel() == 16 and neg.numel() == 48
    assert (gt_inds[pos] > 0).all() and (gt_inds[neg] == 0).all()
    assert (pos.diff() > 0).all() and (neg.diff() > 0).all()  # sorted, unique
    pos, neg = random_sample(make_assign(3, 400).gt_inds, 64, 0.25)
    assert pos.numel() == 3 and neg.numel() == 61  # negatives fill up
    pos, neg = random_sample(make_assign(3, 400).gt_inds, 64, 0.25, neg_pos_ub=2)
    assert neg.numel() == 6
    pos, neg = random_sample(make_assign(0, 400).gt_inds, 64, 0.25, neg_pos_ub=2)
    assert pos.numel() == 0 and neg.numel() == 2


def test_random_sampler_adds_gts_and_is_seeded():
    priors, gts = rand_boxes(60), rand_boxes(2, seed=9)
    ar = make_assign(20, 40)
    before = ar.gt_inds.clone()
    sampler = TASK_UTILS.build(dict(type='RandomSampler', num=16, pos_fraction=0.5))
    torch.manual_seed(3)
    res = sampler.sample(ar, priors, gts, torch.tensor([101, 102]))
    torch.manual_seed(3)
    res2 = sampler.sample(ar, priors, gts, torch.tensor([101, 102]))
    assert torch.equal(res.pos_inds, res2.pos_inds) and torch.equal(res.neg_inds, res2.neg_inds)
    assert torch.equal(ar.gt_inds, before)  # caller's assignment untouched
    assert res.all_priors.shape == (62, 4) and torch.equal(res.all_priors[:2], gts)
    assert res.pos_inds.numel() == 8 and res.neg_inds.numel() == 8
    assert res.pos_is_gt.dtype == torch.bool
    assert torch.equal(res.pos_is_gt, res.pos_inds < 2)
    torch.testing.assert_close(res.pos_gt_bboxes, gts[res.pos_gt_inds])
    assert (res.pos_gt_labels == res.pos_gt_inds + 101).all()
    assert torch.equal(res.priors, torch.cat([res.pos_priors, res.neg_priors]))
    assert torch.equal(res.bboxes, res.priors) and res.pos_assigned_gt_inds is res.pos_gt_inds
    torch.testing.assert_close(res.pos_priors, res.all_priors[res.pos_inds])


def test_samplers_without_gts():
    priors = rand_boxes(30)
    ar = make_assign(0, 30)
    res = RandomSampler(8, 0.25).sample(ar, priors, torch.zeros(0, 4),
                                        torch.zeros(0, dtype=torch.long))
    assert res.pos_inds.numel() == 0 and res.neg_inds.numel() == 8
    assert res.pos_gt_bboxes.shape == (0, 4) and res.priors.shape == (8, 4)
    res = PseudoSampler().sample(make_assign(5, 20, 5), rand_boxes(30), rand_boxes(2),
                                 torch.tensor([0, 1]))
    assert res.pos_inds.tolist() == list(range(5)) and res.neg_inds.tolist() == list(range(5, 25))
    assert not res.pos_is_gt.any()


# ---------------------------------------------------------------- anchors
def test_anchor_counts_and_order():
    gen = TASK_UTILS.build(
        dict(type='AnchorGenerator', strides=[4, 8], ratios=[0.5, 1.0, 2.0], scales=[8]))
    assert gen.num_base_priors == [3, 3]
    sizes = [(5, 7), (3, 4)]
    levels = gen.grid_priors(sizes, 'cpu')  # design.md: grid_priors(featmap_sizes, device)
    assert [lv.shape for lv in levels] == [(5 * 7 * 3, 4), (3 * 4 * 3, 4)]
    a = levels[0].view(5, 7, 3, 4)
    # location-major: moving one column shifts by the stride, ratios within a location
    torch.testing.assert_close(a[0, 1] - a[0, 0], torch.tensor([[4., 0., 4., 0.]] * 3))
    torch.testing.assert_close(a[1, 0] - a[0, 0], torch.tensor([[0., 4., 0., 4.]] * 3))
    wh = a[0, 0, :, 2:] - a[0, 0, :, :2]
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(wh[1], torch.tensor([32., 32.]))
    flags = gen.valid_flags(sizes, (18, 28))
    assert flags[0].view(5, 7, 3)[:, :, 0].sum() == 5 * 7
    assert flags[0].view(5, 7, 3)[:, :, 0].tolist()[4][0] is True
    flags = gen.valid_flags(sizes, (10, 28))
    assert flags[1].view(3, 4, 3)[:, 0, 0].tolist() == [True, True, False]


def test_anchor_octave_scales():
    gen = AnchorGenerator(strides=[8], ratios=[1.0], octave_base_scale=4, scales_per_octave=3)
    wh = gen.base_anchors[0][:, 2] - gen.base_anchors[0][:, 0]
    torch.testing.assert_close(wh, 32 * torch.tensor([1, 2**(1 / 3), 2**(2 / 3)]))


def test_anchors_match_torchvision():
    strides = [4, 8, 16, 32, 64]
    gen = AnchorGenerator(strides=strides, ratios=[0.5, 1, 2], scales=[8], round_base_anchors=True)
    tv = TVAnchorGenerator(sizes=((32, ), (64, ), (128, ), (256, ), (512, )),
                           aspect_ratios=((0.5, 1.0, 2.0), ) * 5)
    img_h, img_w = 192, 256
    sizes = [(img_h // s, img_w // s) for s in strides]
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    expected = tv(ImageList(torch.zeros(1, 3, img_h, img_w), [(img_h, img_w)]), feats)[0]
    ours = torch.cat(gen.grid_priors(sizes, device='cpu'))
    assert torch.equal(ours, expected)


def test_overlaps_and_coder_under_autocast_are_fp32():
    a, b = rand_boxes(5), rand_boxes(4, seed=3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ov = bbox_overlaps(a.bfloat16(), b.bfloat16())
        d = encode_deltas(a, b[:1].expand(5, 4))
    assert ov.dtype == torch.float32 and d.dtype == torch.float32
    torch.testing.assert_close(ov, bbox_overlaps(a, b), atol=0.02, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    from cascade_seg.models.task_utils import mask_targets, paste_masks
    dev = torch.device('cuda')
    priors, gts, labels = rand_boxes(300), rand_boxes(4, seed=5), torch.tensor([0, 1, 2, 3])
    assigner = MaxIoUAssigner(0.5, 0.3, min_pos_iou=0.1)
    cpu = assigner.assign(priors, gts, labels)
    gpu = assigner.assign(priors.to(dev), gts.to(dev), labels.to(dev))
    assert torch.equal(cpu.gt_inds, gpu.gt_inds.cpu()) and gpu.gt_inds.is_cuda
    torch.manual_seed(0)
    rc = RandomSampler(64, 0.25).sample(cpu, priors, gts, labels)
    torch.manual_seed(0)
    rg = RandomSampler(64, 0.25).sample(gpu, priors.to(dev), gts.to(dev), labels.to(dev))
    assert torch.equal(rc.pos_inds, rg.pos_inds.cpu()) and torch.equal(
        rc.neg_inds, rg.neg_inds.cpu())
    d = encode_deltas(rc.pos_priors, rc.pos_gt_bboxes)
    torch.testing.assert_close(decode_deltas(rg.pos_priors, d.to(dev)).cpu(),
                               rc.pos_gt_bboxes,
                               atol=1e-3,
                               rtol=0)
    gen = AnchorGenerator(strides=[4, 8], ratios=[0.5, 1, 2], scales=[8])
    for x, y in zip(gen.grid_priors([(6, 5), (3, 3)]), gen.grid_priors([(6, 5), (3, 3)],
                                                                       device=dev)):
        assert torch.equal(x, y.cpu())
    masks = torch.rand(4, 150, 160) > 0.5
    tc = mask_targets(rc.pos_priors, rc.pos_gt_inds, masks, 28)
    tg = mask_targets(rg.pos_priors, rg.pos_gt_inds, masks.to(dev), 28)
    assert (tc != tg.cpu()).float().mean() < 0.01
    probs = torch.rand(len(rc.pos_priors), 28, 28)
    pc = paste_masks(probs, rc.pos_priors, (150, 160))
    pg = paste_masks(probs.to(dev), rg.pos_priors, (150, 160))
    assert pg.is_cuda and (pc != pg.cpu()).float().mean() < 1e-3
