"""Level mapping: which pyramid level each RoI is pooled from. Each rule is a registered
TASK_UTILS class called as ``rule(rois, featmap_strides, img_shapes) -> (K,) level indices``
(0-based into ``featmap_strides``, clamped to the levels there are). A new rule is a new class
here and ``level_mapping=dict(type=...)`` in the extractor's config."""
import math

import torch

from cascade_seg.registry import TASK_UTILS


def _clamp(levels, num_levels):
    # log2(0) = -inf for degenerate boxes: the clamp sends them to the finest level.
    return levels.clamp(min=0, max=num_levels - 1).long()


def roi_scales(rois):
    """``sqrt(w * h)`` of ``(K, 5)`` RoIs."""
    wh = (rois[:, 3:5] - rois[:, 1:3]).clamp(min=0)
    return torch.sqrt(wh[:, 0] * wh[:, 1])


@TASK_UTILS.register_module()
class FinestScaleLevelMapping:
    """MMDetection's rule: ``floor(log2(scale / finest_scale + 1e-6))`` (scale < 2 * finest:
    the first level, < 4 * finest: the second, ...)."""

    def __init__(self, finest_scale=56):
        self.finest_scale = finest_scale

    def __call__(self, rois, featmap_strides, img_shapes=None):
        levels = torch.floor(torch.log2(roi_scales(rois) / self.finest_scale + 1e-6))
        return _clamp(levels, len(featmap_strides))


@TASK_UTILS.register_module()
class CanonicalLevelMapping:
    """The FPN paper's eq. 1 as torchvision's LevelMapper computes it:
    ``floor(k0 + log2(scale / canonical_scale) + eps)``, as an index from the first level's
    stride (level k has stride 2**k)."""

    def __init__(self, canonical_scale=224, canonical_level=4, eps=1e-6):
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.eps = eps

    def __call__(self, rois, featmap_strides, img_shapes=None):
        k = torch.floor(self.canonical_level + torch.log2(roi_scales(rois) / self.canonical_scale)
                        + self.eps)
        return _clamp(k - math.log2(featmap_strides[0]), len(featmap_strides))


@TASK_UTILS.register_module()
class AreaRatioLevelMapping:
    """CenterMask's rule: ``k = clamp(ceil(max_level - log2(A_img / A_box)), min, max)``.

    ``A_img`` is the area of the resized input before padding (``img_shape``); the level is
    relative to the image, not to a fixed canonical size. With the default P3..P5: a box
    covering more than half the image goes to P5, more than a quarter to P4, else P3.
    """

    def __init__(self, max_level=5, eps=1e-6):
        self.max_level = max_level
        self.eps = eps

    def __call__(self, rois, featmap_strides, img_shapes=None):
        if img_shapes is None:
            raise ValueError('AreaRatioLevelMapping needs the images\' shapes (img_shapes)')
        img_area = rois.new_tensor([float(h) * float(w) for h, w in
                                    (tuple(s[:2]) for s in img_shapes)])[rois[:, 0].long()]
        box_area = (rois[:, 3] - rois[:, 1]).clamp(min=0) * (rois[:, 4] - rois[:, 2]).clamp(min=0)
        k = torch.ceil(self.max_level - torch.log2(img_area / (box_area + self.eps)))
        min_level = math.log2(featmap_strides[0])
        k = k.clamp(min=min_level, max=min(self.max_level, min_level + len(featmap_strides) - 1))
        return _clamp(k - min_level, len(featmap_strides))


# Short names kept from the string switch this replaces.
ALIASES = {'mmdet': 'FinestScaleLevelMapping', 'torchvision': 'CanonicalLevelMapping',
           'centermask': 'AreaRatioLevelMapping'}


def build_level_mapping(cfg, finest_scale=56):
    """A rule from ``'mmdet' | 'torchvision' | 'centermask'`` or ``dict(type=..., **kwargs)``."""
    if isinstance(cfg, str):
        if cfg not in ALIASES:
            raise ValueError(f'level_mapping must be one of {sorted(ALIASES)} or a dict with a '
                             f'registered type, got {cfg!r}')
        cfg = dict(type=ALIASES[cfg])
        if cfg['type'] == 'FinestScaleLevelMapping':
            cfg['finest_scale'] = finest_scale
    return TASK_UTILS.build(cfg)
