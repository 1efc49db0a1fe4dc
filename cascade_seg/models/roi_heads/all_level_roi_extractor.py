"""PANet's adaptive feature pooling (arXiv 1803.01534, section 3.2): every RoI from every level.

FPN assigns each RoI to one pyramid level by its size; PANet pools each RoI from all levels
and lets the head fuse them after one level-specific layer. The extractor here only pools;
the fusion belongs to the heads (``AFPShared2FCBBoxHead``, ``AFPFCNMaskHead``,
``FFMaskHead``), which take its ``(K, L, C, S, S)`` output.
"""
import torch

from cascade_seg.registry import MODELS

from .roi_extractor import SingleRoIExtractor, rescale_rois

LEVEL_FUSIONS = ('max', 'sum')


def fuse_levels(per_level, fusion='max'):
    """Element-wise fusion of a list of same-shaped tensors, one per pyramid level."""
    if fusion not in LEVEL_FUSIONS:
        raise ValueError(f'fusion must be one of {LEVEL_FUSIONS}, got {fusion!r}')
    out = per_level[0]
    for t in per_level[1:]:
        out = torch.maximum(out, t) if fusion == 'max' else out + t
    return out


def check_level_input(x, num_levels, head):
    """Raise a clear error unless ``x`` is ``(K, num_levels, C, S, S)``."""
    if x.dim() != 5 or x.size(1) != num_levels:
        raise ValueError(
            f'{head} expects RoI features (K, {num_levels}, C, S, S) pooled from every level '
            f'(AllLevelRoIExtractor with {num_levels} featmap_strides), got {tuple(x.shape)}')


@MODELS.register_module()
class AllLevelRoIExtractor(SingleRoIExtractor):
    """Pool each RoI from every pyramid level: ``(K, 5)`` rois -> ``(K, L, C, *output_size)``.

    Same arguments as :class:`SingleRoIExtractor` (``roi_layer``, ``out_channels``,
    ``featmap_strides``, ``gc_context``); ``finest_scale`` and ``level_mapping`` are accepted
    and unused, since no level is chosen, and so is ``forward``'s ``img_shapes``.
    ``L = len(featmap_strides)``; level ``l`` of the output is the RoI pooled from ``feats[l]``
    at stride ``featmap_strides[l]``.
    """

    def forward(self, feats, rois, roi_scale_factor=None, img_shapes=None):
        feats = feats[:self.num_inputs]
        ref = feats[0]
        if ref.dtype == torch.float64:
            rois = rois.double()  # never lower: RoIAlign keeps coordinates in at least float32
        if roi_scale_factor is not None:
            rois = rescale_rois(rois, roi_scale_factor)
        if rois.size(0) == 0:
            # keep the levels in the graph: an image without RoIs still trains the FPN
            # without unused-parameter complaints under DDP
            empty = ref.new_zeros((0, len(feats), ref.size(1), *self.output_size))
            return empty + sum(f.sum() * 0. for f in feats) if self.training else empty
        pooled = []
        for lvl, feat in enumerate(feats):
            out = self.roi_layers[lvl](feat, rois)
            if self.gc_context:
                out = out + feat.mean(dim=(2, 3))[rois[:, 0].long()][:, :, None, None]
            pooled.append(out.to(ref.dtype))
        return torch.stack(pooled, dim=1)
