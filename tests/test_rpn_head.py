"""RPNHead: output layout, losses (incl. degenerate images), proposals, torchvision parity."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torchvision.ops import box_iou

from cascade_seg.models.dense_heads import RPNHead
from cascade_seg.models.dense_heads.rpn_head import (anchor_valid_flags, first_k_per_group,
                                                     flatten_level_outputs, topk_per_level)
from cascade_seg.models.task_utils import encode_deltas
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)

STRIDES = [4, 8, 16, 32, 64]
TRAIN_CFG = dict(
    assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                  match_low_quality=True, ignore_iof_thr=-1),
    sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                 add_gt_as_proposals=False),
    allowed_border=-1, pos_weight=-1)
TEST_CFG = dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0)


def _head(train_cfg=TRAIN_CFG, **kwargs):
    torch.manual_seed(0)
    return RPNHead(in_channels=8, feat_channels=8, train_cfg=train_cfg, test_cfg=TEST_CFG, **kwargs)


def _feats(batch=2, size=64, channels=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, size // s, size // s, generator=g) for s in STRIDES]


def _sample(bboxes, img_shape=(64, 64), ignore=None, batch_shape=(64, 64)):
    s = DetDataSample(metainfo=dict(img_shape=img_shape, pad_shape=batch_shape,
                                    batch_input_shape=batch_shape, scale_factor=(2.0, 2.0)))
    bboxes = torch.tensor(bboxes, dtype=torch.float32).reshape(-1, 4)
    s.gt_instances = InstanceData(bboxes=bboxes, labels=torch.zeros(len(bboxes), dtype=torch.long))
    if ignore is not None:
        s.ignored_instances = InstanceData(bboxes=torch.tensor(ignore, dtype=torch.float32))
    return s


# ----------------------------------------------------------------------------- pure functions

def test_anchor_counts_and_output_layout_match_anchor_order():
    head = _head()
    feats = _feats()
    cls_scores, bbox_preds = head(feats)
    assert [tuple(c.shape) for c in cls_scores] == [(2, 3, 64 // s, 64 // s) for s in STRIDES]
    assert [b.shape[1] for b in bbox_preds] == [12] * 5
    sizes, anchors = head._anchors(cls_scores)
    assert [a.shape[0] for a in anchors] == [3 * (64 // s) ** 2 for s in STRIDES]
    logits, deltas = flatten_level_outputs(cls_scores, bbox_preds)
    assert logits.shape == (2, 3 * sum((64 // s) ** 2 for s in STRIDES)) and deltas.shape[-1] == 4
    # level 1, location (y=2, x=5), anchor 1 -> flat index
    w, a = 64 // 8, 3
    n = anchors[0].shape[0] + (2 * w + 5) * a + 1
    assert logits[1, n] == cls_scores[1][1, 1, 2, 5]
    torch.testing.assert_close(deltas[1, n], bbox_preds[1][1, 4:8, 2, 5])
    centre = (anchors[1][n - anchors[0].shape[0], :2] + anchors[1][n - anchors[0].shape[0], 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([5 * 8., 2 * 8.]))


def test_anchor_valid_flags_follow_pad_shape():
    flags = anchor_valid_flags([(4, 4), (2, 2)], [2, 2], [(8, 8), (16, 16)], (20, 9))
    level0 = flags[:32].view(4, 4, 2)
    assert level0[:3, :2].all() and not level0[3].any() and not level0[:, 2:].any()
    assert flags[32:].view(2, 2, 2)[:, 0].all() and not flags[32:].view(2, 2, 2)[:, 1].any()


def test_topk_per_level_and_first_k_per_group():
    logits = torch.tensor([[5., 1., 3., 0., 9., 2.]])
    assert topk_per_level(logits, [3, 3], 2).tolist() == [[0, 2, 4, 5]]
    assert topk_per_level(logits, [3, 3], -1).shape == (1, 6)
    order = torch.tensor([4, 0, 3, 1, 5, 2])                # sorted by some score
    groups = torch.tensor([0, 1, 0, 1, 0, 1])
    assert first_k_per_group(order, groups, 2).tolist() == [4, 0, 3, 1]


# ----------------------------------------------------------------------------- losses

def test_loss_finite_and_backpropagates():
    head = _head()
    samples = [_sample([[10, 12, 40, 44], [30, 5, 60, 25]]), _sample([[0, 0, 63, 63]])]
    feats = [f.requires_grad_() for f in _feats()]
    losses = head.loss(feats, samples)
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    assert all(v.ndim == 0 and v.isfinite() for v in losses.values())
    assert losses['loss_rpn_bbox'] > 0
    (losses['loss_rpn_cls'] + losses['loss_rpn_bbox']).backward()
    assert head.rpn_cls.weight.grad.abs().sum() > 0 and head.rpn_reg.weight.grad.abs().sum() > 0


def test_loss_matches_manual_computation_when_everything_is_sampled():
    cfg = dict(TRAIN_CFG, sampler=dict(type='RandomSampler', num=10 ** 6, pos_fraction=0.5,
                                       add_gt_as_proposals=False))
    head = _head(train_cfg=cfg)
    feats = _feats(batch=1)
    cls_scores, bbox_preds = head(feats)
    anchors = torch.cat(head._anchors(cls_scores)[1])
    gt = anchors[100:101].clone()                        # a GT equal to one anchor
    losses = head.loss(feats, [_sample(gt.tolist())])

    iou = box_iou(anchors, gt)[:, 0]
    pos, neg = iou >= 0.7, iou < 0.3
    logits, deltas = flatten_level_outputs(cls_scores, bbox_preds)
    n = int(pos.sum() + neg.sum())
    sel = pos | neg
    exp_cls = F.binary_cross_entropy_with_logits(logits[0][sel], pos[sel].float(),
                                                 reduction='sum') / n
    targets = encode_deltas(anchors[pos], gt.expand(int(pos.sum()), 4))
    exp_bbox = (deltas[0][pos] - targets).abs().sum() / n
    torch.testing.assert_close(losses['loss_rpn_cls'], exp_cls)
    torch.testing.assert_close(losses['loss_rpn_bbox'], exp_bbox)


def test_zero_gt_image_and_fully_ignored_batch():
    head = _head()
    feats = [f.requires_grad_() for f in _feats()]
    losses = head.loss(feats, [_sample([]), _sample([])])
    assert losses['loss_rpn_cls'] > 0 and losses['loss_rpn_bbox'] == 0
    losses['loss_rpn_cls'].backward()

    cfg = dict(TRAIN_CFG, assigner=dict(TRAIN_CFG['assigner'], ignore_iof_thr=0.5))
    head = _head(train_cfg=cfg)
    everything = [[-1000., -1000., 1000., 1000.]]
    samples = [_sample([[10, 10, 30, 30]], ignore=everything),
               _sample([[5, 5, 50, 50]], ignore=everything)]
    losses = head.loss(feats, samples)
    assert all(v.isfinite() and v == 0 for v in losses.values())
    sum(losses.values()).backward()                       # graph still connected


def test_allowed_border_and_pad_shape_exclude_anchors():
    cfg = dict(TRAIN_CFG, allowed_border=0)
    head = _head(train_cfg=cfg)
    cls_scores, _ = head(_feats(batch=1))
    sizes, levels = head._anchors(cls_scores)
    anchors = torch.cat(levels)
    gts = [InstanceData(bboxes=torch.tensor([[10., 10., 30., 30.]]))]
    meta = dict(img_shape=(64, 64), pad_shape=(64, 64))
    img, anchor_idx = head.get_targets(anchors, sizes, gts, [meta])[:2]
    inside = ((anchors[:, :2] >= 0) & (anchors[:, 2:] < 64)).all(1)
    assert inside[anchor_idx].all()
    # an image padded to 32x32 inside a 64x64 batch: nothing below/right of it is sampled
    meta = dict(img_shape=(30, 30), pad_shape=(32, 32))
    head.train_cfg = TRAIN_CFG
    _, anchor_idx = head.get_targets(anchors, sizes, gts, [meta])[:2]
    centres = (anchors[anchor_idx, :2] + anchors[anchor_idx, 2:]) / 2
    assert (centres < 32).all()


def test_loss_and_predict_returns_detached_proposals():
    head = _head()
    samples = [_sample([[10, 12, 40, 44]]), _sample([[0, 0, 30, 30]], img_shape=(40, 50))]
    feats = [f.requires_grad_() for f in _feats()]
    losses, proposals = head.loss_and_predict(
        feats, samples, proposal_cfg=dict(nms_pre=2000, max_per_img=50,
                                          nms=dict(type='nms', iou_threshold=0.7),
                                          min_bbox_size=0))
    assert set(losses) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    assert len(proposals) == 2 and all(len(p) == 50 for p in proposals)
    assert not proposals[0].bboxes.requires_grad and not proposals[0].scores.requires_grad
    assert (proposals[1].bboxes[:, 2] <= 50).all() and (proposals[1].bboxes[:, 3] <= 40).all()


# ----------------------------------------------------------------------------- proposals

def test_predict_sorted_bounded_and_capped():
    head = _head()
    with torch.no_grad():                                 # spread the predictions
        head.rpn_reg.weight.normal_(std=0.3)
        head.rpn_cls.weight.normal_(std=0.3)
    samples = [_sample([]), _sample([], img_shape=(48, 56))]
    head.test_cfg = dict(TEST_CFG, max_per_img=30, nms_pre=100)
    results = head.predict(_feats(), samples)
    for res, (h, w) in zip(results, [(64, 64), (48, 56)]):
        assert 0 < len(res) <= 30
        assert set(res.keys()) >= {'bboxes', 'scores', 'labels'}
        assert (res.scores[:-1] >= res.scores[1:]).all()
        b = res.bboxes
        assert (b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((b[:, 2:] - b[:, :2]) > 0).all()
        assert (res.scores >= 0).all() and (res.scores <= 1).all()
    rescaled = head.predict(_feats(), samples, rescale=True)
    torch.testing.assert_close(rescaled[1].bboxes, results[1].bboxes / 2)


def test_predict_nms_is_per_level_and_min_size_filters():
    head = _head()
    cfg = dict(TEST_CFG, nms_pre=-1, max_per_img=10 ** 6)
    res = head.predict_by_feat(*head(_feats(batch=1)), [dict(img_shape=(64, 64))], cfg=cfg)[0]
    across = head.predict_by_feat(*head(_feats(batch=1)), [dict(img_shape=(64, 64))],
                                  cfg=dict(cfg, nms_across_levels=True))[0]
    assert len(across) < len(res)
    iou = box_iou(across.bboxes, across.bboxes).fill_diagonal_(0)
    assert (iou <= 0.7 + 1e-6).all()
    big = head.predict_by_feat(*head(_feats(batch=1)), [dict(img_shape=(64, 64))],
                               cfg=dict(cfg, min_bbox_size=40))[0]
    wh = big.bboxes[:, 2:] - big.bboxes[:, :2]
    assert len(big) > 0 and (wh > 40).all()


@pytest.mark.parity
def test_proposals_match_torchvision_rpn():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchors
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import RegionProposalNetwork
    from torchvision.models.detection.rpn import RPNHead as TVHead

    head = RPNHead(8, 8, anchor_generator=dict(type='AnchorGenerator', scales=[8],
                                               ratios=[0.5, 1.0, 2.0], strides=STRIDES,
                                               round_base_anchors=True))
    with torch.no_grad():
        for conv in (head.rpn_conv, head.rpn_cls, head.rpn_reg):
            conv.weight.normal_(std=0.2)
            conv.bias.normal_(std=0.2)
    tv_head = TVHead(8, 3)
    tv_head.conv[0][0].load_state_dict(head.rpn_conv.state_dict())
    tv_head.cls_logits.load_state_dict(head.rpn_cls.state_dict())
    tv_head.bbox_pred.load_state_dict(head.rpn_reg.state_dict())
    anchors = TVAnchors(tuple((8 * s,) for s in STRIDES), ((0.5, 1.0, 2.0),) * 5)
    rpn = RegionProposalNetwork(anchors, tv_head, 0.7, 0.3, 256, 0.5,
                                pre_nms_top_n=dict(training=2000, testing=150),
                                post_nms_top_n=dict(training=2000, testing=40),
                                nms_thresh=0.7).eval()
    feats = _feats(seed=3)
    shapes = [(64, 64), (50, 60)]
    with torch.no_grad():
        tv_boxes, _ = rpn(ImageList(torch.zeros(2, 3, 64, 64), shapes),
                          OrderedDict((str(i), f) for i, f in enumerate(feats)))
        _, tv_scores = rpn.filter_proposals(*_tv_raw(rpn, feats, shapes))
    cfg = dict(nms_pre=150, max_per_img=40, nms=dict(iou_threshold=0.7), min_bbox_size=1e-3,
               score_thr=0.0, filter_small_boxes_mode='torchvision')
    ours = head.predict_by_feat(*head(feats), [dict(img_shape=s) for s in shapes], cfg=cfg)
    for mine, boxes, scores in zip(ours, tv_boxes, tv_scores):
        assert len(mine) == len(boxes) == 40
        torch.testing.assert_close(mine.bboxes, boxes, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(mine.scores, scores)


def _tv_raw(rpn, feats, shapes):
    """torchvision RPN internals up to filter_proposals' inputs (to read its scores too)."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(ImageList(torch.zeros(2, 3, 64, 64), shapes), feats)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(2, -1, 4)
    return proposals, objectness, shapes, per_level


def test_num_convs_and_init():
    head = RPNHead(8, 16, num_convs=2)
    assert 'rpn_conv.1.conv.weight' in dict(head.named_parameters())
    assert head.rpn_cls.bias.abs().sum() == 0 and head.rpn_cls.weight.std() < 0.05
    cls_scores, _ = head(_feats())
    assert cls_scores[0].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError):
        RPNHead(8, 8, train_cfg=dict(TRAIN_CFG, sampler=dict(type='RandomSampler', num=256,
                                                                 pos_fraction=0.5)))
