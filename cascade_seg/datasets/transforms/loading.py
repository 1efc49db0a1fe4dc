"""Loading transforms: image file -> BGR uint8 array, COCO instances -> arrays."""
import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.fileio import get
from pycocotools import mask as mask_utils

from ...registry import TRANSFORMS


def read_bytes(path, backend_args=None) -> bytes:
    try:
        return get(path, backend_args=backend_args)
    except FileNotFoundError as e:
        raise FileNotFoundError(f'image/annotation file not found: {path}') from e


def to_bgr_uint8(img: np.ndarray, path='') -> np.ndarray:
    """Grayscale / BGRA / 16-bit decodes -> (H, W, 3) uint8 BGR."""
    if img.dtype == np.uint16:
        # Map 0..65535 onto 0..255 with rounding (v / 257).
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f'{path}: unsupported image dtype {img.dtype}')
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.shape[2] == 3:
        return img
    raise ValueError(f'{path}: unsupported number of channels {img.shape[2]}')


def image_from_array(img, what='image array') -> np.ndarray:
    """An in-memory image -> (H, W, 3) uint8 BGR, converted as a decoded file would be.

    Accepted: (H, W), (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA arrays of uint8;
    uint16 (scaled by 1/257, like a 16-bit PNG); other integer types and floats
    holding 0..255 values (floats are rounded: the scale ``LoadImageFromFile
    (to_float32=True)`` produces). Anything else -- empty, other shapes or channel
    counts, negative or > 255 values, NaN/Inf, a float image in [0, 1] -- is a
    ValueError saying what is wrong.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f'{what}: expected a numpy array, got {type(img).__name__}')
    if img.ndim not in (2, 3):
        raise ValueError(f'{what} has shape {img.shape}: expected (H, W) or (H, W, C)')
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f'{what} is empty (shape {img.shape})')
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise ValueError(f'{what} has {img.shape[2]} channels (shape {img.shape}): expected 1 '
                         '(gray), 3 (BGR) or 4 (BGRA)')
    if img.dtype == np.bool_ or img.dtype.kind not in 'uif':
        raise ValueError(f'{what} has dtype {img.dtype}: expected uint8, uint16, another '
                         'integer type or float holding 0..255')
    if img.dtype.kind == 'f' or img.dtype not in (np.uint8, np.uint16):
        if img.dtype.kind == 'f' and not np.isfinite(img).all():
            raise ValueError(f'{what} ({img.dtype}) holds NaN or Inf values')
        low, high = float(img.min()), float(img.max())
        if low < 0 or high > 255:
            raise ValueError(f'{what} ({img.dtype}) has values in [{low:g}, {high:g}]: '
                             'expected 0..255')
        if img.dtype.kind == 'f' and 0 < high <= 1:
            raise ValueError(f'{what} ({img.dtype}) has values in [{low:g}, {high:g}]: this '
                             'looks like a [0, 1] image; pass it scaled to 0..255 (img * 255)')
        img = np.rint(img).astype(np.uint8) if img.dtype.kind == 'f' else img.astype(np.uint8)
    return to_bgr_uint8(np.ascontiguousarray(img), what)


def decode_image(buf: bytes, path='') -> np.ndarray:
    if not buf:
        raise ValueError(f'{path}: the image file is empty (0 bytes)')
    try:
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ValueError(f'could not decode image file {path}: {str(err).strip()}') from None
    if img is None or img.size == 0:
        raise ValueError(f'could not decode image file {path} (corrupt or unsupported format)')
    return img


@TRANSFORMS.register_module()
class LoadImageFromFile(BaseTransform):
    """Read ``img_path``; set ``img`` (BGR uint8 (H, W, 3)), ``img_shape``, ``ori_shape``.

    Grayscale, RGBA (alpha dropped) and 16-bit files all become 3-channel uint8.
    EXIF orientation is not applied, so pixels stay in the frame that COCO's
    ``height``/``width`` describe; a mismatch with those raises ValueError.
    ``color_type='grayscale'`` gives (H, W, 1) instead.
    """

    def __init__(self, to_float32=False, color_type='color', backend_args=None):
        if color_type not in ('color', 'grayscale'):
            raise ValueError(f"color_type must be 'color' or 'grayscale', got {color_type!r}")
        self.to_float32 = to_float32
        self.color_type = color_type
        self.backend_args = backend_args

    def transform(self, results: dict) -> dict:
        path = results['img_path']
        img = to_bgr_uint8(decode_image(read_bytes(path, self.backend_args), path), path)
        if self.color_type == 'grayscale':
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
        expected = (results.get('height'), results.get('width'))
        if None not in expected and tuple(img.shape[:2]) != expected:
            raise ValueError(f'{path}: image is {img.shape[0]}x{img.shape[1]} (h x w) but the '
                             f'annotation says {expected[0]}x{expected[1]}')
        if self.to_float32:
            img = img.astype(np.float32)
        results.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(to_float32={self.to_float32}, '
                f'color_type={self.color_type!r})')


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """COCO polygons / uncompressed RLE / compressed RLE -> uint8 (H, W) mask."""
    if isinstance(segm, list):  # polygons of one object; merge the parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm['counts'], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, *segm['size'])
    else:  # compressed RLE (str from JSON or bytes)
        rle = segm
    return mask_utils.decode(rle).astype(np.uint8)


def keypoints_array(instances, num_keypoints=None) -> np.ndarray:
    """Per-instance ``keypoints`` ``[x, y, v, ...]`` -> float32 (N, K, 3); missing -> zeros."""
    if num_keypoints is None:
        num_keypoints = max((len(i.get('keypoints', ())) // 3 for i in instances), default=0)
    out = np.zeros((len(instances), num_keypoints, 3), np.float32)
    for n, inst in enumerate(instances):
        kpts = inst.get('keypoints')
        if kpts:
            out[n] = np.asarray(kpts, np.float32).reshape(-1, 3)
    return out


@TRANSFORMS.register_module()
class LoadAnnotations(BaseTransform):
    """Turn ``instances`` (and ``seg_map_path``) into ``gt_*`` arrays (see design.md)."""

    def __init__(self, with_bbox=True, with_label=True, with_mask=True, with_seg=False,
                 with_keypoints=False, backend_args=None):
        self.with_bbox = with_bbox
        self.with_label = with_label
        self.with_mask = with_mask
        self.with_seg = with_seg
        self.with_keypoints = with_keypoints
        self.backend_args = backend_args

    def transform(self, results: dict) -> dict:
        instances = results.get('instances', [])
        if self.with_bbox:
            results['gt_bboxes'] = np.asarray([i['bbox'] for i in instances],
                                              np.float32).reshape(-1, 4)
            results['gt_ignore_flags'] = np.asarray([i.get('ignore_flag', 0) for i in instances],
                                                    bool).reshape(-1)
        if self.with_label:
            results['gt_bboxes_labels'] = np.asarray([i['bbox_label'] for i in instances],
                                                     np.int64).reshape(-1)
        if self.with_mask:
            results['gt_masks'] = self._load_masks(results, instances)
        if self.with_keypoints:
            results['gt_keypoints'] = keypoints_array(instances, results.get('num_keypoints'))
        if self.with_seg:
            results['gt_seg_map'] = self._load_seg(results)
        return results

    def _load_masks(self, results, instances) -> np.ndarray:
        h, w = results['ori_shape'] if 'ori_shape' in results else (results['height'],
                                                                     results['width'])
        masks = np.zeros((len(instances), h, w), np.uint8)
        for n, inst in enumerate(instances):
            if 'mask' not in inst:
                raise ValueError(f'{results.get("img_path")}: instance {n} has no segmentation '
                                 'but LoadAnnotations(with_mask=True) was asked for masks')
            masks[n] = decode_segmentation(inst['mask'], h, w)
        return masks

    def _load_seg(self, results) -> np.ndarray:
        path = results.get('seg_map_path')
        if path is None:
            raise ValueError(f'{results.get("img_path")}: with_seg=True but no seg_map_path '
                             "(set data_prefix=dict(seg=...) in the dataset config)")
        try:
            buf = read_bytes(path, self.backend_args)
        except FileNotFoundError:
            raise FileNotFoundError(
                f'semantic map not found: {path}. This pipeline loads one per image '
                '(LoadAnnotations(with_seg=True), for the semantic branch of the HTC configs): '
                'point data_prefix.seg at your maps, or use a config without the semantic '
                'branch (e.g. htc-without-semantic_*)') from None
        seg = decode_image(buf, path)
        if seg.ndim != 2:
            raise ValueError(f'{path}: semantic map must be single-channel, got shape {seg.shape}')
        if seg.dtype != np.uint8:
            if seg.max() > 255:
                raise ValueError(f'{path}: semantic map values exceed 255')
            seg = seg.astype(np.uint8)
        return seg

    def __repr__(self):
        return (f'{type(self).__name__}(with_bbox={self.with_bbox}, with_label={self.with_label}, '
                f'with_mask={self.with_mask}, with_seg={self.with_seg}, '
                f'with_keypoints={self.with_keypoints})')
