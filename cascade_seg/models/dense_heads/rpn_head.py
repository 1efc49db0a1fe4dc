"""Region Proposal Network head (Faster R-CNN), MMDetection- and torchvision-reproducible."""
import math

import torch
from mmengine.structures import InstanceData
from torch import nn
from torchvision.ops import batched_nms

from cascade_seg.registry import MODELS, TASK_UTILS

from cascade_seg.engine.precision import float32_call

from ..fused_conv import conv2d
from ..layers import ConvModule

DEFAULT_TEST_CFG = dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                        min_bbox_size=0)


# ----------------------------------------------------------------------------- pure tensor logic

def flatten_level_outputs(cls_scores, bbox_preds):
    """Per-level ``(B, A, H, W)`` / ``(B, 4A, H, W)`` -> ``(B, N)`` logits and ``(B, N, 4)`` deltas.

    N runs over levels, then locations (row-major), then anchors: the anchor generator's order.
    """
    b = cls_scores[0].size(0)
    logits = torch.cat([s.permute(0, 2, 3, 1).reshape(b, -1) for s in cls_scores], dim=1)
    deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(b, -1, 4) for d in bbox_preds], dim=1)
    return logits.float(), deltas.float()  # post-processing and losses in float32


def anchor_valid_flags(featmap_sizes, num_anchors, strides, valid_shape, device=None):
    """Anchors whose location lies within ``valid_shape = (h, w)`` (e.g. one image's pad shape
    inside a larger batch), as MMDetection's ``AnchorGenerator.valid_flags``; ``(N,)`` bool."""
    flags = []
    for (h, w), a, (sw, sh) in zip(featmap_sizes, num_anchors, strides):
        vh, vw = min(math.ceil(valid_shape[0] / sh), h), min(math.ceil(valid_shape[1] / sw), w)
        ys = torch.arange(h, device=device) < vh
        xs = torch.arange(w, device=device) < vw
        flags.append((ys[:, None] & xs[None, :]).reshape(-1, 1).expand(-1, a).reshape(-1))
    return torch.cat(flags)


def anchors_inside(anchors, img_shape, allowed_border):
    """Anchors inside the image grown by ``allowed_border`` px (all when ``allowed_border < 0``)."""
    if allowed_border < 0:
        return torch.ones(anchors.size(0), dtype=torch.bool, device=anchors.device)
    h, w = img_shape[:2]
    return ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
            & (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border))


def topk_per_level(logits, num_per_level, k):
    """Indices ``(B, K)`` of the ``k`` highest logits of each level (all when ``k <= 0``)."""
    inds, offset = [], 0
    for n in num_per_level:
        level = logits[:, offset:offset + n]
        kk = n if k <= 0 else min(k, n)
        inds.append(level.topk(kk, dim=1, sorted=True).indices + offset)
        offset += n
    return torch.cat(inds, dim=1)


def first_k_per_group(order, groups, k):
    """Of the indices ``order`` (already sorted by score), keep the first ``k`` of each group."""
    if order.numel() == 0:
        return order
    g = groups[order]
    g_sorted, perm = torch.sort(g, stable=True)
    order = order[perm]
    # rank within group = position - start of the group's run
    starts = torch.searchsorted(g_sorted, g_sorted, right=False)
    rank = torch.arange(g_sorted.numel(), device=order.device) - starts
    return order[rank < k]


def filter_small_boxes(boxes, min_size, mode='mmdet'):
    """Keep mask: MMDetection ``w > min & h > min``; torchvision ``w >= min & h >= min``."""
    wh = boxes[:, 2:] - boxes[:, :2]
    if mode == 'mmdet':
        return (wh > min_size).all(dim=1)
    if mode == 'torchvision':
        return (wh >= min_size).all(dim=1)
    raise ValueError(f"filter_small_boxes_mode must be 'mmdet' or 'torchvision', got {mode!r}")


# ----------------------------------------------------------------------------- module

@MODELS.register_module()
class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 ``rpn_cls`` (A sigmoid logits) and ``rpn_reg`` (4A deltas).

    ``train_cfg``: ``assigner``, ``sampler``, ``allowed_border``, ``pos_weight`` (MMDetection's
    ``train_cfg.rpn``). Proposal cfg (``test_cfg`` or the ``proposal_cfg`` argument):
    ``nms_pre`` (top-k per level), ``max_per_img``, ``nms=dict(iou_threshold)``,
    ``min_bbox_size``, optional ``score_thr``, ``nms_across_levels=False`` and
    ``filter_small_boxes_mode='mmdet'|'torchvision'``. With
    ``dict(nms_pre=N, max_per_img=M, nms=dict(iou_threshold=0.7), min_bbox_size=1e-3,
    score_thr=0.0, filter_small_boxes_mode='torchvision')`` the proposals are those of
    torchvision's ``RegionProposalNetwork`` (given the same anchors and weights).
    """

    def __init__(self, in_channels, feat_channels=256, num_convs=1,
                 anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                                       strides=[4, 8, 16, 32, 64]),
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
                                 target_stds=[1.0] * 4),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                 loss_bbox=dict(type='L1Loss', loss_weight=1.0), train_cfg=None, test_cfg=None,
                 init_cfg=None, num_classes=1, reg_decoded_bbox=False):
        super().__init__()
        if num_classes != 1:
            raise ValueError('RPNHead is class-agnostic: num_classes must be 1')
        if reg_decoded_bbox:
            raise NotImplementedError('reg_decoded_bbox is not supported by RPNHead')
        if loss_cls is not None and not loss_cls.get('use_sigmoid', True):
            raise NotImplementedError('RPNHead supports only a sigmoid classifier')
        self.in_channels, self.feat_channels, self.num_convs = in_channels, feat_channels, num_convs
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        self.prior_generator = TASK_UTILS.build(anchor_generator)
        self.anchor_strides = [s if isinstance(s, (tuple, list)) else (s, s)
                               for s in anchor_generator['strides']]
        self.num_base_priors = self.prior_generator.num_base_priors[0]
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        if train_cfg is not None:
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])
            self.sampler = TASK_UTILS.build(train_cfg['sampler'])
            if getattr(self.sampler, 'add_gt_as_proposals', False):
                raise ValueError('RPN sampler must use add_gt_as_proposals=False')

        a = self.num_base_priors
        if num_convs > 1:
            self.rpn_conv = nn.Sequential(*[
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                           inplace=False) for i in range(num_convs)])
        else:
            self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, a, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, a * 4, 1)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def forward_single(self, x):
        x = conv2d(x, self.rpn_conv, relu=True) if self.num_convs == 1 else self.rpn_conv(x)
        # 1x1 predictors in float32 under autocast: bfloat16 objectness logits tie by the
        # hundreds, and which of them the top-k keeps would then be arbitrary
        return float32_call(lambda h: (self.rpn_cls(h), self.rpn_reg(h)), x)

    def forward(self, feats):
        """Per-level ``(B, A, H, W)`` objectness logits and ``(B, 4A, H, W)`` deltas."""
        outs = [self.forward_single(x) for x in feats]
        return [o[0] for o in outs], [o[1] for o in outs]

    def _anchors(self, cls_scores):
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        levels = self.prior_generator.grid_priors(sizes, device=cls_scores[0].device)
        return sizes, levels

    # ------------------------------------------------------------------ training
    def get_targets(self, anchors, featmap_sizes, batch_gt_instances, batch_img_metas,
                    batch_gt_instances_ignore=None):
        """Assign and sample anchors of every image.

        Returns ``(cls_img, cls_anchor, cls_target, cls_weight, pos_img, pos_anchor,
        bbox_targets, num_sampled)``: flat indices (image, anchor) of the sampled anchors with
        their 0/1 objectness targets and weights, the positives' indices and encoded targets.
        """
        cfg = self.train_cfg
        allowed_border = cfg.get('allowed_border', -1)
        pos_weight = cfg.get('pos_weight', -1)
        num_anchors = [self.num_base_priors] * len(featmap_sizes)
        cls_img, cls_anchor, cls_target, pos_img, pos_anchor, bbox_targets = [], [], [], [], [], []
        device = anchors.device
        for i, (gt, meta) in enumerate(zip(batch_gt_instances, batch_img_metas)):
            valid_shape = meta.get('pad_shape', meta.get('batch_input_shape', meta['img_shape']))
            valid = anchor_valid_flags(featmap_sizes, num_anchors, self.anchor_strides,
                                       valid_shape, device)
            valid &= anchors_inside(anchors, meta['img_shape'], allowed_border)
            valid_inds = torch.nonzero(valid, as_tuple=True)[0]
            priors = anchors[valid_inds]
            gt_bboxes = gt.bboxes.to(device=device, dtype=anchors.dtype).reshape(-1, 4)
            gt_labels = torch.zeros(gt_bboxes.size(0), dtype=torch.long, device=device)
            ignore = None
            if batch_gt_instances_ignore is not None and batch_gt_instances_ignore[i] is not None \
                    and 'bboxes' in batch_gt_instances_ignore[i]:
                ignore = batch_gt_instances_ignore[i].bboxes.to(device=device,
                                                               dtype=anchors.dtype).reshape(-1, 4)
            assign_result = self.assigner.assign(priors, gt_bboxes, gt_labels, ignore)
            sampling = self.sampler.sample(assign_result, priors, gt_bboxes, gt_labels)
            pos = valid_inds[sampling.pos_inds]
            neg = valid_inds[sampling.neg_inds]
            cls_anchor += [pos, neg]
            cls_img.append(torch.full((pos.numel() + neg.numel(),), i, dtype=torch.long,
                                      device=device))
            cls_target += [pos.new_ones(pos.numel()), pos.new_zeros(neg.numel())]
            pos_anchor.append(pos)
            pos_img.append(torch.full_like(pos, i))
            if pos.numel() > 0:
                bbox_targets.append(self.bbox_coder.encode(sampling.pos_priors,
                                                           sampling.pos_gt_bboxes))
            else:
                bbox_targets.append(anchors.new_zeros((0, 4)))
        cls_target = torch.cat(cls_target).float()
        cls_weight = torch.ones_like(cls_target)
        if pos_weight > 0:
            cls_weight[cls_target > 0] = pos_weight
        return (torch.cat(cls_img), torch.cat(cls_anchor), cls_target, cls_weight,
                torch.cat(pos_img), torch.cat(pos_anchor), torch.cat(bbox_targets).float(),
                cls_target.numel())

    def loss_by_feat(self, cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                     batch_gt_instances_ignore=None):
        """BCE on sampled anchors and box regression on positives, both averaged over the number
        of sampled anchors in the batch (MMDetection's ``avg_factor``)."""
        sizes, level_anchors = self._anchors(cls_scores)
        anchors = torch.cat(level_anchors)
        (cls_img, cls_anchor, cls_target, cls_weight, pos_img, pos_anchor, bbox_targets,
         num_sampled) = self.get_targets(anchors, sizes, batch_gt_instances, batch_img_metas,
                                         batch_gt_instances_ignore)
        logits, deltas = flatten_level_outputs(cls_scores, bbox_preds)
        # Integer counts: max(., 1) only matters when nothing was sampled (loss is 0 then).
        avg_factor = max(float(num_sampled), 1.0)
        loss_cls = self.loss_cls(logits[cls_img, cls_anchor].float(), cls_target, cls_weight,
                                 avg_factor=avg_factor)
        loss_bbox = self.loss_bbox(deltas[pos_img, pos_anchor].float(), bbox_targets,
                                   avg_factor=avg_factor)
        return dict(loss_rpn_cls=loss_cls, loss_rpn_bbox=loss_bbox)

    @staticmethod
    def _unpack(batch_data_samples):
        gts, metas, ignores = [], [], []
        for s in batch_data_samples:
            gts.append(s.gt_instances)
            metas.append(s.metainfo)
            ignores.append(s.ignored_instances if 'ignored_instances' in s else None)
        return gts, metas, ignores

    def loss(self, feats, batch_data_samples):
        gts, metas, ignores = self._unpack(batch_data_samples)
        return self.loss_by_feat(*self(feats), gts, metas, ignores)

    def loss_and_predict(self, feats, batch_data_samples, proposal_cfg=None):
        """Losses and detached proposals (``proposal_cfg``, e.g. MMDetection's ``rpn_proposal``)."""
        gts, metas, ignores = self._unpack(batch_data_samples)
        cls_scores, bbox_preds = self(feats)
        losses = self.loss_by_feat(cls_scores, bbox_preds, gts, metas, ignores)
        proposals = self.predict_by_feat([s.detach() for s in cls_scores],
                                         [b.detach() for b in bbox_preds], metas, cfg=proposal_cfg)
        return losses, proposals

    # ------------------------------------------------------------------ inference
    def predict(self, feats, batch_data_samples, rescale=False, cfg=None):
        metas = [s.metainfo for s in batch_data_samples]
        return self.predict_by_feat(*self(feats), metas, cfg=cfg, rescale=rescale)

    @torch.no_grad()
    def predict_by_feat(self, cls_scores, bbox_preds, batch_img_metas, cfg=None, rescale=False):
        """Proposals per image: ``InstanceData(bboxes (n, 4), scores (n,), labels zeros (n,))``,
        sorted by score, ``n <= max_per_img``, in the network-input frame (original image
        frame when ``rescale``)."""
        cfg = dict(cfg if cfg is not None else (self.test_cfg or DEFAULT_TEST_CFG))
        num_imgs, num_levels = cls_scores[0].size(0), len(cls_scores)
        _, level_anchors = self._anchors(cls_scores)
        num_per_level = [a.size(0) for a in level_anchors]
        anchors = torch.cat(level_anchors)
        level_ids = torch.cat([torch.full((n,), i, dtype=torch.long, device=anchors.device)
                               for i, n in enumerate(num_per_level)])
        logits, deltas = flatten_level_outputs(cls_scores, bbox_preds)

        # Top-k per level on logits (same order as on sigmoid scores), for all images at once.
        top = topk_per_level(logits, num_per_level, cfg.get('nms_pre') or -1)   # (B, K)
        k = top.size(1)
        scores = logits.gather(1, top).float().sigmoid().reshape(-1)
        boxes = self.bbox_coder.decode(anchors[top].reshape(-1, 4),
                                       deltas.gather(1, top[..., None].expand(-1, -1, 4))
                                       .reshape(-1, 4), max_shape=None).reshape(num_imgs, k, 4)
        if getattr(self.bbox_coder, 'clip_border', True):
            hw = boxes.new_tensor([m['img_shape'][:2] for m in batch_img_metas])   # (B, 2)
            upper = hw.flip(1).repeat(1, 2)[:, None, :]                            # w, h, w, h
            boxes = torch.minimum(boxes.clamp(min=0), upper)
        if rescale:
            sf = boxes.new_tensor([m['scale_factor'] for m in batch_img_metas])    # (B, 2) w, h
            boxes = boxes / sf.repeat(1, 2)[:, None, :]
        boxes = boxes.reshape(-1, 4)
        img_ids = torch.arange(num_imgs, device=boxes.device).repeat_interleave(k)
        lvl = level_ids[top].reshape(-1)

        mode = cfg.get('filter_small_boxes_mode', 'mmdet')
        keep = torch.ones_like(scores, dtype=torch.bool)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size is not None and min_size >= 0:
            keep &= filter_small_boxes(boxes, min_size, mode)
        score_thr = cfg.get('score_thr')
        if score_thr is not None:   # torchvision keeps scores equal to the threshold
            keep &= (scores >= score_thr) if mode == 'torchvision' else (scores > score_thr)
        kept = torch.nonzero(keep, as_tuple=True)[0]

        groups = img_ids if cfg.get('nms_across_levels', False) else img_ids * num_levels + lvl
        nms = cfg.get('nms') or {}
        iou_thr = nms.get('iou_threshold', nms.get('iou_thr', 0.7))
        order = kept[batched_nms(boxes[kept], scores[kept], groups[kept], iou_thr)]
        max_per_img = cfg.get('max_per_img', 1000)
        if max_per_img is not None and max_per_img > 0:
            order = first_k_per_group(order, img_ids, max_per_img)

        results = []
        for i in range(num_imgs):
            sel = order[img_ids[order] == i]       # still sorted by score
            results.append(InstanceData(bboxes=boxes[sel], scores=scores[sel],
                                        labels=torch.zeros_like(sel)))
        return results
