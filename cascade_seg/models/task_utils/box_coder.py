"""Box <-> delta encoding (MMDetection's DeltaXYWHBBoxCoder / torchvision's BoxCoder)."""
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from cascade_seg.registry import TASK_UTILS

__all__ = ['encode_deltas', 'decode_deltas', 'DeltaXYWHBBoxCoder']

WH_CLAMP = math.log(1000.0 / 16)


def _fp32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def encode_deltas(
    boxes: Tensor,
    targets: Tensor,
    means: Sequence[float] = (0., 0., 0., 0.),
    stds: Sequence[float] = (1., 1., 1., 1.)
) -> Tensor:
    """Deltas ``(dx, dy, dw, dh)`` turning ``boxes`` into ``targets``: (..., 4) -> (..., 4) fp32."""
    assert boxes.shape == targets.shape, (boxes.shape, targets.shape)
    with torch.autocast(device_type=boxes.device.type, enabled=False):  # a float32 island
        return _encode(_fp32(boxes), _fp32(targets), means, stds)


def _encode(boxes, targets, means, stds):
    pw = boxes[..., 2] - boxes[..., 0]
    ph = boxes[..., 3] - boxes[..., 1]
    px = (boxes[..., 0] + boxes[..., 2]) * 0.5
    py = (boxes[..., 1] + boxes[..., 3]) * 0.5
    gw = targets[..., 2] - targets[..., 0]
    gh = targets[..., 3] - targets[..., 1]
    gx = (targets[..., 0] + targets[..., 2]) * 0.5
    gy = (targets[..., 1] + targets[..., 3]) * 0.5
    deltas = torch.stack(
        [(gx - px) / pw, (gy - py) / ph,
         torch.log(gw / pw), torch.log(gh / ph)], -1)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def decode_deltas(boxes: Tensor,
                  deltas: Tensor,
                  means: Sequence[float] = (0., 0., 0., 0.),
                  stds: Sequence[float] = (1., 1., 1., 1.),
                  max_shape: Optional[Sequence[int]] = None,
                  wh_clamp: float = WH_CLAMP,
                  clip_border: bool = True,
                  add_ctr_clamp: bool = False,
                  ctr_clamp: float = 32,
                  symmetric_clamp: bool = True) -> Tensor:
    """Apply deltas to boxes. ``boxes`` (N, 4), ``deltas`` (N, 4k) -> (N, 4k) fp32.

    ``dw, dh`` are clamped to ``[-wh_clamp, wh_clamp]`` before ``exp`` (MMDetection);
    ``symmetric_clamp=False`` clamps only from above (torchvision). With ``add_ctr_clamp`` the
    centre shift is limited to ``ctr_clamp`` pixels and ``dw, dh`` only from above (MMDetection).
    ``max_shape = (h, w)`` clips the result when ``clip_border``.
    """
    with torch.autocast(device_type=deltas.device.type, enabled=False):  # a float32 island
        return _decode(_fp32(boxes), _fp32(deltas), means, stds, max_shape, wh_clamp,
                       clip_border, add_ctr_clamp, ctr_clamp, symmetric_clamp)


def _decode(boxes, deltas, means, stds, max_shape, wh_clamp, clip_border, add_ctr_clamp,
            ctr_clamp, symmetric_clamp):
    lead, k4 = deltas.shape[:-1], deltas.shape[-1]
    if deltas.numel() == 0:
        return deltas.clone()
    k = k4 // 4
    d = deltas.reshape(-1, 4) * deltas.new_tensor(stds) + deltas.new_tensor(means)
    b = boxes.reshape(-1, 1, 4).expand(-1, k, 4).reshape(-1, 4)
    pxy = (b[:, :2] + b[:, 2:]) * 0.5
    pwh = b[:, 2:] - b[:, :2]
    dxy_wh = pwh * d[:, :2]
    dwh = d[:, 2:]
    if add_ctr_clamp:
        dxy_wh = dxy_wh.clamp(min=-ctr_clamp, max=ctr_clamp)
        dwh = dwh.clamp(max=wh_clamp)
    elif symmetric_clamp:
        dwh = dwh.clamp(min=-wh_clamp, max=wh_clamp)
    else:
        dwh = dwh.clamp(max=wh_clamp)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if clip_border and max_shape is not None:
        h, w = max_shape[:2]
        out[:, 0::2] = out[:, 0::2].clamp(min=0, max=w)
        out[:, 1::2] = out[:, 1::2].clamp(min=0, max=h)
    return out.reshape(*lead, k4)


@TASK_UTILS.register_module()
class DeltaXYWHBBoxCoder:
    """Encode/decode boxes as normalised centre/size deltas (MMDetection's config name)."""

    def __init__(self,
                 target_means=(0., 0., 0., 0.),
                 target_stds=(1., 1., 1., 1.),
                 clip_border: bool = True,
                 add_ctr_clamp: bool = False,
                 ctr_clamp: float = 32,
                 wh_clamp: float = WH_CLAMP,
                 **kwargs):
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        self.clip_border = clip_border
        self.add_ctr_clamp = add_ctr_clamp
        self.ctr_clamp = ctr_clamp
        self.wh_clamp = wh_clamp
        self.encode_size = 4

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        return encode_deltas(boxes, gt, self.means, self.stds)

    def decode(self,
               boxes: Tensor,
               deltas: Tensor,
               max_shape=None,
               wh_ratio_clip: Optional[float] = None) -> Tensor:
        wh_clamp = self.wh_clamp if wh_ratio_clip is None else abs(math.log(wh_ratio_clip))
        return decode_deltas(boxes, deltas, self.means, self.stds, max_shape, wh_clamp,
                             self.clip_border, self.add_ctr_clamp, self.ctr_clamp)
