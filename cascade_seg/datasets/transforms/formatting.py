"""PackDetInputs: numpy results -> dict(inputs=uint8 CHW tensor, data_samples=DetDataSample)."""
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import InstanceData, PixelData

from ...registry import TRANSFORMS
from ...structures import DetDataSample

# gt_* key in the pipeline -> (field in InstanceData, tensor dtype)
_INSTANCE_FIELDS = {
    'gt_bboxes': ('bboxes', torch.float32),
    'gt_bboxes_labels': ('labels', torch.int64),
    'gt_masks': ('masks', torch.bool),
    'gt_keypoints': ('keypoints', torch.float32),
}


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W[, C]) array -> contiguous (C, H, W) tensor of the same dtype."""
    if img.ndim == 2:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


@TRANSFORMS.register_module()
class PackDetInputs(BaseTransform):
    """Split instances by ``gt_ignore_flags`` into ``gt_instances`` / ``ignored_instances``.

    Meta keys missing from ``results`` get the value that describes an untouched
    image (no flip, scale 1, no padding) instead of being dropped.
    """

    def __init__(self, meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                  'scale_factor', 'flip', 'flip_direction', 'pad_shape')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        packed = {}
        if 'img' in results:
            packed['inputs'] = image_to_tensor(results['img'])
        sample = DetDataSample()
        n = len(results['gt_bboxes']) if 'gt_bboxes' in results else None
        if n is not None:
            ignore = results.get('gt_ignore_flags', np.zeros(n, bool)).astype(bool)
            gt, ignored = InstanceData(), InstanceData()
            for key, (field, dtype) in _INSTANCE_FIELDS.items():
                if key in results:
                    value = torch.from_numpy(np.ascontiguousarray(results[key])).to(dtype)
                    keep = torch.from_numpy(~ignore)
                    gt[field] = value[keep]
                    ignored[field] = value[~keep]
            sample.gt_instances = gt
            sample.ignored_instances = ignored
        if 'gt_seg_map' in results:
            seg = torch.from_numpy(results['gt_seg_map'].astype(np.int64))[None]
            sample.gt_sem_seg = PixelData(sem_seg=seg)
        sample.set_metainfo(self._meta(results))
        packed['data_samples'] = sample
        return packed

    def _meta(self, results: dict) -> dict:
        defaults = dict(scale_factor=(1.0, 1.0), flip=False, flip_direction=None)
        if 'img_shape' in results:
            defaults['pad_shape'] = tuple(results['img_shape'][:2])
        meta = {}
        for key in self.meta_keys:
            if key in results:
                meta[key] = results[key]
            elif key in defaults:
                meta[key] = defaults[key]
        return meta

    def __repr__(self):
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
