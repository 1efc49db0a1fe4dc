"""Geometric transforms on image, boxes, masks, semantic map and keypoints."""
import random

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from ...registry import TRANSFORMS

_CV2_MAX_CHANNELS = 128  # cv2.resize rejects arrays with more channels than this


def rescale_size(w: int, h: int, scale) -> tuple:
    """Keep-ratio target (w, h): longest edge <= max(scale), shortest <= min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def resize_masks(masks: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W) masks to (N, h, w), ``size`` = (w, h)."""
    n = masks.shape[0]
    if n == 0:
        return np.zeros((0, size[1], size[0]), masks.dtype)
    chunks = []
    for start in range(0, n, _CV2_MAX_CHANNELS):
        chunk = masks[start:start + _CV2_MAX_CHANNELS].transpose(1, 2, 0)
        out = cv2.resize(np.ascontiguousarray(chunk), size, interpolation=cv2.INTER_NEAREST)
        chunks.append(out.reshape(size[1], size[0], -1).transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(chunks))


def flip_boxes_np(boxes: np.ndarray, img_shape, direction: str) -> np.ndarray:
    """Flip xyxy boxes inside an image of shape (h, w)."""
    h, w = img_shape
    out = boxes.copy()
    if direction in ('horizontal', 'diagonal'):
        out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    if direction in ('vertical', 'diagonal'):
        out[:, 1], out[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    return out


def flip_keypoints_np(kpts: np.ndarray, img_shape, direction: str, flip_indices=None):
    """Flip (N, K, 3) keypoints; horizontal flips also swap left/right via ``flip_indices``.

    Unlabelled keypoints (v == 0) keep their coordinates so that they stay all-zero.
    """
    h, w = img_shape
    out = kpts.copy()
    labelled = kpts[..., 2] > 0
    if direction in ('horizontal', 'diagonal'):
        out[..., 0] = np.where(labelled, w - kpts[..., 0], kpts[..., 0])
        if kpts.shape[1]:
            if flip_indices is None:
                raise ValueError('flipping keypoints horizontally needs flip_indices (a left/right '
                                 'permutation) in RandomFlip(...) or in the dataset metainfo')
            out = out[:, list(flip_indices)]
    if direction in ('vertical', 'diagonal'):
        out[..., 1] = np.where(out[..., 2] > 0, h - out[..., 1], out[..., 1])
    return out


def _flip_array(arr: np.ndarray, direction: str, axis_h: int, axis_w: int) -> np.ndarray:
    if direction in ('horizontal', 'diagonal'):
        arr = np.flip(arr, axis_w)
    if direction in ('vertical', 'diagonal'):
        arr = np.flip(arr, axis_h)
    return np.ascontiguousarray(arr)


@TRANSFORMS.register_module()
class Resize(BaseTransform):
    """Resize image and every annotation.

    ``scale``: with ``keep_ratio`` a (long, short) edge limit as in MMDetection,
    else the exact output (w, h). A list of scales picks one at random per
    sample (multi-scale training, like MMDetection's ``RandomChoiceResize``).
    Records ``scale`` (w, h), ``scale_factor`` (w_scale, h_scale), ``img_shape``.
    """

    def __init__(self, scale=(1333, 800), keep_ratio=True, clip_object_border=True,
                 interpolation='bilinear'):
        scales = scale if isinstance(scale, list) else [scale]
        if not scales or any(len(s) != 2 for s in scales):
            raise ValueError(f'scale must be a (w, h) pair or a list of them, got {scale!r}')
        self.scales = [tuple(s) for s in scales]
        self.keep_ratio = keep_ratio
        self.clip_object_border = clip_object_border
        self.interpolation = {'bilinear': cv2.INTER_LINEAR, 'nearest': cv2.INTER_NEAREST,
                              'bicubic': cv2.INTER_CUBIC, 'area': cv2.INTER_AREA}[interpolation]

    def transform(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        scale = random.choice(self.scales) if len(self.scales) > 1 else self.scales[0]
        new_w, new_h = rescale_size(w, h, scale) if self.keep_ratio else scale
        sw, sh = new_w / w, new_h / h
        img = cv2.resize(results['img'], (new_w, new_h), interpolation=self.interpolation)
        if img.ndim == 2:  # cv2 drops a trailing channel of size 1
            img = img[..., None]
        results.update(img=img, img_shape=(new_h, new_w), scale=(new_w, new_h),
                       scale_factor=(sw, sh), keep_ratio=self.keep_ratio)
        if 'gt_bboxes' in results:
            boxes = results['gt_bboxes'] * np.array([sw, sh, sw, sh], np.float32)
            if self.clip_object_border:
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, new_w)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, new_h)
            results['gt_bboxes'] = boxes.astype(np.float32)
        if 'gt_masks' in results:
            results['gt_masks'] = resize_masks(results['gt_masks'], (new_w, new_h))
        if 'gt_seg_map' in results:
            results['gt_seg_map'] = cv2.resize(results['gt_seg_map'], (new_w, new_h),
                                               interpolation=cv2.INTER_NEAREST)
        if 'gt_keypoints' in results:
            kpts = results['gt_keypoints'].copy()
            kpts[..., 0] *= sw
            kpts[..., 1] *= sh
            results['gt_keypoints'] = kpts
        return results

    def __repr__(self):
        scale = self.scales if len(self.scales) > 1 else self.scales[0]
        return f'{type(self).__name__}(scale={scale}, keep_ratio={self.keep_ratio})'


@TRANSFORMS.register_module()
class RandomFlip(BaseTransform):
    """Flip with probability ``prob``; ``direction``: horizontal | vertical | diagonal.

    Keypoints swap left/right with ``flip_indices`` (argument, else ``results['flip_indices']``,
    which CocoDataset fills from the category's keypoint names).
    """

    DIRECTIONS = ('horizontal', 'vertical', 'diagonal')

    def __init__(self, prob=0.5, direction='horizontal', flip_indices=None):
        if not 0 <= prob <= 1:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        if direction not in self.DIRECTIONS:
            raise ValueError(f'direction must be one of {self.DIRECTIONS}, got {direction!r}')
        self.prob = prob
        self.direction = direction
        self.flip_indices = flip_indices

    def transform(self, results: dict) -> dict:
        flip = random.random() < self.prob
        results.update(flip=flip, flip_direction=self.direction if flip else None)
        if not flip:
            return results
        d, img_shape = self.direction, results['img'].shape[:2]
        results['img'] = _flip_array(results['img'], d, 0, 1)
        if 'gt_bboxes' in results:
            results['gt_bboxes'] = flip_boxes_np(results['gt_bboxes'], img_shape, d)
        if 'gt_masks' in results:
            results['gt_masks'] = _flip_array(results['gt_masks'], d, 1, 2)
        if 'gt_seg_map' in results:
            results['gt_seg_map'] = _flip_array(results['gt_seg_map'], d, 0, 1)
        if 'gt_keypoints' in results:
            flip_indices = self.flip_indices or results.get('flip_indices')
            results['gt_keypoints'] = flip_keypoints_np(results['gt_keypoints'], img_shape, d,
                                                        flip_indices)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(prob={self.prob}, direction={self.direction!r})'


@TRANSFORMS.register_module()
class Pad(BaseTransform):
    """Pad bottom/right to a fixed ``size`` (w, h) or to a multiple of ``size_divisor``.

    Pads ``img`` (pad_val['img']), ``gt_masks`` (0) and ``gt_seg_map`` (pad_val['seg']);
    records ``pad_shape``. ``img_shape`` keeps the unpadded size (design.md).
    """

    def __init__(self, size=None, size_divisor=None, pad_val=dict(img=0, seg=255)):
        if (size is None) == (size_divisor is None):
            raise ValueError('give exactly one of size and size_divisor')
        self.size = size
        self.size_divisor = size_divisor
        if not isinstance(pad_val, dict):
            pad_val = dict(img=pad_val)
        self.pad_val = dict(img=pad_val.get('img', 0), seg=pad_val.get('seg', 255))

    def _target(self, h, w):
        if self.size is not None:
            tw, th = self.size
            if th < h or tw < w:
                raise ValueError(f'Pad size (w, h)={self.size} is smaller than the '
                                 f'image ({w}, {h})')
            return th, tw
        d = self.size_divisor
        return -(-h // d) * d, -(-w // d) * d

    def transform(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        th, tw = self._target(h, w)
        pad = ((0, th - h), (0, tw - w))
        img = results['img']
        results['img'] = np.pad(img, pad + ((0, 0),) * (img.ndim - 2),
                                constant_values=self.pad_val['img'])
        if 'gt_masks' in results:
            results['gt_masks'] = np.pad(results['gt_masks'], ((0, 0),) + pad)
        if 'gt_seg_map' in results:
            results['gt_seg_map'] = np.pad(results['gt_seg_map'], pad,
                                           constant_values=self.pad_val['seg'])
        results.update(pad_shape=(th, tw), pad_fixed_size=self.size,
                       pad_size_divisor=self.size_divisor)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(size={self.size}, size_divisor={self.size_divisor}, '
                f'pad_val={self.pad_val})')
