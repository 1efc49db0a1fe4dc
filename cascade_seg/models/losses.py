"""Losses as plain functions plus thin registered modules with MMDetection's config names.

Reduction follows MMDetection's ``weight_reduce_loss``: multiply by ``weight``, then
``'mean'`` divides the sum by ``avg_factor`` (+eps) when given, else takes the plain mean.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

from cascade_seg.registry import MODELS

__all__ = [
    'weight_reduce_loss', 'cross_entropy', 'binary_cross_entropy', 'smooth_l1_loss', 'l1_loss',
    'mask_bce_loss', 'mask_softmax_loss', 'accuracy', 'CrossEntropyLoss', 'SmoothL1Loss', 'L1Loss',
    'sigmoid_focal_loss', 'giou_loss', 'FocalLoss', 'GIoULoss'
]

_EPS = torch.finfo(torch.float32).eps


def weight_reduce_loss(loss: Tensor,
                       weight: Optional[Tensor] = None,
                       reduction: str = 'mean',
                       avg_factor: Optional[float] = None) -> Tensor:
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == 'mean':
            return loss.mean()
        return loss.sum() if reduction == 'sum' else loss
    if reduction == 'mean':
        return loss.sum() / (avg_factor + _EPS)
    if reduction != 'none':
        raise ValueError('avg_factor can only be used with reduction="mean" or "none"')
    return loss


def cross_entropy(logits: Tensor,
                  labels: Tensor,
                  weight: Optional[Tensor] = None,
                  reduction: str = 'mean',
                  avg_factor: Optional[float] = None,
                  ignore_index: Optional[int] = -100,
                  class_weight: Optional[Tensor] = None,
                  avg_non_ignore: bool = False) -> Tensor:
    """Softmax cross entropy of (N, C) logits against (N,) labels."""
    ignore_index = -100 if ignore_index is None else ignore_index
    loss = F.cross_entropy(logits.float(),
                           labels.long(),
                           weight=class_weight,
                           reduction='none',
                           ignore_index=ignore_index)
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        avg_factor = labels.numel() - (labels == ignore_index).sum().item()
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def _onehot(labels: Tensor, weight: Optional[Tensor], channels: int, ignore_index: int):
    # label == channels (background) -> all-zero row; ignored/negative labels get weight 0
    valid = (labels >= 0) & (labels != ignore_index)
    targets = torch.zeros((labels.shape[0], channels), dtype=torch.float32, device=labels.device)
    rows = torch.nonzero(valid & (labels < channels)).flatten()
    targets[rows, labels[rows].long()] = 1
    valid = valid[:, None].expand(-1, channels).float()
    if weight is None:
        return targets, valid, valid
    return targets, weight.reshape(-1, 1).float().expand(-1, channels) * valid, valid


def binary_cross_entropy(logits: Tensor,
                         targets: Tensor,
                         weight: Optional[Tensor] = None,
                         reduction: str = 'mean',
                         avg_factor: Optional[float] = None,
                         ignore_index: Optional[int] = -100,
                         class_weight: Optional[Tensor] = None,
                         avg_non_ignore: bool = False) -> Tensor:
    """Sigmoid BCE. ``targets`` of the same shape as ``logits`` (entries < 0 or == ignore_index
    get weight 0), or integer labels (N,) for (N, C) logits, expanded one-hot where a label of
    ``C`` means background (MMDetection's RPN convention). ``class_weight`` is BCE's pos_weight."""
    ignore_index = -100 if ignore_index is None else ignore_index
    logits = logits.float()
    if logits.dim() != targets.dim():
        targets, weight, valid = _onehot(targets, weight, logits.shape[-1], ignore_index)
    else:
        valid = ((targets >= 0) & (targets != ignore_index)).float()
        weight = valid if weight is None else weight.float() * valid
    if avg_factor is None and avg_non_ignore and reduction == 'mean':
        avg_factor = valid.sum().item()
    loss = F.binary_cross_entropy_with_logits(logits,
                                              targets.float(),
                                              pos_weight=class_weight,
                                              reduction='none')
    return weight_reduce_loss(loss, weight.float(), reduction, avg_factor)


def smooth_l1_loss(pred: Tensor,
                   target: Tensor,
                   beta: float = 1.0,
                   weight: Optional[Tensor] = None,
                   reduction: str = 'mean',
                   avg_factor: Optional[float] = None) -> Tensor:
    """``0.5 d^2 / beta`` below ``beta``, ``d - 0.5 beta`` above (``beta <= 0``: plain L1)."""
    if target.numel() == 0:
        return pred.sum() * 0
    diff = (pred.float() - target.float()).abs()
    if beta > 0:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    else:
        loss = diff
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def l1_loss(pred: Tensor,
            target: Tensor,
            weight: Optional[Tensor] = None,
            reduction: str = 'mean',
            avg_factor: Optional[float] = None) -> Tensor:
    if target.numel() == 0:
        return pred.sum() * 0
    loss = (pred.float() - target.float()).abs()
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def _gt_channel(mask_logits: Tensor, labels: Tensor) -> Tensor:
    if mask_logits.shape[1] == 1:  # class-agnostic head
        return mask_logits[:, 0]
    rows = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return mask_logits[rows, labels.long()]


def mask_bce_loss(mask_logits: Tensor,
                  targets: Tensor,
                  labels: Tensor,
                  weight: Optional[Tensor] = None,
                  reduction: str = 'mean',
                  avg_factor: Optional[float] = None) -> Tensor:
    """Decoupled mask loss (Mask R-CNN): per-pixel sigmoid BCE on the GT-class channel only.

    ``mask_logits`` (P, C, M, M) or class-agnostic (P, 1, M, M), ``targets`` (P, M, M),
    ``labels`` (P,). Mean over all pixels of all positives; 0 (with grad) if P == 0.
    ``weight`` is per positive (P,).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0
    logits = _gt_channel(mask_logits, labels).float()
    loss = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction='none')
    if weight is not None:
        weight = weight.float().reshape(-1, 1, 1)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mask_softmax_loss(mask_logits: Tensor,
                      targets: Tensor,
                      labels: Tensor,
                      weight: Optional[Tensor] = None,
                      reduction: str = 'mean',
                      avg_factor: Optional[float] = None) -> Tensor:
    """Coupled mask loss (the Mask R-CNN paper's softmax ablation): classes compete per pixel.

    ``mask_logits`` (P, C + 1, M, M): one channel per class plus a background channel last.
    Each pixel's target class is the RoI's label where ``targets >= 0.5``, else background
    (index C); multinomial cross entropy over the C + 1 channels, mean over all pixels.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0
    bg = mask_logits.shape[1] - 1
    fg = targets >= 0.5
    pixel_cls = torch.where(fg,
                            labels.long().view(-1, 1, 1).expand_as(fg),
                            torch.full_like(fg, bg, dtype=torch.long))
    loss = F.cross_entropy(mask_logits.float(), pixel_cls, reduction='none')
    if weight is not None:
        weight = weight.float().reshape(-1, 1, 1)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def accuracy(logits: Tensor,
             labels: Tensor,
             topk: Union[int, Sequence[int]] = 1,
             thresh: Optional[float] = None):
    """Top-k accuracy in percent (MMDetection's ``accuracy``); 0 for empty input."""
    single = isinstance(topk, int)
    topk = (topk, ) if single else tuple(topk)
    if logits.shape[0] == 0:
        res = [logits.new_tensor(0.) for _ in topk]
        return res[0] if single else res
    values, pred = logits.topk(max(topk), dim=1)
    correct = (pred == labels.view(-1, 1)).t()
    if thresh is not None:
        correct = correct & (values > thresh).t()
    res = [
        correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / logits.shape[0])
        for k in topk
    ]
    return res[0] if single else res


@MODELS.register_module()
class CrossEntropyLoss(nn.Module):
    """Softmax CE (default), sigmoid BCE (``use_sigmoid``) or decoupled mask BCE (``use_mask``).

    ``forward(pred, target, weight=None, avg_factor=None)``; with ``use_mask`` the third
    argument is the positives' labels: ``loss_mask(mask_preds, mask_targets, labels)``.
    """

    def __init__(self,
                 use_sigmoid: bool = False,
                 use_mask: bool = False,
                 reduction: str = 'mean',
                 class_weight: Optional[Sequence[float]] = None,
                 ignore_index: Optional[int] = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False):
        super().__init__()
        assert not (use_sigmoid and use_mask)
        self.use_sigmoid = use_sigmoid
        self.use_mask = use_mask
        self.reduction = reduction
        self.class_weight = class_weight
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.avg_non_ignore = avg_non_ignore

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                ignore_index: Optional[int] = None,
                **kwargs) -> Tensor:
        reduction = reduction_override or self.reduction
        if self.use_mask:
            labels = kwargs.get('labels', kwargs.get('label', weight))
            assert labels is not None, 'mask loss needs the labels of the positives'
            return self.loss_weight * mask_bce_loss(
                pred, target, labels, reduction=reduction, avg_factor=avg_factor)
        ignore_index = self.ignore_index if ignore_index is None else ignore_index
        class_weight = None if self.class_weight is None else pred.new_tensor(
            self.class_weight).float()
        fn = binary_cross_entropy if self.use_sigmoid else cross_entropy
        return self.loss_weight * fn(pred, target, weight, reduction, avg_factor, ignore_index,
                                     class_weight, self.avg_non_ignore)


class _RegressionLoss(nn.Module):
    """Weighted, reduced regression loss; subclasses give the element-wise function."""

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def loss(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], reduction: str,
             avg_factor: Optional[float]) -> Tensor:
        raise NotImplementedError

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        # all weights zero: a graph-connected 0 without computing anything (MMDetection)
        if weight is not None and not torch.any(weight > 0):
            if pred.dim() == weight.dim() + 1:
                weight = weight.unsqueeze(1)
            return (pred * weight).sum()
        reduction = reduction_override or self.reduction
        return self.loss_weight * self.loss(pred, target, weight, reduction, avg_factor)


@MODELS.register_module()
class SmoothL1Loss(_RegressionLoss):

    def __init__(self, beta: float = 1.0, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        self.beta = beta

    def loss(self, pred, target, weight, reduction, avg_factor):
        return smooth_l1_loss(pred, target, self.beta, weight, reduction, avg_factor)


@MODELS.register_module()
class L1Loss(_RegressionLoss):

    def loss(self, pred, target, weight, reduction, avg_factor):
        return l1_loss(pred, target, weight, reduction, avg_factor)


# ----------------------------------------------------------------------------- dense detectors
# Focal and GIoU losses of one-stage heads (FCOS); the element-wise terms are torchvision's.

def sigmoid_focal_loss(logits: Tensor,
                       targets: Tensor,
                       weight: Optional[Tensor] = None,
                       alpha: float = 0.25,
                       gamma: float = 2.0,
                       reduction: str = 'mean',
                       avg_factor: Optional[float] = None) -> Tensor:
    """Focal loss (RetinaNet) on ``(N, C)`` sigmoid logits.

    ``targets``: ``(N, C)`` 0/1, or ``(N,)`` integer labels where ``C`` (or any label outside
    ``[0, C)``) means background, i.e. an all-zero row. ``weight``: per row ``(N,)`` or per
    element ``(N, C)``."""
    logits = logits.float()
    if targets.dim() != logits.dim():
        onehot = torch.zeros_like(logits)
        rows = torch.nonzero((targets >= 0) & (targets < logits.size(-1))).flatten()
        onehot[rows, targets[rows].long()] = 1
        targets = onehot
    loss = _tv_sigmoid_focal_loss(logits, targets.float(), alpha=alpha, gamma=gamma,
                                  reduction='none')
    if weight is not None and weight.dim() == 1:
        weight = weight[:, None]
    return weight_reduce_loss(loss, None if weight is None else weight.float(), reduction,
                              avg_factor)


def giou_loss(pred: Tensor,
              target: Tensor,
              weight: Optional[Tensor] = None,
              reduction: str = 'mean',
              avg_factor: Optional[float] = None,
              eps: float = 1e-6) -> Tensor:
    """``1 - GIoU`` of ``(N, 4)`` xyxy boxes, one value per box; ``weight`` is ``(N,)``."""
    if target.numel() == 0:
        return pred.sum() * 0
    loss = generalized_box_iou_loss(pred.float(), target.float(), reduction='none', eps=eps)
    return weight_reduce_loss(loss, None if weight is None else weight.float(), reduction,
                              avg_factor)


@MODELS.register_module()
class FocalLoss(nn.Module):
    """Sigmoid focal loss with MMDetection's config keys; ``forward(logits, labels_or_targets,
    weight=None, avg_factor=None)`` (see :func:`sigmoid_focal_loss`)."""

    def __init__(self,
                 use_sigmoid: bool = True,
                 gamma: float = 2.0,
                 alpha: float = 0.25,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__()
        if not use_sigmoid:
            raise NotImplementedError('only the sigmoid focal loss is supported')
        self.gamma, self.alpha = gamma, alpha
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override or self.reduction
        return self.loss_weight * sigmoid_focal_loss(pred, target, weight, self.alpha,
                                                     self.gamma, reduction, avg_factor)


@MODELS.register_module()
class GIoULoss(_RegressionLoss):
    """``1 - GIoU`` between predicted and target xyxy boxes (torchvision's formula)."""

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        self.eps = eps

    def loss(self, pred, target, weight, reduction, avg_factor):
        return giou_loss(pred, target, weight, reduction, avg_factor, self.eps)
