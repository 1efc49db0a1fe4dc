"""Max-IoU assignment of priors (anchors / proposals) to ground-truth boxes."""
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from cascade_seg.registry import TASK_UTILS
from .boxes import bbox_overlaps

__all__ = ['AssignResult', 'max_iou_assign', 'MaxIoUAssigner']


@dataclass
class AssignResult:
    """Per-prior assignment.

    ``gt_inds``: 0 = negative, -1 = ignore, ``i + 1`` = assigned to GT ``i``;
    ``max_overlaps``: best IoU with any GT; ``labels``: GT label of positives, else -1.
    """
    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    @property
    def num_preds(self) -> int:
        return self.gt_inds.numel()

    def clone(self) -> 'AssignResult':
        return replace(self,
                       gt_inds=self.gt_inds.clone(),
                       max_overlaps=self.max_overlaps.clone(),
                       labels=self.labels.clone())

    def add_gt_(self, gt_labels: Tensor) -> 'AssignResult':
        """Prepend the GTs themselves as perfectly matched priors (in place)."""
        g = gt_labels.numel()
        self_inds = torch.arange(1, g + 1, dtype=torch.long, device=self.gt_inds.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(g), self.max_overlaps])
        self.labels = torch.cat([gt_labels.to(self.labels), self.labels])
        return self


def max_iou_assign(overlaps: Tensor,
                   gt_labels: Tensor,
                   pos_iou_thr: float,
                   neg_iou_thr: Union[float, Sequence[float]],
                   min_pos_iou: float = 0.,
                   gt_max_assign_all: bool = True,
                   match_low_quality: bool = True) -> AssignResult:
    """Assign from a (G, N) IoU matrix, in MMDetection's order.

    1. everything ignored (-1); 2. max IoU in ``[0, neg_iou_thr)`` (or ``[lo, hi)``) -> negative;
    3. max IoU >= ``pos_iou_thr`` -> its best GT; 4. low-quality: for each GT in index order
    whose best IoU >= ``min_pos_iou``, its best prior(s) are (re)assigned to it, so a later GT
    wins over an earlier one on a shared prior.
    Priors with IoU -1 (set by the ignore step) stay ignored unless step 4 picks them.
    """
    num_gts, num_priors = overlaps.shape
    device = overlaps.device
    gt_inds = torch.full((num_priors, ), -1, dtype=torch.long, device=device)
    if num_gts == 0 or num_priors == 0:
        if num_gts == 0:
            gt_inds.zero_()
        return AssignResult(num_gts, gt_inds, overlaps.new_zeros((num_priors, )),
                            torch.full((num_priors, ), -1, dtype=torch.long, device=device))

    max_overlaps, argmax_overlaps = overlaps.max(dim=0)
    gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)

    if isinstance(neg_iou_thr, (tuple, list)):
        lo, hi = neg_iou_thr
        gt_inds[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
    else:
        gt_inds[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0

    pos = max_overlaps >= pos_iou_thr
    gt_inds[pos] = argmax_overlaps[pos] + 1

    if match_low_quality:
        ok = gt_max_overlaps >= min_pos_iou  # (G,)
        gt_ids = torch.arange(1, num_gts + 1, device=device)
        # Vectorised form of MMDetection's sequential loop: the highest GT index wins.
        if gt_max_assign_all:
            hit = (overlaps == gt_max_overlaps[:, None]) & ok[:, None]
            winner = (hit.to(torch.int32) *
                      gt_ids[:, None].to(torch.int32)).max(dim=0).values.long()
        else:
            winner = torch.zeros(num_priors, dtype=torch.long, device=device)
            winner.scatter_reduce_(0, gt_argmax_overlaps[ok], gt_ids[ok], reduce='amax')
        gt_inds = torch.where(winner > 0, winner, gt_inds)

    labels = torch.full((num_priors, ), -1, dtype=torch.long, device=device)
    pos = gt_inds > 0
    labels[pos] = gt_labels.to(device=device, dtype=torch.long)[gt_inds[pos] - 1]
    return AssignResult(num_gts, gt_inds, max_overlaps, labels)


@TASK_UTILS.register_module()
class MaxIoUAssigner:
    """MMDetection's MaxIoUAssigner on plain tensors (see :func:`max_iou_assign`).

    ``ignore_iof_thr > 0`` with ``gt_bboxes_ignore``: priors whose IoF with an ignore box
    exceeds it get IoU -1 with every GT (ignored unless low-quality matching picks them).
    ``gpu_assign_thr > 0``: with more GTs than that, compute on CPU to save GPU memory.
    """

    def __init__(self,
                 pos_iou_thr: float,
                 neg_iou_thr,
                 min_pos_iou: float = 0.,
                 gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1,
                 ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True,
                 gpu_assign_thr: float = -1,
                 iou_calculator=None,
                 **kwargs):
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = tuple(neg_iou_thr) if isinstance(neg_iou_thr,
                                                            (list, tuple)) else neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.gt_max_assign_all = gt_max_assign_all
        self.ignore_iof_thr = ignore_iof_thr
        self.ignore_wrt_candidates = ignore_wrt_candidates
        self.match_low_quality = match_low_quality
        self.gpu_assign_thr = gpu_assign_thr

    def assign(self,
               priors: Tensor,
               gt_bboxes: Tensor,
               gt_labels: Tensor,
               gt_bboxes_ignore: Optional[Tensor] = None) -> AssignResult:
        priors = priors[:, :4]
        device = priors.device
        on_cpu = self.gpu_assign_thr > 0 and gt_bboxes.shape[0] > self.gpu_assign_thr
        if on_cpu:
            priors, gt_bboxes, gt_labels = priors.cpu(), gt_bboxes.cpu(), gt_labels.cpu()
            if gt_bboxes_ignore is not None:
                gt_bboxes_ignore = gt_bboxes_ignore.cpu()

        overlaps = bbox_overlaps(gt_bboxes, priors)
        if (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None
                and gt_bboxes_ignore.numel() > 0 and priors.numel() > 0):
            if self.ignore_wrt_candidates:
                ignore_max = bbox_overlaps(priors, gt_bboxes_ignore, mode='iof').max(dim=1).values
            else:
                ignore_max = bbox_overlaps(gt_bboxes_ignore, priors, mode='iof').max(dim=0).values
            overlaps[:, ignore_max > self.ignore_iof_thr] = -1

        result = max_iou_assign(overlaps, gt_labels, self.pos_iou_thr, self.neg_iou_thr,
                                self.min_pos_iou, self.gt_max_assign_all, self.match_low_quality)
        if on_cpu:
            result = replace(result,
                             gt_inds=result.gt_inds.to(device),
                             max_overlaps=result.max_overlaps.to(device),
                             labels=result.labels.to(device))
        return result
