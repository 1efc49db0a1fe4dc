"""Box heads (shared convs/fcs -> classifier + box regressor) and the pure box logic around them.

Classifiers output ``num_classes + 1`` logits with background LAST; regressors output deltas
for one box (class-agnostic) or one box per foreground class. Parameter names follow
MMDetection (``shared_convs.{i}.conv``, ``shared_fcs.{i}``, ``fc_cls``, ``fc_reg``).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, nms

from cascade_seg.registry import MODELS, TASK_UTILS

from cascade_seg.engine.precision import float32_call

from ..fast_linear import Linear
from ..layers import ConvModule
from ..losses import accuracy
from ..tracing import is_tracing
from .roi_align import map_threads


def bbox_targets(sampling_results, num_classes, coder, pos_weight=-1.0, reg_decoded_bbox=False):
    """Classification and regression targets for the sampled RoIs of a batch.

    RoIs are ordered image by image, positives before negatives (as ``_sample_rois`` builds
    them). Returns ``labels (N,)`` (background = ``num_classes``), ``label_weights (N,)``,
    ``bbox_targets (N, 4)`` (encoded deltas, or absolute boxes if ``reg_decoded_bbox``) and
    ``bbox_weights (N, 4)``, zero for negatives.
    """
    is_pos = torch.cat([torch.arange(len(r.pos_priors) + len(r.neg_priors),
                                     device=r.pos_priors.device) < len(r.pos_priors)
                        for r in sampling_results])
    pos_priors = torch.cat([r.pos_priors for r in sampling_results])
    pos_gt_bboxes = torch.cat([r.pos_gt_bboxes for r in sampling_results]).to(pos_priors)
    pos_gt_labels = torch.cat([r.pos_gt_labels for r in sampling_results]).long()
    n = is_pos.numel()
    labels = pos_priors.new_full((n,), num_classes, dtype=torch.long)
    label_weights = pos_priors.new_ones(n)
    targets = pos_priors.new_zeros(n, 4)
    weights = pos_priors.new_zeros(n, 4)
    if pos_priors.numel():
        labels[is_pos] = pos_gt_labels
        label_weights[is_pos] = pos_weight if pos_weight > 0 else 1.0
        targets[is_pos] = pos_gt_bboxes if reg_decoded_bbox else \
            coder.encode(pos_priors, pos_gt_bboxes).to(targets)
        weights[is_pos] = 1.0
    return labels, label_weights, targets, weights


def select_class_deltas(bbox_pred, labels):
    """(N, 4) deltas of each RoI's class from class-specific ``(N, 4 * C)`` (agnostic: as is)."""
    if bbox_pred.size(1) == 4:
        return bbox_pred
    rows = torch.arange(len(labels), device=labels.device)
    return bbox_pred.view(bbox_pred.size(0), bbox_pred.size(1) // 4, 4)[rows, labels]


def regress_by_class(rois, labels, bbox_pred, coder, img_shape):
    """Decode each RoI with the deltas of its class, clipped to ``img_shape``.

    ``rois`` is ``(N, 4)`` boxes or ``(N, 5)`` RoIs (the batch index is kept).
    """
    if rois.size(1) == 5:
        boxes = regress_by_class(rois[:, 1:], labels, bbox_pred, coder, img_shape)
        return torch.cat([rois[:, :1], boxes], dim=1)
    deltas = select_class_deltas(bbox_pred, labels)
    return coder.decode(rois, deltas, max_shape=img_shape)


def refine_boxes(rois, labels, cls_score, bbox_pred, pos_is_gt, coder, img_shapes, num_classes):
    """Training-time refinement: the next cascade stage's proposals, per image.

    Positives regress with their GT class; negatives (``labels == num_classes``) with the
    classifier's best foreground class. RoIs that were GT boxes added as proposals are dropped
    (each image's sampled RoIs start with its positives, so ``pos_is_gt[i]`` is a prefix mask).
    """
    labels = torch.where(labels == num_classes, cls_score[:, :num_classes].argmax(1), labels)
    refined = []
    for i, (is_gt, shape) in enumerate(zip(pos_is_gt, img_shapes)):
        inds = torch.nonzero(rois[:, 0] == i, as_tuple=True)[0]
        boxes = regress_by_class(rois[inds, 1:], labels[inds], bbox_pred[inds], coder, shape)
        keep = torch.ones(len(inds), dtype=torch.bool, device=rois.device)
        keep[:len(is_gt)] = ~is_gt.bool()
        refined.append(boxes[keep].detach())
    return refined


def class_wise_nms(boxes, scores, labels, iou_threshold):
    """``torchvision.ops.batched_nms`` with the same result, faster for many classes on CPU.

    For large inputs torchvision runs one NMS per class but finds each class's members with a
    full-length comparison and ``nonzero`` (80 passes over 80k entries for COCO at score_thr 0).
    Here one stable sort groups the classes; each class's members keep their original order, so
    every per-class NMS, and the final score sort, sees exactly what torchvision's would. The
    per-class NMS run on the intra-op threads (torchvision's CPU NMS is serial and releases the
    GIL; each class's result is the same whichever thread computes it).
    """
    if boxes.numel() <= 4000 or boxes.device.type != 'cpu' or is_tracing():
        return batched_nms(boxes, scores, labels, iou_threshold)  # its single-NMS path
    order = torch.sort(labels, stable=True).indices
    groups = [idx for idx in order.split(torch.bincount(labels).tolist()) if idx.numel()]
    classes = [(boxes[idx], scores[idx]) for idx in groups]
    kept = map_threads(lambda c: nms(c[0], c[1], iou_threshold), classes)
    keep = torch.cat([idx[k] for idx, k in zip(groups, kept)]).sort().values  # as torchvision:
    return keep[scores[keep].sort(descending=True)[1]]  # ascending indices, then by score


def top_class_wise_nms(boxes, scores, labels, iou_threshold, k, first=None):
    """``class_wise_nms(boxes, scores, labels, iou_threshold)[:k]``, computed on the best-scored
    candidates only.

    In greedy per-class NMS a box is kept or suppressed by the same-class boxes that score
    above it, never by lower ones. So NMS on the ``n`` best-scored candidates keeps exactly the
    boxes among them that NMS on all would keep, and once ``k`` of them are kept they are the
    full result's first ``k`` (every other candidate scores lower). ``n`` starts at ``first``
    (default ``max(10 k, 1000)``), takes in every candidate tied with the n-th score, and grows
    4x until ``k`` are kept or it covers all. The candidates keep their original order, so ties
    are broken as the full call breaks them. With score_thr 0 (1000 RoIs x 80 classes) this is
    NMS on ~1000 boxes instead of 80,000.
    """
    total = scores.numel()
    n = first or max(10 * k, 1000)
    if n >= total or is_tracing():
        return class_wise_nms(boxes, scores, labels, iou_threshold)[:k]
    ranked = scores.sort(descending=True).values
    while n < total:
        idx = torch.nonzero(scores >= ranked[n - 1], as_tuple=True)[0]   # ascending, ties in
        keep = class_wise_nms(boxes[idx], scores[idx], labels[idx], iou_threshold)
        if keep.numel() >= k:
            return idx[keep[:k]]
        n *= 4
    return class_wise_nms(boxes, scores, labels, iou_threshold)[:k]


def postprocess_detections(boxes, scores, score_thr=0.05, nms_iou=0.5, max_per_img=100,
                           min_bbox_size=0):
    """Per-class NMS with MMDetection's ``multiclass_nms`` semantics.

    ``boxes``: ``(N, 4 * C)`` per-class or ``(N, 4)`` shared; ``scores``: ``(N, C + 1)``
    probabilities, background last (dropped). Keeps ``score > score_thr``, runs NMS per class,
    keeps the ``max_per_img`` best (all if <= 0). Returns ``boxes (K, 4), scores (K,), labels (K,)``
    sorted by decreasing score.
    """
    n, num_classes = scores.size(0), scores.size(1) - 1
    if boxes.size(1) > 4:
        boxes = boxes.view(n, num_classes, 4)
    else:
        boxes = boxes[:, None].expand(n, num_classes, 4)
    labels = torch.arange(num_classes, device=scores.device).expand(n, num_classes)
    boxes, scores, labels = boxes.reshape(-1, 4), scores[:, :-1].reshape(-1), labels.reshape(-1)
    valid = scores > score_thr
    if min_bbox_size > 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid &= (wh[:, 0] > min_bbox_size) & (wh[:, 1] > min_bbox_size)
    inds = torch.nonzero(valid, as_tuple=True)[0]
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    if boxes.numel() == 0:
        return boxes, scores, labels
    if max_per_img > 0:
        keep = top_class_wise_nms(boxes, scores, labels, nms_iou, max_per_img)
    else:
        keep = class_wise_nms(boxes, scores, labels, nms_iou)
    return boxes[keep], scores[keep], labels[keep]


@MODELS.register_module()
class ConvFCBBoxHead(nn.Module):
    """Shared 3x3 convs, then shared fcs, then ``fc_cls`` and ``fc_reg``.

    ``forward(x (K, C, S, S)) -> (cls_score (K, num_classes + 1), bbox_pred (K, 4 or 4 * C))``.
    """

    def __init__(self, num_shared_convs=0, num_shared_fcs=2, in_channels=256, roi_feat_size=7,
                 fc_out_channels=1024, conv_out_channels=256, num_classes=80,
                 reg_class_agnostic=False, reg_decoded_bbox=False,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
                                 target_stds=[0.1, 0.1, 0.2, 0.2]),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0),
                 conv_cfg=None, norm_cfg=None, init_cfg=None):
        super().__init__()
        if num_shared_convs + num_shared_fcs == 0:
            raise ValueError('a box head needs at least one shared conv or fc')
        self.num_classes = num_classes
        self.reg_class_agnostic = reg_class_agnostic
        self.reg_decoded_bbox = reg_decoded_bbox
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)

        self.shared_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_shared_convs))
        dim = (conv_out_channels if num_shared_convs else in_channels) * roi_feat_size ** 2
        self.shared_fcs = nn.ModuleList()
        for _ in range(num_shared_fcs):
            self.shared_fcs.append(Linear(dim, fc_out_channels))
            dim = fc_out_channels
        self.fc_cls = nn.Linear(dim, num_classes + 1)
        self.fc_reg = nn.Linear(dim, 4 if reg_class_agnostic else 4 * num_classes)
        self._init_weights()

    def _init_weights(self):
        # MMDetection's defaults: Xavier-uniform fcs, N(0, 0.01) classifier, N(0, 0.001) regressor.
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        for fc, std in ((self.fc_cls, 0.01), (self.fc_reg, 0.001)):
            nn.init.normal_(fc.weight, std=std)
            nn.init.zeros_(fc.bias)

    def forward(self, x):
        for conv in self.shared_convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x), inplace=True)  # a linear's backward does not need its output
        return self.predict_logits(x)

    def predict_logits(self, x):
        """``(fc_cls(x), fc_reg(x))``, in float32 under autocast: the scores rank the
        detections and the deltas become boxes (two small layers, cheap in float32)."""
        return float32_call(lambda h: (self.fc_cls(h), self.fc_reg(h)), x)

    def loss(self, cls_score, bbox_pred, rois, labels, label_weights, targets, weights):
        """``dict(loss_cls, acc, loss_bbox)``; box loss on positives, averaged over all RoIs."""
        avg_factor = max(float((label_weights > 0).sum()), 1.0)
        if cls_score.numel():
            loss_cls = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg_factor)
        else:
            loss_cls = cls_score.sum()  # keeps the graph connected when a batch has no RoIs
        pos = labels < self.num_classes
        if pos.any():
            pred = bbox_pred
            if self.reg_decoded_bbox:
                pred = self.bbox_coder.decode(rois[:, 1:], pred)
            pos_pred = select_class_deltas(pred[pos], labels[pos])
            loss_bbox = self.loss_bbox(pos_pred, targets[pos], weights[pos],
                                       avg_factor=targets.size(0))
        else:
            loss_bbox = bbox_pred[pos].sum()
        return dict(loss_cls=loss_cls, acc=accuracy(cls_score, labels), loss_bbox=loss_bbox)


@MODELS.register_module()
class Shared2FCBBoxHead(ConvFCBBoxHead):
    """Mask R-CNN / Cascade R-CNN box head: two shared 1024-d fcs."""

    def __init__(self, fc_out_channels=1024, **kwargs):
        kwargs.update(num_shared_convs=0, num_shared_fcs=2)
        super().__init__(fc_out_channels=fc_out_channels, **kwargs)


@MODELS.register_module()
class Shared4Conv1FCBBoxHead(ConvFCBBoxHead):
    """Four shared 3x3 convs (usually with GN) and one fc."""

    def __init__(self, fc_out_channels=1024, **kwargs):
        kwargs.update(num_shared_convs=4, num_shared_fcs=1)
        super().__init__(fc_out_channels=fc_out_channels, **kwargs)
