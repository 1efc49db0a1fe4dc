"""FCOS (Tian et al., arXiv 1904.01355): anchor-free per-location classification, box distances
and centerness. The head of a one-stage detector (``FCOS``) and the proposal generator of
CenterMask (``GeneralizedRCNN.proposal_generator``). Parameter names follow MMDetection.

Everything but the layers is a pure function: location grid, target assignment, centerness
targets, box decoding and per-image post-processing.
"""
import math

import torch
import torch.distributed as dist
from mmengine.structures import InstanceData
from torch import nn
from torchvision.ops import batched_nms

from cascade_seg.registry import MODELS

from ..layers import ConvModule

INF = 1e8
# Levels P3..P7 take the objects whose largest distance max(l, t, r, b) lies in these ranges.
REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))
# FCOS / CenterMask inference. MMDetection instead ranks the nms_pre candidates of a level by the
# class probability alone and reports cls x centerness without the root:
# ``topk_by='cls', sqrt_score=False`` (configs/centermask/fcos_r50-caffe_fpn_gn-head_mmdet.py).
DEFAULT_TEST_CFG = dict(score_thr=0.05, nms_pre=1000, nms=dict(type='nms', iou_threshold=0.6),
                        max_per_img=100, min_bbox_size=0, topk_by='cls_x_centerness',
                        sqrt_score=True)


# ----------------------------------------------------------------------------- pure tensor logic

def level_points(featmap_sizes, strides, dtype=torch.float32, device=None):
    """Per level, the image position ``(x, y) = ((j + 0.5) s, (i + 0.5) s)`` of every output
    cell ``(i, j)``, row-major: a ``(H * W, 2)`` tensor per level."""
    points = []
    for (h, w), s in zip(featmap_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing='ij')
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return points


def distances_to_boxes(points, ltrb, max_shape=None):
    """``(x - l, y - t, x + r, y + b)``; clipped to ``max_shape = (h, w)`` when given."""
    x1 = points[:, 0] - ltrb[:, 0]
    y1 = points[:, 1] - ltrb[:, 1]
    x2 = points[:, 0] + ltrb[:, 2]
    y2 = points[:, 1] + ltrb[:, 3]
    if max_shape is not None:
        h, w = max_shape[:2]
        x1, x2 = x1.clamp(min=0, max=w), x2.clamp(min=0, max=w)
        y1, y2 = y1.clamp(min=0, max=h), y2.clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def fcos_targets(points, num_per_level, strides, regress_ranges, gt_bboxes, gt_labels,
                 num_classes, center_sampling=True, radius=1.5):
    """FCOS's assignment of one image's locations to its GT boxes.

    A location is a candidate for a box when it lies inside the box (with ``center_sampling``:
    inside the square of half-side ``radius * stride`` around the box centre, cut to the box)
    and the largest of its distances to the box sides lies in its level's regress range (both
    ends included). Of several candidate boxes it takes the one of smallest area.

    Args:
        points: ``(N, 2)`` locations of all levels, level after level.
        num_per_level: locations per level; ``strides`` and ``regress_ranges`` one per level.
        gt_bboxes: ``(G, 4)`` xyxy; gt_labels: ``(G,)``.
    Returns:
        ``labels (N,)`` (``num_classes`` = background), ``ltrb (N, 4)`` distances to the
        assigned box (in pixels; meaningless for background) and ``gt_inds (N,)`` (-1:
        background).
    """
    n, g = points.size(0), gt_bboxes.size(0)
    if g == 0:
        return (gt_labels.new_full((n, ), num_classes), points.new_zeros((n, 4)),
                torch.full((n, ), -1, dtype=torch.long, device=points.device))
    level_of = torch.repeat_interleave(torch.arange(len(num_per_level), device=points.device),
                                       torch.as_tensor(num_per_level, device=points.device))
    ranges = points.new_tensor(regress_ranges)[level_of]                  # (N, 2)
    boxes = gt_bboxes.to(points)[None].expand(n, g, 4)
    xs, ys = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([xs - boxes[..., 0], ys - boxes[..., 1],
                        boxes[..., 2] - xs, boxes[..., 3] - ys], dim=-1)  # (N, G, 4)
    if center_sampling:
        half = (points.new_tensor(strides)[level_of] * radius)[:, None]   # (N, 1)
        cx = (boxes[..., 0] + boxes[..., 2]) / 2
        cy = (boxes[..., 1] + boxes[..., 3]) / 2
        x1 = torch.maximum(cx - half, boxes[..., 0])
        y1 = torch.maximum(cy - half, boxes[..., 1])
        x2 = torch.minimum(cx + half, boxes[..., 2])
        y2 = torch.minimum(cy + half, boxes[..., 3])
        inside = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], dim=-1).min(-1).values > 0
    else:
        inside = ltrb.min(-1).values > 0
    reach = ltrb.max(-1).values
    in_range = (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
    areas = ((gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])).to(points)
    areas = areas[None].repeat(n, 1)
    areas[~(inside & in_range)] = INF
    min_area, gt_inds = areas.min(dim=1)
    labels = gt_labels[gt_inds].clone()
    background = min_area == INF
    labels[background] = num_classes
    gt_inds = torch.where(background, torch.full_like(gt_inds, -1), gt_inds)
    return labels, ltrb[torch.arange(n, device=points.device), gt_inds.clamp(min=0)], gt_inds


def centerness_targets(ltrb):
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``(P, 4)`` distances."""
    if ltrb.numel() == 0:
        return ltrb.new_zeros((0, ))
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt(lr.min(-1).values / lr.max(-1).values *
                      tb.min(-1).values / tb.max(-1).values)


def fcos_detections(cls_scores, bbox_preds, centernesses, points, img_shape, cfg,
                    scale_factor=None):
    """One image's detections from its per-level outputs ``(C, H, W)``, ``(4, H, W)`` (pixel
    distances), ``(1, H, W)`` and locations ``(H * W, 2)``.

    Per level: the (location, class) pairs whose class probability exceeds ``score_thr``, the
    ``nms_pre`` best of them by ``topk_by`` (``'cls_x_centerness'``: FCOS; ``'cls'``:
    MMDetection); score ``cls x centerness`` (its square root with ``sqrt_score``); boxes
    clipped to ``img_shape`` (then divided by ``scale_factor = (w, h)`` when given). Then boxes
    no wider or taller than ``min_bbox_size`` are dropped, class-wise NMS over all levels, the
    ``max_per_img`` best. Returns ``(bboxes (n, 4), scores (n,), labels (n,))``.
    """
    cfg = dict(DEFAULT_TEST_CFG, **(cfg or {}))
    if cfg['topk_by'] not in ('cls', 'cls_x_centerness'):
        raise ValueError(f"topk_by must be 'cls' or 'cls_x_centerness', got {cfg['topk_by']!r}")
    nms_pre = cfg.get('nms_pre') or -1
    boxes, scores, labels = [], [], []
    for cls, dist_, ctr, pts in zip(cls_scores, bbox_preds, centernesses, points):
        num_classes = cls.size(0)
        prob = cls.permute(1, 2, 0).reshape(-1, num_classes).float().sigmoid()
        ctr = ctr.permute(1, 2, 0).reshape(-1).float().sigmoid()
        dist_ = dist_.permute(1, 2, 0).reshape(-1, 4).float()
        cand = torch.nonzero(prob > cfg['score_thr'])                  # (K, 2): loc, class
        loc, label = cand[:, 0], cand[:, 1]
        p = prob[loc, label]
        key = p if cfg['topk_by'] == 'cls' else p * ctr[loc]
        order = key.sort(descending=True).indices
        if nms_pre > 0:
            order = order[:nms_pre]
        loc, label = loc[order], label[order]
        boxes.append(distances_to_boxes(pts[loc], dist_[loc], img_shape))
        scores.append(p[order] * ctr[loc])
        labels.append(label)
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    if scale_factor is not None:
        boxes = boxes / boxes.new_tensor(scale_factor).repeat(2)
    min_size = cfg.get('min_bbox_size', -1)
    if min_size is not None and min_size >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > min_size).all(dim=1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    nms = cfg.get('nms') or {}
    keep = batched_nms(boxes, scores, labels, nms.get('iou_threshold', nms.get('iou_thr', 0.6)))
    if cfg.get('max_per_img') is not None and cfg['max_per_img'] > 0:
        keep = keep[:cfg['max_per_img']]
    scores = scores[keep].sqrt() if cfg.get('sqrt_score') else scores[keep]
    return boxes[keep], scores, labels[keep]


def reduce_mean(t):
    """Mean of ``t`` over the processes of a distributed run (``t`` itself otherwise)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t.div_(dist.get_world_size()))
    return t


# ----------------------------------------------------------------------------- module

class Scale(nn.Module):
    """A learnable scalar factor (one per FPN level), MMCV's ``Scale``."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


@MODELS.register_module()
class FCOSHead(nn.Module):
    """Classification and regression towers of ``stacked_convs`` x (conv3x3, GN, ReLU) shared by
    all levels; ``conv_cls`` (C sigmoid logits), ``conv_reg`` (l, t, r, b) and
    ``conv_centerness`` (on the regression tower with ``centerness_on_reg``); a learnable
    ``scales.{i}`` per level. Box distances are ``ReLU(scale x) * stride`` with
    ``norm_on_bbox`` (else ``exp(scale x)``), in pixels at training and test time alike.

    Losses: ``loss_cls`` (focal, over the number of positives), ``loss_bbox`` (a box loss such
    as GIoU on decoded boxes, weighted by the centerness targets and averaged over their sum),
    ``loss_centerness`` (BCE over the number of positives).

    ``test_cfg`` (or the ``cfg``/``proposal_cfg`` arguments): see :func:`fcos_detections` and
    ``DEFAULT_TEST_CFG``. As a proposal generator it gets ``test_cfg.rpn`` of the detector
    (test time) and ``train_cfg.rpn_proposal`` (the proposals the RoI head trains on).
    """
    predicts_classes = True   # its labels are the detector's: num_classes is the dataset's

    def __init__(self, num_classes=80, in_channels=256, feat_channels=256, stacked_convs=4,
                 strides=(8, 16, 32, 64, 128), regress_ranges=REGRESS_RANGES,
                 center_sampling=True, center_sample_radius=1.5, norm_on_bbox=True,
                 centerness_on_reg=True, conv_bias=True, dcn_on_last_conv=False, conv_cfg=None,
                 norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
                 loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                               loss_weight=1.0),
                 loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
                 loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True,
                                      loss_weight=1.0),
                 prior_prob=0.01, train_cfg=None, test_cfg=None, init_cfg=None):
        super().__init__()
        if dcn_on_last_conv:
            raise NotImplementedError('dcn_on_last_conv needs deformable convolutions (mmcv ops)')
        if len(regress_ranges) != len(strides):
            raise ValueError(f'{len(regress_ranges)} regress_ranges for {len(strides)} levels')
        self.num_classes = num_classes
        self.in_channels, self.feat_channels = in_channels, feat_channels
        self.strides = list(strides)
        self.regress_ranges = [tuple(float(v) for v in r) for r in regress_ranges]
        self.center_sampling, self.center_sample_radius = center_sampling, center_sample_radius
        self.norm_on_bbox, self.centerness_on_reg = norm_on_bbox, centerness_on_reg
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_centerness = MODELS.build(loss_centerness)

        def tower():
            return nn.ModuleList(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                           bias=conv_bias, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
                for i in range(stacked_convs))
        self.cls_convs, self.reg_convs = tower(), tower()
        channels = feat_channels if stacked_convs else in_channels
        self.conv_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.prior_prob = prior_prob
        self.init_weights()

    def init_weights(self):
        # N(0, 0.01) convs, zero biases, the classifier's bias at the prior probability
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - self.prior_prob) / self.prior_prob))

    @classmethod
    def declared_num_classes(cls, cfg):
        """``[('num_classes', n)]`` when the config sets it (see engine/num_classes.py)."""
        return [('num_classes', cfg['num_classes'])] if cfg.get('num_classes') is not None else []

    def class_heads(self):
        return [('conv_cls', self)]

    # ------------------------------------------------------------------ forward
    def forward_single(self, x, scale, stride):
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        cls_score = self.conv_cls(cls_feat)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)
        bbox_pred = scale(self.conv_reg(reg_feat)).float()
        if self.norm_on_bbox:
            bbox_pred = bbox_pred.clamp(min=0) * stride
        else:
            bbox_pred = bbox_pred.exp()
        return cls_score, bbox_pred, centerness

    def forward(self, feats):
        """Per level ``(B, C, H, W)`` class logits, ``(B, 4, H, W)`` pixel distances (l, t, r,
        b) and ``(B, 1, H, W)`` centerness logits, as three lists."""
        if len(feats) != len(self.strides):
            raise ValueError(f'FCOSHead has {len(self.strides)} strides for {len(feats)} levels')
        outs = [self.forward_single(x, scale, s)
                for x, scale, s in zip(feats, self.scales, self.strides)]
        return tuple([o[k] for o in outs] for k in range(3))

    def _points(self, cls_scores):
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        return level_points(sizes, self.strides, torch.float32, cls_scores[0].device)

    # ------------------------------------------------------------------ training
    def get_targets(self, points, batch_gt_instances):
        """Per image ``(labels (N,), ltrb (N, 4))`` over all levels' locations."""
        num_per_level = [p.size(0) for p in points]
        flat = torch.cat(points)
        out = []
        for gt in batch_gt_instances:
            labels, ltrb, _ = fcos_targets(
                flat, num_per_level, self.strides, self.regress_ranges,
                gt.bboxes.to(flat).reshape(-1, 4), gt.labels.to(flat.device), self.num_classes,
                self.center_sampling, self.center_sample_radius)
            out.append((labels, ltrb))
        return out

    def loss_by_feat(self, cls_scores, bbox_preds, centernesses, batch_gt_instances,
                     batch_img_metas=None, batch_gt_instances_ignore=None):
        points = self._points(cls_scores)
        targets = self.get_targets(points, batch_gt_instances)
        b = cls_scores[0].size(0)
        flat_cls = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
                              for c in cls_scores], 1).reshape(-1, self.num_classes)
        flat_reg = torch.cat([r.permute(0, 2, 3, 1).reshape(b, -1, 4) for r in bbox_preds],
                             1).reshape(-1, 4)
        flat_ctr = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1) for c in centernesses],
                             1).reshape(-1)
        labels = torch.cat([t[0] for t in targets])
        ltrb = torch.cat([t[1] for t in targets])
        all_points = torch.cat(points).repeat(b, 1)

        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).flatten()
        num_pos = max(reduce_mean(flat_cls.new_tensor(float(pos.numel()))).item(), 1.0)
        loss_cls = self.loss_cls(flat_cls, labels, avg_factor=num_pos)
        pos_reg, pos_ctr = flat_reg[pos], flat_ctr[pos]
        ctr_targets = centerness_targets(ltrb[pos])
        if pos.numel() > 0:
            denorm = max(reduce_mean(ctr_targets.sum().detach()).item(), 1e-6)
            pos_points = all_points[pos]
            loss_bbox = self.loss_bbox(distances_to_boxes(pos_points, pos_reg),
                                       distances_to_boxes(pos_points, ltrb[pos]),
                                       weight=ctr_targets, avg_factor=denorm)
            loss_centerness = self.loss_centerness(pos_ctr, ctr_targets, avg_factor=num_pos)
        else:  # graph-connected zeros
            loss_bbox, loss_centerness = pos_reg.sum(), pos_ctr.sum()
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_centerness=loss_centerness)

    @staticmethod
    def _unpack(batch_data_samples):
        return [s.gt_instances for s in batch_data_samples], [s.metainfo for s in
                                                               batch_data_samples]

    def loss(self, feats, batch_data_samples):
        gts, metas = self._unpack(batch_data_samples)
        return self.loss_by_feat(*self(feats), gts, metas)

    def loss_and_predict(self, feats, batch_data_samples, proposal_cfg=None):
        """Losses and detached detections (``InstanceData(bboxes, scores, labels)`` in the
        network input frame, made with ``proposal_cfg``) for the RoI head to train on."""
        gts, metas = self._unpack(batch_data_samples)
        outs = self(feats)
        losses = self.loss_by_feat(*outs, gts, metas)
        proposals = self.predict_by_feat(*[[t.detach() for t in o] for o in outs], metas,
                                         cfg=proposal_cfg)
        return losses, proposals

    # ------------------------------------------------------------------ inference
    def predict(self, feats, batch_data_samples, rescale=False, cfg=None):
        return self.predict_by_feat(*self(feats), [s.metainfo for s in batch_data_samples],
                                    cfg=cfg, rescale=rescale)

    @torch.no_grad()
    def predict_by_feat(self, cls_scores, bbox_preds, centernesses, batch_img_metas, cfg=None,
                        rescale=False):
        """Per image ``InstanceData(bboxes, scores, labels)`` sorted by score, in the network
        input frame (``ori_shape`` frame with ``rescale``)."""
        cfg = cfg if cfg is not None else self.test_cfg
        points = self._points(cls_scores)
        results = []
        for i, meta in enumerate(batch_img_metas):
            boxes, scores, labels = fcos_detections(
                [c[i] for c in cls_scores], [b[i] for b in bbox_preds],
                [c[i] for c in centernesses], points, meta['img_shape'], cfg,
                meta['scale_factor'] if rescale else None)
            results.append(InstanceData(bboxes=boxes, scores=scores, labels=labels))
        return results
