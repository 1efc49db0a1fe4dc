"""Mask targets (crop-and-resize GT bitmaps) and pasting predicted masks into the image."""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ['mask_targets', 'paste_masks']

# Work-buffer budget (elements) for chunking: bounds the float copies of GT masks and the
# sampling grids of pasting, whatever the number of instances or the image size.
CHUNK_ELEMS = 1 << 22  # 16 MiB of float32: small peak memory, still few chunks


def _pair(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def mask_targets(pos_boxes: Tensor,
                 pos_gt_inds: Tensor,
                 gt_masks: Tensor,
                 out_size: Union[int, Sequence[int]],
                 aligned: bool = True,
                 sampling_ratio: int = 0,
                 binarize: bool = True,
                 clip: bool = True,
                 chunk_elems: int = CHUNK_ELEMS) -> Tensor:
    """Crop GT mask ``pos_gt_inds[i]`` to ``pos_boxes[i]`` and resize to ``out_size``.

    MMDetection: ``aligned=True, sampling_ratio=0, binarize=True, clip=True`` (boxes clipped to
    the mask frame, targets thresholded at 0.5). torchvision's Mask R-CNN:
    ``aligned=False, binarize=False, clip=False``. ``gt_masks`` is (G, H, W) of any dtype; only
    the referenced GTs are converted to float, a few at a time. Returns (P, S, S) float32.
    """
    out_h, out_w = _pair(out_size)
    num_pos = pos_boxes.shape[0]
    device = pos_boxes.device
    out = torch.zeros((num_pos, out_h, out_w), dtype=torch.float32, device=device)
    if num_pos == 0 or gt_masks.shape[0] == 0:
        return out
    H, W = gt_masks.shape[-2:]
    boxes = pos_boxes[:, :4].float()
    if clip:
        boxes = torch.stack([
            boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H), boxes[:, 2].clamp(0, W),
            boxes[:, 3].clamp(0, H)
        ],
                            dim=1)
    gt_masks = gt_masks.to(device)
    uniq, inv = pos_gt_inds.to(device).long().unique(return_inverse=True)
    per_chunk = max(1, chunk_elems // max(1, H * W))
    with torch.autocast(device_type=device.type, enabled=False):
        for start in range(0, uniq.numel(), per_chunk):
            sel = (inv >= start) & (inv < start + per_chunk)
            idx = torch.nonzero(sel).flatten()
            masks = gt_masks[uniq[start:start + per_chunk]].float()[:, None]
            rois = torch.cat([(inv[idx] - start).float()[:, None], boxes[idx]], dim=1)
            out[idx] = roi_align(masks, rois, (out_h, out_w), 1.0, sampling_ratio, aligned)[:, 0]
    if binarize:
        out = (out >= 0.5).float()
    return out


def _empty_output(n: int, h: int, w: int, threshold, device) -> Tensor:
    if threshold is None or threshold < 0:
        return torch.zeros((n, h, w), dtype=torch.float32, device=device)
    out = torch.zeros((n, h, w), dtype=torch.bool, device=device)  # (torch.full is slow for bool)
    if threshold <= 0:  # pixels no mask reaches have probability 0
        out.fill_(True)
    return out


def _paste_regions(boxes: Tensor, m_h: int, m_w: int, img_h: int, img_w: int) -> list:
    """Per box, the clipped pixel window ``(y0, y1, x0, x1)`` outside which bilinear
    grid_sample of the M x M map is exactly 0. Degenerate/non-finite extents span the image
    (the normalised coordinate there is inf/nan, which the reference maps to the mask centre)."""
    regions = []
    for x0, y0, x1, y1 in boxes.tolist():
        spans = []
        for lo, hi, m, size in ((y0, y1, m_h, img_h), (x0, x1, m_w, img_w)):
            ext = hi - lo
            if ext == 0 or not math.isfinite(ext):
                spans += [0, size]
                continue
            margin = 0.5 * abs(ext) / m + 2  # support: half a mask cell past the box (+slack)
            a = min(max(math.floor(min(lo, hi) - margin), 0), size)
            b = min(max(math.ceil(max(lo, hi) + margin), 0), size)
            spans += [a, b]
        regions.append(spans)
    return regions


def _paste_grid_sample(probs: Tensor, boxes: Tensor, img_h: int, img_w: int, threshold,
                       chunk_elems: int) -> Tensor:
    n, m_h, m_w = probs.shape
    out = _empty_output(n, img_h, img_w, threshold, probs.device)
    regions = _paste_regions(boxes, m_h, m_w, img_h, img_w)
    for idx in _chunks(regions, chunk_elems):
        reg = [regions[i] for i in idx]
        hm = max(r[1] - r[0] for r in reg)
        wm = max(r[3] - r[2] for r in reg)
        if hm == 0 or wm == 0:
            continue
        sel = torch.tensor(idx, device=probs.device)
        start = torch.tensor(reg, device=probs.device)
        # same float ops as MMDetection's _do_paste_mask, so values match bit for bit
        img_y = (start[:, 0:1] + torch.arange(hm, device=probs.device)).float() + 0.5
        img_x = (start[:, 2:3] + torch.arange(wm, device=probs.device)).float() + 0.5
        bx0, by0, bx1, by1 = torch.split(boxes[sel], 1, dim=1)
        img_y = (img_y - by0) / (by1 - by0) * 2 - 1
        img_x = (img_x - bx0) / (bx1 - bx0) * 2 - 1
        img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
        img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
        k = len(idx)
        grid = torch.stack(
            [img_x[:, None, :].expand(k, hm, wm), img_y[:, :, None].expand(k, hm, wm)], dim=3)
        pasted = F.grid_sample(probs[sel, None], grid, align_corners=False)[:, 0]
        if threshold is not None and threshold >= 0:
            pasted = pasted >= threshold
        for t, (i, (y0, y1, x0, x1)) in enumerate(zip(idx, reg)):
            out[i, y0:y1, x0:x1] = pasted[t, :y1 - y0, :x1 - x0]
    return out


def _chunks(regions: list, chunk_elems: int) -> list:
    """Group boxes (largest window first) so that padding every window of a group to the
    group's largest one wastes little work and the group's grid stays within budget."""
    area = [(r[1] - r[0]) * (r[3] - r[2]) for r in regions]
    order = sorted(range(len(regions)), key=lambda i: -area[i])
    groups, cur, hm, wm, used = [], [], 0, 0, 0
    for i in order:
        y0, y1, x0, x1 = regions[i]
        nh, nw = max(hm, y1 - y0), max(wm, x1 - x0)
        padded = (len(cur) + 1) * nh * nw
        if cur and (padded > chunk_elems or padded > 1.5 * (used + area[i]) + 4096):
            groups.append(cur)
            cur, nh, nw, used = [], y1 - y0, x1 - x0, 0
        cur.append(i)
        hm, wm, used = nh, nw, used + area[i]
    if cur:
        groups.append(cur)
    return groups


def _paste_torchvision(probs: Tensor, boxes: Tensor, img_h: int, img_w: int, threshold) -> Tensor:
    n, m = probs.shape[0], probs.shape[-1]
    out = _empty_output(n, img_h, img_w, threshold, probs.device)
    # pad by one pixel and grow the box to match, then integer boxes (torchvision)
    padded = F.pad(probs[:, None], (1, 1, 1, 1))
    scale = float(m + 2) / m
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    ib = torch.stack([cx - w_half, cy - h_half, cx + w_half, cy + h_half], dim=1).long()
    for i, (bx0, by0, bx1, by1) in enumerate(ib.tolist()):
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        x0, x1 = max(bx0, 0), min(bx1 + 1, img_w)
        y0, y1 = max(by0, 0), min(by1 + 1, img_h)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = F.interpolate(padded[i:i + 1], size=(h, w), mode='bilinear', align_corners=False)[0,
                                                                                                 0]
        crop = mask[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        out[i, y0:y1, x0:x1] = crop >= threshold if out.dtype == torch.bool else crop
    return out


def paste_masks(mask_probs: Tensor,
                boxes: Tensor,
                img_shape: Sequence[int],
                threshold: Optional[float] = 0.5,
                mode: str = 'grid_sample',
                chunk_elems: int = CHUNK_ELEMS) -> Tensor:
    """Paste (N, M, M) mask probabilities into (N, h, w) image masks at ``boxes``.

    ``mode='grid_sample'``: MMDetection's ``_do_paste_mask`` (bilinear sampling of the mask at
    pixel centres, zero outside), evaluated only on each box's window, in memory-bounded chunks.
    ``mode='torchvision'``: torchvision's ``paste_masks_in_image`` (1-pixel pad, integer box,
    bilinear resize). Returns bool ``prob >= threshold``, or float probs if threshold is None/<0.
    """
    img_h, img_w = int(img_shape[0]), int(img_shape[1])
    if mask_probs.dim() == 4:
        mask_probs = mask_probs[:, 0]
    probs = mask_probs.float()
    boxes = boxes[:, :4].float()
    if probs.shape[0] == 0:
        return _empty_output(0, img_h, img_w, threshold, probs.device)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        if mode == 'grid_sample':
            return _paste_grid_sample(probs, boxes, img_h, img_w, threshold, chunk_elems)
        if mode == 'torchvision':
            return _paste_torchvision(probs, boxes, img_h, img_w, threshold)
    raise ValueError(f'unknown paste mode {mode!r}')
