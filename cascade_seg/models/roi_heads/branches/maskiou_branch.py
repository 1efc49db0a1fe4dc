"""The mask-IoU branch (Mask Scoring R-CNN; CenterMask's mask scoring): learns the IoU of each
predicted mask with its ground truth and scores each mask by ``box score x predicted IoU``.

It runs after the mask branch and reads that branch's outputs from the stage's ``shared``
dict: ``mask_logits``, ``mask_targets`` and ``mask_labels`` at training, ``mask_probs`` at test
time. It needs the mask branch at the stages it uses and the sigmoid mask predictor.
"""
import torch

from cascade_seg.registry import TASK_BRANCHES

from .base import TaskBranch


def mask_area_ratios(boxes, gt_inds, gt_masks):
    """For each positive box, the fraction of its GT mask's pixels that lie inside the box
    (pixel centres; the box rounded to the pixel grid). ``boxes (P, 4)``, ``gt_inds (P,)``,
    ``gt_masks (G, H, W)`` -> ``(P,)`` in [0, 1] (0 for an empty GT mask)."""
    out = boxes.new_zeros(boxes.size(0), dtype=torch.float32)
    if boxes.size(0) == 0 or gt_masks.size(0) == 0:
        return out
    h, w = gt_masks.shape[-2:]
    gt_inds = gt_inds.to(boxes.device).long()
    edges = boxes[:, :4].float().round().long()
    x0, x1 = edges[:, 0].clamp(0, w), edges[:, 2].clamp(0, w)
    y0, y1 = edges[:, 1].clamp(0, h), edges[:, 3].clamp(0, h)
    x1, y1 = torch.maximum(x0, x1), torch.maximum(y0, y1)
    for g in gt_inds.unique().tolist():
        # summed-area table of one GT mask: any box's pixel count in 4 look-ups
        table = torch.zeros((h + 1, w + 1), dtype=torch.int64, device=boxes.device)
        table[1:, 1:] = gt_masks[g].to(boxes.device).long().cumsum(0).cumsum(1)
        sel = torch.nonzero(gt_inds == g).flatten()
        inside = (table[y1[sel], x1[sel]] - table[y0[sel], x1[sel]] - table[y1[sel], x0[sel]]
                  + table[y0[sel], x0[sel]])
        total = table[h, w]
        if total > 0:
            out[sel] = inside.float() / total.float()
    return out


def mask_iou_targets(mask_logits, mask_targets, area_ratios, eps=1e-10):
    """IoU of each binarised predicted mask (logit > 0) with its GT mask, on the ``M x M`` RoI
    grid, the GT counted with its full area: the part inside the RoI (``mask_targets``)
    divided by ``area_ratios`` (see :func:`mask_area_ratios`). ``(P, M, M)``, ``(P, M, M)``,
    ``(P,)`` -> ``(P,)``."""
    pred = mask_logits > 0
    target = mask_targets >= 0.5
    overlap = (pred & target).flatten(1).sum(1).float()
    full_gt = target.flatten(1).sum(1).float() / area_ratios.float().clamp(min=eps)
    union = pred.flatten(1).sum(1).float() + full_gt - overlap
    return overlap / union.clamp(min=1.0)


@TASK_BRANCHES.register_module(name='mask_iou')
class MaskIoUBranch(TaskBranch):
    """Config keys on the RoI head: ``mask_iou_head`` (e.g. ``MaskIoUHead``),
    ``mask_iou_roi_extractor`` (``'mask'``: the mask branch's pooled RoI features, as CenterMask
    and Mask Scoring R-CNN use; or an extractor config), ``mask_iou_stages`` (default
    ``'last'``).

    Training: the head sees the positives' RoI features and the sigmoid of their GT-class mask
    logits; its target is :func:`mask_iou_targets` (no gradient), its loss the head's L2.
    Test: it sees the detections' mask probabilities; results get ``mask_iou`` (the predicted
    IoU of the detection's class) and ``mask_scores = scores * mask_iou``, which CocoMetric
    uses as the score of the segmentation.
    """
    task = 'mask_iou'
    order = 10                 # after the mask branch (order 0): reads its `shared` outputs
    predicts_classes = True    # one IoU per class
    default_stages = 'last'

    @staticmethod
    def _need(shared, keys):
        missing = [k for k in keys if k not in shared]
        if missing:
            raise RuntimeError(f'the mask_iou branch reads {missing} from the mask branch; '
                               'configure a mask_head trained / tested at the same stages')

    def loss(self, stage, roi_feats, samples, gts, shared):
        self._need(shared, ('mask_logits', 'mask_targets', 'mask_labels'))
        logits, targets, labels = (shared['mask_logits'], shared['mask_targets'],
                                   shared['mask_labels'])
        rows = torch.arange(logits.size(0), device=logits.device)
        selected = logits[rows, labels if logits.size(1) > 1 else torch.zeros_like(labels)]
        with torch.no_grad():
            ratios = torch.cat([mask_area_ratios(s.pos_priors, s.pos_gt_inds, gt.masks)
                                for s, gt in zip(samples, gts)]).to(logits.device)
            iou_targets = mask_iou_targets(selected, targets, ratios)
        head = self.head(stage)
        iou_pred = head(roi_feats, selected.sigmoid())[rows, labels]
        return dict(loss_mask_iou=head.loss(iou_pred, iou_targets))

    def predict(self, pool, rois, labels, shared):
        """Predicted IoU ``(K,)`` of each detection's mask for its label."""
        self._need(shared, ('mask_probs', ))
        stage = self.test_stages[-1]
        ious = self.head(stage)(pool(stage), shared['mask_probs'])
        return ious[torch.arange(ious.size(0), device=ious.device), labels]

    def postprocess(self, results, raw, metas, rescale):
        for r, iou in zip(results, raw.split([len(r) for r in results])):
            r.mask_iou = iou
            r.mask_scores = r.scores * iou

    def deaugment(self, raw, metas, num_per_img):
        return raw  # one IoU per RoI: nothing geometric to undo

    def empty_result(self, result, shape):
        result.mask_iou = result.bboxes.new_zeros((0, ))
        result.mask_scores = result.bboxes.new_zeros((0, ))
