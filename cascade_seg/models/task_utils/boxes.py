"""Small box helpers. Boxes are (N, 4) ``x1, y1, x2, y2`` with width ``x2 - x1``."""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

__all__ = [
    'box_iou', 'box_iof', 'box_area', 'bbox_overlaps', 'clip_boxes', 'flip_boxes', 'rescale_boxes',
    'boxes_to_rois', 'rois_to_boxes'
]


def _fp32(t: Tensor) -> Tensor:
    # IoU and deltas are always computed in at least fp32 (fp16 areas overflow / lose bits).
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def bbox_overlaps(a: Tensor, b: Tensor, mode: str = 'iou', eps: float = 1e-6) -> Tensor:
    """Pairwise IoU (``mode='iou'``) or IoF = intersection / area of ``a`` (``mode='iof'``).

    Same arithmetic as MMDetection's ``bbox_overlaps``: the denominator is clamped at ``eps``
    so degenerate boxes give 0 instead of NaN. Returns (N, M) in fp32 (or fp64).
    """
    assert mode in ('iou', 'iof'), mode
    a, b = _fp32(a), _fp32(b)
    if a.numel() == 0 or b.numel() == 0:
        return a.new_zeros((a.shape[0], b.shape[0]))
    with torch.autocast(device_type=a.device.type, enabled=False):
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        lt = torch.max(a[:, None, :2], b[None, :, :2])
        rb = torch.min(a[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        if mode == 'iou':
            area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            denom = area_a[:, None] + area_b[None, :] - inter
        else:
            denom = area_a[:, None].expand_as(inter)
        return inter / denom.clamp(min=eps)


def box_iof(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over the area of ``a``: (N, 4), (M, 4) -> (N, M)."""
    return bbox_overlaps(a, b, mode='iof')


def clip_boxes(boxes: Tensor, shape: Sequence[int]) -> Tensor:
    """Clip boxes to an image of ``shape = (h, w)`` (out of place)."""
    h, w = shape[:2]
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def flip_boxes(boxes: Tensor, shape: Sequence[int], direction: str = 'horizontal') -> Tensor:
    """Mirror boxes inside an image of ``shape = (h, w)``."""
    h, w = shape[:2]
    x1, y1, x2, y2 = boxes.unbind(-1)
    if direction == 'horizontal':
        return torch.stack([w - x2, y1, w - x1, y2], dim=-1)
    if direction == 'vertical':
        return torch.stack([x1, h - y2, x2, h - y1], dim=-1)
    if direction == 'diagonal':
        return torch.stack([w - x2, h - y2, w - x1, h - y1], dim=-1)
    raise ValueError(f'unknown flip direction {direction!r}')


def rescale_boxes(boxes: Tensor, scale_factor: Sequence[float]) -> Tensor:
    """Map boxes back through a resize of ``scale_factor = (w_scale, h_scale)``.

    Multiplies by the reciprocals (as MMDetection does) so results match it bit for bit.
    """
    w_scale, h_scale = scale_factor[:2]
    inv = boxes.new_tensor([1.0 / w_scale, 1.0 / h_scale]).repeat(2)
    return boxes * inv


def boxes_to_rois(boxes_list: List[Tensor]) -> Tensor:
    """List of per-image (Ni, >=4) boxes -> (sum Ni, 5) ``[batch_idx, x1, y1, x2, y2]``."""
    rois = []
    for i, boxes in enumerate(boxes_list):
        idx = boxes.new_full((boxes.shape[0], 1), i)
        rois.append(torch.cat([idx, boxes[:, :4]], dim=1))
    if not rois:
        return torch.zeros((0, 5))
    return torch.cat(rois, dim=0)


def rois_to_boxes(rois: Tensor, num_images: int = None) -> Tuple[Tensor, ...]:
    """Inverse of :func:`boxes_to_rois`: split (K, 5) rois into per-image (Ni, 4) boxes."""
    idx = rois[:, 0].long()
    if num_images is None:
        num_images = int(idx.max()) + 1 if idx.numel() else 0
    return tuple(rois[idx == i, 1:] for i in range(num_images))
