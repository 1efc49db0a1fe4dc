"""Multi-level anchor generator (MMDetection's AnchorGenerator semantics)."""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from cascade_seg.registry import TASK_UTILS

__all__ = ['AnchorGenerator', 'base_anchors']


def base_anchors(base_size: float,
                 scales: Tensor,
                 ratios: Tensor,
                 center: Tuple[float, float] = (0., 0.),
                 scale_major: bool = True) -> Tensor:
    """(A, 4) anchors around ``center``: ``w = base_size / sqrt(ratio) * scale``,
    ``h = base_size * sqrt(ratio) * scale``; ratio-major then scale when ``scale_major``."""
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    if scale_major:
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    else:
        ws = (base_size * scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (base_size * scales[:, None] * h_ratios[None, :]).reshape(-1)
    cx, cy = center
    return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)


def _pair(x) -> Tuple[float, float]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


@TASK_UTILS.register_module()
class AnchorGenerator:
    """Anchors for every location of every feature level.

    ``grid_priors`` returns per level ``(H * W * A, 4)``, location-major (row by row), then the
    A base anchors. ``round_base_anchors=True`` rounds base anchors to integers, which makes
    the output identical to torchvision's ``AnchorGenerator`` with ``sizes = stride * scale``.
    """

    def __init__(self,
                 strides: Sequence[Union[int, Sequence[int]]],
                 ratios: Sequence[float],
                 scales: Optional[Sequence[float]] = None,
                 base_sizes: Optional[Sequence[float]] = None,
                 scale_major: bool = True,
                 octave_base_scale: Optional[float] = None,
                 scales_per_octave: Optional[int] = None,
                 centers=None,
                 center_offset: float = 0.,
                 round_base_anchors: bool = False,
                 **kwargs):
        self.strides = [_pair(s) for s in strides]
        self.base_sizes = list(base_sizes) if base_sizes is not None else [
            min(s) for s in self.strides
        ]
        assert len(self.base_sizes) == len(self.strides)
        if scales is not None:
            self.scales = torch.tensor(scales, dtype=torch.float32)
        elif octave_base_scale is not None and scales_per_octave is not None:
            octave = torch.tensor([2**(i / scales_per_octave) for i in range(scales_per_octave)])
            self.scales = octave * octave_base_scale
        else:
            raise ValueError('give either scales or octave_base_scale + scales_per_octave')
        self.ratios = torch.tensor(ratios, dtype=torch.float32)
        self.scale_major = scale_major
        self.centers = centers
        self.center_offset = center_offset
        self.round_base_anchors = round_base_anchors
        self.base_anchors = self._base_anchors()

    def _base_anchors(self) -> List[Tensor]:
        out = []
        for i, size in enumerate(self.base_sizes):
            if self.centers is not None:
                center = tuple(self.centers[i])
            else:
                center = (self.center_offset * size, self.center_offset * size)
            anchors = base_anchors(size, self.scales, self.ratios, center, self.scale_major)
            out.append(anchors.round() if self.round_base_anchors else anchors)
        return out

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_priors(self) -> List[int]:
        return [a.shape[0] for a in self.base_anchors]

    num_base_anchors = num_base_priors

    def single_level_grid_priors(self,
                                 featmap_size: Sequence[int],
                                 level_idx: int,
                                 dtype=torch.float32,
                                 device='cpu') -> Tensor:
        h, w = featmap_size[-2:]
        sw, sh = self.strides[level_idx]
        base = self.base_anchors[level_idx].to(device=device, dtype=dtype)
        shift_x = torch.arange(0, w, device=device).to(dtype) * sw
        shift_y = torch.arange(0, h, device=device).to(dtype) * sh
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing='ij')
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def grid_priors(self,
                    featmap_sizes: Sequence[Sequence[int]],
                    dtype=torch.float32,
                    device='cpu') -> List[Tensor]:
        if isinstance(dtype, (str, torch.device)):  # allow grid_priors(sizes, device)
            dtype, device = torch.float32, dtype
        assert len(featmap_sizes) == self.num_levels
        return [
            self.single_level_grid_priors(s, i, dtype, device) for i, s in enumerate(featmap_sizes)
        ]

    def valid_flags(self,
                    featmap_sizes: Sequence[Sequence[int]],
                    pad_shape: Sequence[int],
                    device='cpu') -> List[Tensor]:
        """Per level (H * W * A,) bool: the anchor's cell lies inside ``pad_shape = (h, w)``."""
        flags = []
        for i, size in enumerate(featmap_sizes):
            fh, fw = size[-2:]
            sw, sh = self.strides[i]
            vh = min(int(math.ceil(pad_shape[0] / sh)), fh)
            vw = min(int(math.ceil(pad_shape[1] / sw)), fw)
            vx = torch.arange(fw, device=device) < vw
            vy = torch.arange(fh, device=device) < vh
            valid = (vy[:, None] & vx[None, :]).reshape(-1)
            flags.append(valid[:, None].expand(-1, self.num_base_priors[i]).reshape(-1))
        return flags
