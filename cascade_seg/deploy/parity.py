"""How closely two detectors' outputs on the same image agree (ONNX vs PyTorch)."""
import numpy as np

__all__ = ['compare_detections']


def _iou(a, b):
    """Box IoU ``(N, M)`` of xyxy arrays."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]).clip(0) * (x[:, 3] - x[:, 1]).clip(0)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def compare_detections(ref, other, box_iou_thr=0.99, score_atol=1e-3):
    """Match ``other``'s detections to ``ref``'s (dicts of numpy ``bboxes, scores, labels``
    and optionally ``masks`` (N, H, W) bool): each reference detection, best score first,
    takes the unmatched one of the same label with the highest box IoU, if that IoU is at
    least ``box_iou_thr`` and the scores differ by at most ``score_atol``.

    Returns ``dict(num_ref, num_other, matched, matched_fraction (of the larger count),
    max_box_diff, max_score_diff, mask_ious (per matched pair), min_mask_iou)``."""
    a_boxes, b_boxes = (np.asarray(d['bboxes'], np.float64).reshape(-1, 4) for d in (ref, other))
    a_scores, b_scores = (np.asarray(d['scores'], np.float64) for d in (ref, other))
    a_labels, b_labels = (np.asarray(d['labels']).astype(np.int64) for d in (ref, other))
    ious = _iou(a_boxes, b_boxes) if len(a_boxes) and len(b_boxes) else \
        np.zeros((len(a_boxes), len(b_boxes)))
    used = np.zeros(len(b_boxes), bool)
    pairs = []
    for i in np.argsort(-a_scores, kind='stable'):
        cand = np.flatnonzero((b_labels == a_labels[i]) & ~used &
                              (np.abs(b_scores - a_scores[i]) <= score_atol))
        if not len(cand):
            continue
        j = cand[np.argmax(ious[i, cand])]
        if ious[i, j] >= box_iou_thr:
            used[j] = True
            pairs.append((i, j))
    out = dict(num_ref=len(a_boxes), num_other=len(b_boxes), matched=len(pairs),
               matched_fraction=len(pairs) / max(len(a_boxes), len(b_boxes), 1),
               max_box_diff=max((float(np.abs(a_boxes[i] - b_boxes[j]).max())
                                 for i, j in pairs), default=0.0),
               max_score_diff=max((abs(a_scores[i] - b_scores[j]) for i, j in pairs),
                                  default=0.0))
    if 'masks' in ref and 'masks' in other:
        ious_m = []
        for i, j in pairs:
            m1, m2 = np.asarray(ref['masks'][i], bool), np.asarray(other['masks'][j], bool)
            union = np.logical_or(m1, m2).sum()
            ious_m.append(1.0 if union == 0 else np.logical_and(m1, m2).sum() / union)
        out['mask_ious'] = ious_m
        out['min_mask_iou'] = min(ious_m, default=1.0)
        out['mean_mask_iou'] = float(np.mean(ious_m)) if ious_m else 1.0
    return out
