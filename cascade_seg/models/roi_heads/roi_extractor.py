"""RoI feature extractor: map each RoI to one pyramid level, pool it with torchvision ops."""
import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import RoIPool

from cascade_seg.registry import MODELS

from ..tracing import is_tracing
from .level_mapping import build_level_mapping
from .roi_align import roi_align, roi_align_window_mean


def map_roi_levels(rois, num_levels, finest_scale=56, mode='mmdet', finest_stride=4):
    """Pyramid level (0-based) of each RoI ``(K, 5)`` under the rule named by ``mode``
    (``'mmdet'`` or ``'torchvision'``, see level_mapping.py), for ``num_levels`` levels whose
    first has stride ``finest_stride``."""
    rule = build_level_mapping(mode, finest_scale)
    return rule(rois, [finest_stride * 2 ** i for i in range(num_levels)])


def rescale_rois(rois, scale_factor):
    """Scale ``(K, 5)`` RoIs' width and height by ``scale_factor`` about their centres."""
    cxy = (rois[:, 1:3] + rois[:, 3:5]) * 0.5
    half = (rois[:, 3:5] - rois[:, 1:3]) * (0.5 * scale_factor)
    return torch.cat([rois[:, :1], cxy - half, cxy + half], dim=1)


class RoIAlign(nn.Module):
    """torchvision's RoIAlign, with a faster CPU training path (see roi_align.py)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio=0, aligned=True):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, feat, rois):
        return roi_align(feat, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)

    def forward_into(self, out, rows, feat, rois):
        """``out[rows] = self(feat, rois)``, at CPU inference without the intermediate map."""
        return roi_align(feat, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned, out=out, rows=rows)

    def extra_repr(self):
        return (f'output_size={self.output_size}, spatial_scale={self.spatial_scale}, '
                f'sampling_ratio={self.sampling_ratio}, aligned={self.aligned}')


class _RowScatter(torch.autograd.Function):
    """``out[rows[i]] = parts[i]`` for every part (the rows cover the output); the backward
    gathers each part's rows of the gradient. Through autograd's ``index_put_``, every level
    after the first would clone the whole output's gradient and zero its rows (Mask R-CNN: 3
    clones of 512 x 256 x 7 x 7 per step). ``extra`` inputs (levels without RoIs) get a zero
    gradient, which keeps them in the autograd graph (DDP without find_unused_parameters)
    without an in-place op on a slice of the output (whose backward clones it again)."""

    @staticmethod
    def forward(ctx, shape, rows, num_parts, *tensors):
        out = tensors[0].new_empty(shape)
        for inds, part in zip(rows, tensors[:num_parts]):
            out[inds] = part
        ctx.rows = rows
        ctx.extra = [(t.shape, t.dtype, t.device) for t in tensors[num_parts:]]
        return out

    @staticmethod
    def backward(ctx, grad):
        parts = tuple(grad.index_select(0, inds) for inds in ctx.rows)
        extra = tuple(torch.zeros(shape, dtype=dtype, device=device)
                      for shape, dtype, device in ctx.extra)
        return (None, None, None) + parts + extra


@MODELS.register_module()
class SingleRoIExtractor(nn.Module):
    """Pool each RoI from the single FPN level its size maps to.

    Args:
        roi_layer: ``dict(type='RoIAlign', output_size, sampling_ratio=0, aligned=True)`` or
            ``dict(type='RoIPool', output_size)`` (torchvision ops).
        out_channels: channels of the input features (and of the output).
        featmap_strides: stride of each level used; ``num_inputs = len(featmap_strides)``.
        finest_scale: RoI scale mapped to level 0 (``'mmdet'`` mapping).
        level_mapping: the rule that picks each RoI's level: ``'mmdet'``, ``'torchvision'``,
            ``'centermask'`` or ``dict(type=<registered rule>, ...)`` (see level_mapping.py).
        gc_context: add each image's globally averaged level feature to its RoI features.
    """

    def __init__(self, roi_layer, out_channels, featmap_strides, finest_scale=56,
                 level_mapping='mmdet', gc_context=False, init_cfg=None):
        super().__init__()
        self.out_channels = out_channels
        self.featmap_strides = list(featmap_strides)
        self.finest_scale = finest_scale
        self.level_mapping = build_level_mapping(level_mapping, finest_scale)
        self.gc_context = gc_context
        self.roi_layers = nn.ModuleList(self._build_roi_layer(roi_layer, s)
                                        for s in self.featmap_strides)
        self.output_size = _pair(roi_layer['output_size'])

    @staticmethod
    def _build_roi_layer(cfg, stride):
        cfg = dict(cfg)
        layer_type = cfg.pop('type')
        output_size = _pair(cfg.pop('output_size'))
        if layer_type == 'RoIAlign':
            cfg.pop('use_torchvision', None)
            if cfg.pop('pool_mode', 'avg') != 'avg':
                raise ValueError('only pool_mode="avg" RoIAlign is supported')
            return RoIAlign(output_size, spatial_scale=1.0 / stride,
                            sampling_ratio=cfg.pop('sampling_ratio', 0),
                            aligned=cfg.pop('aligned', True))
        if layer_type == 'RoIPool':
            return RoIPool(output_size, spatial_scale=1.0 / stride)
        raise KeyError(f"roi_layer type must be 'RoIAlign' or 'RoIPool', got {layer_type!r}")

    @property
    def num_inputs(self):
        return len(self.featmap_strides)

    def map_roi_levels(self, rois, num_levels, img_shapes=None):
        return self.level_mapping(rois, self.featmap_strides[:num_levels], img_shapes)

    def pool_mean(self, feats, rois, size):
        """``avg_pool_to(self(feats, rois), size)`` (``size`` dividing ``output_size``):
        for one RoIAlign level without context, computed at ``size`` in one separable pass
        (see ``roi_align_window_mean``), the way HTC's semantic context is pooled: every RoI
        on a stride-8 map, where torchvision's kernel spends up to 25 samples per bin."""
        from .roi_features import avg_pool_to
        (oh, ow), (h, w) = self.output_size, tuple(size)
        layer = self.roi_layers[0]
        if (self.num_inputs != 1 or self.gc_context or not isinstance(layer, RoIAlign)
                or oh % h or ow % w or is_tracing()):
            return avg_pool_to(self(feats, rois), size)
        ref = feats[0]
        out = roi_align_window_mean(ref, rois, (h, w), layer.spatial_scale,
                                    layer.sampling_ratio, layer.aligned, (oh // h, ow // w))
        return out.to(ref.dtype)

    def forward(self, feats, rois, roi_scale_factor=None, img_shapes=None):
        """Per-level ``(B, C, H, W)`` feats and ``(K, 5)`` rois -> ``(K, C, *output_size)``.

        ``img_shapes`` (per image, network input before padding) is passed to level-mapping
        rules that need it."""
        feats = feats[:self.num_inputs]
        num_levels = len(feats)
        ref = feats[0]
        if ref.dtype == torch.float64:
            rois = rois.double()  # never lower: RoIAlign keeps coordinates in at least float32
        if roi_scale_factor is not None:
            rois = rescale_rois(rois, roi_scale_factor)
        contexts = [f.mean(dim=(2, 3)) for f in feats] if self.gc_context else None
        if num_levels == 1:
            # One level (e.g. HTC's semantic feature): pool directly, without the zero-filled
            # output and scatter (for 512 RoIs at 14x14 that is 100 MB written twice, and again
            # in backward).
            pooled = self.roi_layers[0](ref, rois)
            if contexts is not None:
                pooled = pooled + contexts[0][rois[:, 0].long()][:, :, None, None]
            return pooled.to(ref.dtype)
        # every RoI gets a level (the rules clamp), so every row is written
        shape = (rois.size(0), ref.size(1), *self.output_size)
        with_grad = torch.is_grad_enabled() and any(f.requires_grad for f in feats) and \
            not is_tracing()
        out = None if with_grad else ref.new_empty(shape)
        target_lvls = self.map_roi_levels(rois, num_levels, img_shapes)
        rows, parts, unused = [], [], []
        for lvl, feat in enumerate(feats):
            inds = torch.nonzero(target_lvls == lvl, as_tuple=True)[0]
            if inds.numel() == 0:
                if with_grad and feat.requires_grad:
                    unused.append(feat)
                continue
            level_rois = rois[inds]
            layer = self.roi_layers[lvl]
            if out is not None and contexts is None and isinstance(layer, RoIAlign):
                layer.forward_into(out, inds, feat, level_rois)
                continue
            pooled = layer(feat, level_rois)
            if contexts is not None:
                img_inds = level_rois[:, 0].long()
                pooled = pooled + contexts[lvl][img_inds][:, :, None, None]
            rows.append(inds)
            parts.append(pooled.to(ref.dtype))
        if out is None:
            # levels without RoIs stay in the autograd graph through a zero gradient
            return _RowScatter.apply(shape, tuple(rows), len(parts), *parts, *unused)
        for inds, pooled in zip(rows, parts):
            out[inds] = pooled
        return out
