"""Draw instance predictions (masks, boxes, class names, scores) on a BGR image with cv2."""
import colorsys

import cv2
import numpy as np

__all__ = ['class_color', 'draw_arrays', 'draw_instances', 'draw_det_data_sample',
           'select_instances', 'draw_prediction']


def class_color(label):
    """A distinct, deterministic BGR colour per class (golden-ratio hue steps)."""
    hue = (0.13 + 0.618034 * int(label)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def _numpy(x):
    if x is None:
        return None
    return x.detach().cpu().numpy() if hasattr(x, 'detach') else np.asarray(x)


def _fit(mask, shape):
    """Crop or zero-pad a mask to ``shape`` (e.g. batch-padded GT masks)."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    mh, mw = min(h, mask.shape[0]), min(w, mask.shape[1])
    out[:mh, :mw] = mask[:mh, :mw]
    return out


def _put_label(img, text, x, y, color):
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    y_top = max(y - th - base - 2, 0)  # keep the label inside the image
    x = max(min(x, img.shape[1] - tw - 2), 0)
    cv2.rectangle(img, (x, y_top), (x + tw + 2, y_top + th + base + 2), color, -1)
    luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    text_color = (0, 0, 0) if luma > 128 else (255, 255, 255)
    cv2.putText(img, text, (x + 1, y_top + th + 1), font, scale, text_color, thick, cv2.LINE_AA)


def draw_arrays(img, bboxes=None, labels=None, scores=None, masks=None, class_names=None,
                score_thr=0.3, alpha=0.5, thickness=1):
    """Return a copy of ``img`` (H, W, 3 uint8 BGR) with the instances drawn.

    Masks are blended in their class colour with opacity ``alpha`` and outlined;
    boxes are drawn with a ``"name score"`` tag. Instances scoring below
    ``score_thr`` are skipped (all are drawn when ``scores`` is None).
    """
    out = np.ascontiguousarray(img, dtype=np.uint8).copy()
    bboxes, labels, scores, masks = map(_numpy, (bboxes, labels, scores, masks))
    n = next((len(a) for a in (bboxes, labels, masks) if a is not None), 0)
    keep = np.arange(n) if scores is None else np.flatnonzero(scores >= score_thr)
    # Draw low scores first so the most confident instances end up on top.
    if scores is not None:
        keep = keep[np.argsort(scores[keep], kind='stable')]
    for i in keep:
        label = int(labels[i]) if labels is not None else 0
        color = class_color(label)
        if masks is not None:
            m = _fit(masks[i].astype(bool), out.shape[:2])
            out[m] = (out[m] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, color, 1)
        if bboxes is not None:
            x1, y1, x2, y2 = (int(round(float(v))) for v in bboxes[i][:4])
            cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
            name = class_names[label] if class_names is not None and label < len(class_names) \
                else str(label)
            text = name if scores is None else f'{name} {float(scores[i]):.2f}'
            _put_label(out, text, max(x1, 0), max(y1, 0), color)
    return out


def draw_instances(img, instances, class_names=None, score_thr=0.3, alpha=0.5, thickness=1):
    """Draw an InstanceData (or dict) with any of ``bboxes, labels, scores, masks``."""
    get = instances.get if hasattr(instances, 'get') else \
        (lambda k, d=None: getattr(instances, k, d))
    return draw_arrays(img, get('bboxes', None), get('labels', None), get('scores', None),
                       get('masks', None), class_names, score_thr, alpha, thickness)


def draw_det_data_sample(img, data_sample, class_names=None, score_thr=0.3, alpha=0.5):
    """Draw ``data_sample.pred_instances`` (or ``gt_instances`` when there are no predictions)."""
    inst = data_sample.get('pred_instances', None)
    if inst is None:
        inst = data_sample.get('gt_instances', None)
    if inst is None:
        return np.ascontiguousarray(img).copy()
    return draw_instances(img, inst, class_names, score_thr, alpha)


def select_instances(instances, score_thr=0.3, top_k=None):
    """Indices of the predictions to draw, most confident first: those scoring at least
    ``score_thr``; with ``top_k``, the ``top_k`` most confident whatever their score (for
    models whose scores are still low)."""
    get = instances.get if hasattr(instances, 'get') else \
        (lambda k, d=None: getattr(instances, k, d))
    scores = _numpy(get('scores', None))
    if scores is None:
        n = next((len(a) for a in map(lambda k: get(k, None), ('bboxes', 'labels', 'masks'))
                  if a is not None), 0)
        return np.arange(n if top_k is None else min(n, top_k))
    order = np.argsort(-scores, kind='stable')
    if top_k is not None:
        return order[:top_k]
    return order[scores[order] >= score_thr]


def draw_prediction(img, instances, class_names=None, score_thr=0.3, top_k=None, scale=1.0,
                    alpha=0.5, thickness=1):
    """A trained model's predictions on ``img`` (BGR): filled translucent masks with their
    contour, boxes, ``"class score"`` labels, for the instances :func:`select_instances`
    keeps. ``scale`` enlarges the image first (nearest neighbour, so pixels stay visible)
    and draws at that size, keeping thin lines and text legible on small images.

    Returns ``(canvas, number of instances drawn)``; with none the canvas is the (resized)
    input, unchanged.
    """
    get = instances.get if hasattr(instances, 'get') else \
        (lambda k, d=None: getattr(instances, k, d))
    keep = select_instances(instances, score_thr, top_k)
    canvas = np.ascontiguousarray(img, dtype=np.uint8)
    if scale != 1:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    else:
        canvas = canvas.copy()
    if not len(keep):
        return canvas, 0
    arrays = {k: _numpy(get(k, None)) for k in ('bboxes', 'labels', 'scores', 'masks')}
    arrays = {k: (v[keep] if v is not None else None) for k, v in arrays.items()}
    if scale != 1:
        if arrays['bboxes'] is not None:
            arrays['bboxes'] = arrays['bboxes'][:, :4].astype(np.float64) * scale
        if arrays['masks'] is not None:
            arrays['masks'] = np.stack([
                cv2.resize(m.astype(np.uint8), (int(round(m.shape[1] * scale)),
                                                int(round(m.shape[0] * scale))),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
                for m in arrays['masks']]) if len(arrays['masks']) else arrays['masks']
    drawn = draw_arrays(canvas, arrays['bboxes'], arrays['labels'], arrays['scores'],
                        arrays['masks'], class_names, score_thr=-np.inf, alpha=alpha,
                        thickness=thickness)
    return drawn, len(keep)
