"""RoI features of one batch: any extractor, plus optional whole-image context (HTC's semantic
feature), with each (extractor, RoIs) pooled once per forward pass.

The box stages and the task branches ask for RoI features through one object, so that context
such as HTC's semantic feature is a wrapper around extraction rather than an argument threaded
through every method.
"""
import torch
import torch.nn.functional as F


def _pool_matrix(size, out, like):
    """``(out, size)`` averaging matrix of a whole-number pooling factor."""
    f = size // out
    m = torch.zeros(out, size, dtype=like.dtype, device=like.device)
    for i in range(out):
        m[i, i * f:(i + 1) * f] = 1.0 / f
    return m


def avg_pool_to(x, size):
    """``F.adaptive_avg_pool2d(x, size)``; for whole-number factors (HTC: 14 -> 7) two matmuls
    with averaging matrices: fast on CPU in both directions (avg_pool2d's backward is slower
    in bf16, a reshape-mean over the interleaved window dims 20x slower), and backward keeps
    no copy of ``x`` (100 MB per HTC stage at R50 width), only the half-pooled intermediate."""
    (h, w), (oh, ow) = x.shape[-2:], size
    if h % oh or w % ow:
        return F.adaptive_avg_pool2d(x, size)
    if (h, w) == (oh, ow):
        return x
    return _pool_matrix(h, oh, x) @ x @ _pool_matrix(w, ow, x).t()


class SemanticContext:
    """HTC's semantic fusion: the whole-image semantic feature, pooled at each RoI by its own
    extractor and resized to the RoI feature size, is added to the RoI features of the tasks
    in ``tasks`` (e.g. ``('bbox', 'mask')``)."""

    def __init__(self, semantic_feat, extractor, tasks):
        # pooled by RoIAlign in float32 (the semantic head's convs may run in bf16)
        self.semantic_feat = semantic_feat if semantic_feat.dtype == torch.float64 else \
            semantic_feat.float()
        self.extractor = extractor
        self.tasks = tuple(tasks)

    def __call__(self, roi_feats, rois, task):
        if task not in self.tasks:
            return roi_feats
        size = roi_feats.shape[-2:]
        pool_mean = getattr(self.extractor, 'pool_mean', None)
        if pool_mean is not None:  # RoIAlign and the mean to ``size`` in one separable pass
            sem = pool_mean([self.semantic_feat], rois, size)
        else:
            sem = self.extractor([self.semantic_feat], rois)
            if sem.shape[-2:] != size:
                sem = avg_pool_to(sem, size) if sem.numel() else sem.new_zeros(
                    (sem.size(0), sem.size(1), *size))
        if roi_feats.dim() == sem.dim() + 1:  # (K, L, C, S, S): every level gets the context
            sem = sem[:, None]
        return roi_feats + sem


class RoIFeatures:
    """Pyramid features ``feats`` of a batch with the images' ``img_shapes`` and an optional
    ``context(roi_feats, rois, task) -> roi_feats``.

    ``pool(extractor, rois, task)`` extracts and adds the context; ``cached=True`` reuses
    what the same extractor module already pooled for the same ``rois`` tensor in this pass
    (test time: every mask stage pools the final detections).
    """

    def __init__(self, feats, img_shapes=None, context=None):
        self.feats = feats
        self.img_shapes = img_shapes
        self.context = context
        self._cache = {}

    def __len__(self):
        return len(self.feats)

    def __getitem__(self, i):
        return self.feats[i]

    def raw(self, extractor, rois):
        """The extractor's output without context."""
        return extractor(self.feats, rois, img_shapes=self.img_shapes)

    def with_context(self, roi_feats, rois, task):
        return roi_feats if self.context is None else self.context(roi_feats, rois, task)

    def pool(self, extractor, rois, task, cached=False):
        if not cached:
            return self.with_context(self.raw(extractor, rois), rois, task)
        key = (id(extractor), id(rois), task)
        hit = self._cache.get(key)
        if hit is None or hit[0] is not extractor or hit[1] is not rois:
            hit = (extractor, rois, self.with_context(self.raw(extractor, rois), rois, task))
            self._cache[key] = hit
        return hit[2]


def as_roi_features(x, img_shapes=None):
    """``x`` as :class:`RoIFeatures` (a plain sequence of level features gets no context)."""
    return x if isinstance(x, RoIFeatures) else RoIFeatures(x, img_shapes)
