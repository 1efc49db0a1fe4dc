"""Sampling positives / negatives out of an assignment."""
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from cascade_seg.registry import TASK_UTILS
from .assigner import AssignResult

__all__ = ['SamplingResult', 'random_sample', 'RandomSampler', 'PseudoSampler']


@dataclass
class SamplingResult:
    """Sampled priors of one image. Indices refer to ``all_priors`` (GTs first if added).

    ``priors`` / ``bboxes`` = ``cat(pos_priors, neg_priors)``: the order in which heads build
    RoIs and targets (MMDetection's convention).
    """
    pos_inds: Tensor
    neg_inds: Tensor
    all_priors: Tensor
    pos_priors: Tensor
    neg_priors: Tensor
    pos_gt_inds: Tensor  # 0-based GT index of each positive
    pos_gt_bboxes: Tensor
    pos_gt_labels: Tensor
    pos_is_gt: Tensor  # bool
    num_gts: int

    @property
    def priors(self) -> Tensor:
        return torch.cat([self.pos_priors, self.neg_priors])

    bboxes = priors

    @property
    def pos_assigned_gt_inds(self) -> Tensor:
        return self.pos_gt_inds

    @property
    def pos_bboxes(self) -> Tensor:
        return self.pos_priors

    @property
    def neg_bboxes(self) -> Tensor:
        return self.neg_priors

    @property
    def num_pos(self) -> int:
        return self.pos_inds.numel()

    @property
    def num_neg(self) -> int:
        return self.neg_inds.numel()

    @property
    def avg_factor(self) -> int:
        # MMDetection: max(num_pos, 1) + max(num_neg, 1)
        return max(self.num_pos, 1) + max(self.num_neg, 1)

    @classmethod
    def build(cls, pos_inds: Tensor, neg_inds: Tensor, priors: Tensor, gt_bboxes: Tensor,
              assign_result: AssignResult, gt_flags: Tensor) -> 'SamplingResult':
        pos_gt_inds = assign_result.gt_inds[pos_inds] - 1
        if gt_bboxes.numel() == 0:
            # no GT: there can be no positives either; keep shapes consistent
            pos_gt_bboxes = gt_bboxes.new_zeros((pos_inds.numel(), 4))
        else:
            pos_gt_bboxes = gt_bboxes.reshape(-1, 4)[pos_gt_inds.long()]
        return cls(pos_inds=pos_inds,
                   neg_inds=neg_inds,
                   all_priors=priors,
                   pos_priors=priors[pos_inds],
                   neg_priors=priors[neg_inds],
                   pos_gt_inds=pos_gt_inds,
                   pos_gt_bboxes=pos_gt_bboxes,
                   pos_gt_labels=assign_result.labels[pos_inds],
                   pos_is_gt=gt_flags[pos_inds],
                   num_gts=int(gt_bboxes.shape[0]))


def _random_choice(gallery: Tensor, num: int) -> Tensor:
    # randperm on CPU (global generator) so torch.manual_seed fixes the draw on any device,
    # exactly as MMDetection's RandomSampler does.
    perm = torch.randperm(gallery.numel())[:num].to(gallery.device)
    return gallery[perm]


def random_sample(gt_inds: Tensor,
                  num: int,
                  pos_fraction: float,
                  neg_pos_ub: float = -1) -> Tuple[Tensor, Tensor]:
    """Pick at most ``num * pos_fraction`` positives (gt_inds > 0), fill up with negatives
    (gt_inds == 0), at most ``neg_pos_ub * max(num_pos, 1)`` of them if ``neg_pos_ub >= 0``.
    Returns sorted index tensors (pos_inds, neg_inds)."""
    pos = torch.nonzero(gt_inds > 0).flatten()
    num_expected_pos = int(num * pos_fraction)
    if pos.numel() > num_expected_pos:
        pos = _random_choice(pos, num_expected_pos)
    pos = pos.unique()
    num_expected_neg = num - pos.numel()
    if neg_pos_ub >= 0:
        num_expected_neg = min(num_expected_neg, int(neg_pos_ub * max(1, pos.numel())))
    neg = torch.nonzero(gt_inds == 0).flatten()
    if neg.numel() > num_expected_neg:
        neg = _random_choice(neg, num_expected_neg)
    return pos, neg.unique()


def _with_gts(assign_result, priors, gt_bboxes, gt_labels, add_gt):
    """Optionally prepend GTs as proposals; never mutates the caller's assign_result."""
    priors = priors[:, :4] if priors.dim() == 2 else priors.reshape(-1, 4)
    gt_flags = torch.zeros(priors.shape[0], dtype=torch.bool, device=priors.device)
    if add_gt and gt_bboxes.shape[0] > 0:
        priors = torch.cat([gt_bboxes[:, :4].to(priors), priors])
        assign_result = assign_result.clone().add_gt_(gt_labels)
        gt_flags = torch.cat(
            [torch.ones(gt_bboxes.shape[0], dtype=torch.bool, device=priors.device), gt_flags])
    return assign_result, priors, gt_flags


@TASK_UTILS.register_module()
class RandomSampler:
    """Random sampler of a fixed-size RoI batch (MMDetection's config name and semantics)."""

    def __init__(self,
                 num: int,
                 pos_fraction: float,
                 neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True,
                 **kwargs):
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(self, assign_result: AssignResult, priors: Tensor, gt_bboxes: Tensor,
               gt_labels: Tensor, **kwargs) -> SamplingResult:
        assign_result, priors, gt_flags = _with_gts(assign_result, priors, gt_bboxes, gt_labels,
                                                    self.add_gt_as_proposals)
        pos_inds, neg_inds = random_sample(assign_result.gt_inds, self.num, self.pos_fraction,
                                           self.neg_pos_ub)
        return SamplingResult.build(pos_inds, neg_inds, priors, gt_bboxes, assign_result, gt_flags)


@TASK_UTILS.register_module()
class PseudoSampler:
    """Takes every positive and every negative; never adds GTs."""

    def __init__(self, **kwargs):
        pass

    def sample(self,
               assign_result: AssignResult,
               priors: Tensor,
               gt_bboxes: Tensor,
               gt_labels: Tensor = None,
               **kwargs) -> SamplingResult:
        assign_result, priors, gt_flags = _with_gts(assign_result, priors, gt_bboxes, gt_labels,
                                                    False)
        pos_inds = torch.nonzero(assign_result.gt_inds > 0).flatten().unique()
        neg_inds = torch.nonzero(assign_result.gt_inds == 0).flatten().unique()
        return SamplingResult.build(pos_inds, neg_inds, priors, gt_bboxes, assign_result, gt_flags)
