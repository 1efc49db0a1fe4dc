"""Undoing test-time augmentation (flips, resizes) on what the heads predict: pure functions
on tensors and a data sample's ``metainfo`` (``flip``, ``flip_direction``, ``img_shape``,
``scale_factor``, ``flip_indices``)."""
import torch

from .boxes import flip_boxes


def flip_direction(meta):
    """The flip a copy went through, or None."""
    return meta.get('flip_direction') if meta.get('flip') else None


def scale_of(meta):
    sw, sh = meta.get('scale_factor', (1.0, 1.0))
    return float(sw), float(sh)


def boxes_to_original(boxes, meta):
    """Boxes of an augmented copy's network-input frame -> the original image."""
    sw, sh = scale_of(meta)
    if flip_direction(meta):
        boxes = flip_boxes(boxes, meta['img_shape'], flip_direction(meta))
    return boxes / boxes.new_tensor([sw, sh, sw, sh])


def boxes_to_augmented(boxes, meta):
    """Boxes of the original image -> an augmented copy's network-input frame."""
    sw, sh = scale_of(meta)
    boxes = boxes * boxes.new_tensor([sw, sh, sw, sh])
    return flip_boxes(boxes, meta['img_shape'], flip_direction(meta)) if flip_direction(meta) \
        else boxes


def unflip_grid(maps, direction):
    """Per-RoI maps ``(K, M, M)`` of a flipped copy, back in the unflipped RoI's grid (a flip
    of the image is the same flip of each RoI's grid)."""
    if direction in ('horizontal', 'diagonal'):
        maps = maps.flip(-1)
    if direction in ('vertical', 'diagonal'):
        maps = maps.flip(-2)
    return maps


def keypoints_to_original(xy, scores, meta):
    """Keypoints ``(K, P, 2)`` decoded in a copy's input frame, back in the original image:
    mirrored as ``RandomFlip`` mirrors them, left/right keypoints swapped with the sample's
    ``flip_indices``, divided by the scale."""
    direction = flip_direction(meta)
    if direction:
        h, w = float(meta['img_shape'][0]), float(meta['img_shape'][1])
        xy = xy.clone()
        if direction in ('horizontal', 'diagonal'):
            xy[..., 0] = w - xy[..., 0]
        if direction in ('vertical', 'diagonal'):
            xy[..., 1] = h - xy[..., 1]
        if direction in ('horizontal', 'vertical'):
            flip_indices = meta.get('flip_indices')
            if flip_indices is None:
                raise ValueError('test-time flipping of keypoints needs flip_indices in the data '
                                 "samples (add 'flip_indices' to PackDetInputs' meta_keys in "
                                 'the tta_pipeline)')
            order = torch.as_tensor(list(flip_indices), device=xy.device)
            xy, scores = xy[:, order], scores[:, order]
    sw, sh = scale_of(meta)
    return xy / xy.new_tensor([sw, sh]), scores


def per_image(num_per_img):
    """Slices of each image's rows in a batch-concatenated tensor."""
    out, start = [], 0
    for n in num_per_img:
        out.append(slice(start, start + n))
        start += n
    return out
