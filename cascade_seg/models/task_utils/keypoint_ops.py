"""Keypoint targets and decoding for Keypoint R-CNN (Mask R-CNN paper, section 5): each
keypoint is one of ``S x S`` cells of its RoI's heatmap, trained with a softmax over the cells.
"""
import torch
import torch.nn.functional as F


def keypoint_targets(boxes, keypoints, size):
    """Heatmap cell of each keypoint of each RoI.

    Args:
        boxes: ``(N, 4)`` RoIs (x1, y1, x2, y2) in image pixels.
        keypoints: ``(N, K, 3)`` the matched GT's keypoints ``(x, y, v)`` in the same frame.
        size: heatmap side ``S`` (56).
    Returns:
        ``cells (N, K)`` long, the flat index ``y * S + x`` of the cell (0 where invalid), and
        ``valid (N, K)`` bool: labelled (v > 0) and inside the RoI. A keypoint on the RoI's
        right or bottom edge belongs to the last cell.
    """
    x1, y1 = boxes[:, 0:1], boxes[:, 1:2]
    scale_x = size / (boxes[:, 2:3] - x1)
    scale_y = size / (boxes[:, 3:4] - y1)
    x, y = keypoints[..., 0], keypoints[..., 1]
    cx = ((x - x1) * scale_x).floor().long()
    cy = ((y - y1) * scale_y).floor().long()
    cx[x == boxes[:, 2:3]] = size - 1
    cy[y == boxes[:, 3:4]] = size - 1
    valid = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size) & (keypoints[..., 2] > 0)
    cells = torch.where(valid, cy * size + cx, torch.zeros_like(cx))
    return cells, valid


def keypoint_loss(logits, cells, valid, normalizer=None):
    """Cross-entropy over the ``S * S`` cells of each valid keypoint.

    ``logits (N, K, S, S)``; ``normalizer`` None divides the summed loss by the number of
    valid keypoints in the batch (Detectron2's default), a number by that number. A batch
    without a valid keypoint gives 0, still connected to the graph.
    """
    flat = logits.flatten(2)                         # (N, K, S*S)
    if not bool(valid.any()):
        return flat.sum() * 0.0
    loss = F.cross_entropy(flat[valid].float(), cells[valid], reduction='sum')
    return loss / (valid.sum() if normalizer is None else normalizer)


def heatmaps_to_keypoints(heatmaps, boxes):
    """Keypoint positions and scores from per-RoI heatmaps.

    Each ``(K, S, S)`` heatmap is resized (bicubic) to its box's size rounded up, as
    torchvision does; the argmax cell's centre, mapped back into the box, is the keypoint,
    and the resized logit there its score.

    Returns ``keypoints (N, K, 2)`` (x, y in the boxes' frame) and ``scores (N, K)``.
    """
    n, k = heatmaps.shape[:2]
    xy = heatmaps.new_zeros((n, k, 2), dtype=torch.float32)
    scores = heatmaps.new_zeros((n, k), dtype=torch.float32)
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    for i in range(n):
        w, h = int(widths[i].ceil()), int(heights[i].ceil())
        roi_map = F.interpolate(heatmaps[i][:, None].float(), size=(h, w), mode='bicubic',
                                align_corners=False)[:, 0]
        pos = roi_map.reshape(k, -1).argmax(dim=1)
        x_int, y_int = pos % w, torch.div(pos, w, rounding_mode='floor')
        xy[i, :, 0] = (x_int.float() + 0.5) * (widths[i] / w) + boxes[i, 0]
        xy[i, :, 1] = (y_int.float() + 0.5) * (heights[i] / h) + boxes[i, 1]
        scores[i] = roi_map[torch.arange(k, device=roi_map.device), y_int, x_int]
    return xy, scores
