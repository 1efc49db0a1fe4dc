"""DetDataPreprocessor: normalise, BGR->RGB and pad a batch; pad GT masks / semantic maps."""
import math

import torch
import torch.nn.functional as F
from mmengine.model import ImgDataPreprocessor
from mmengine.structures import PixelData

from ..registry import MODELS


def pad_to(t: torch.Tensor, shape, value) -> torch.Tensor:
    """Pad the last two dims of ``t`` at the bottom/right up to ``shape`` (h, w)."""
    h, w = t.shape[-2:]
    if (h, w) == tuple(shape):
        return t
    return F.pad(t, (0, shape[1] - w, 0, shape[0] - h), value=value)


@MODELS.register_module()
class DetDataPreprocessor(ImgDataPreprocessor):
    """Batch a list of uint8 CHW images into a normalised (B, 3, H, W) float tensor.

    Each sample's metainfo gets ``batch_input_shape`` (the padded batch (H, W)) and
    ``pad_shape`` (its own (h, w) rounded up to ``pad_size_divisor``). In training,
    GT masks are padded with ``mask_pad_value`` and ``gt_sem_seg`` with
    ``seg_pad_value`` to the batch shape.
    """

    def __init__(self, mean=None, std=None, pad_size_divisor=32, pad_value=0, pad_mask=True,
                 mask_pad_value=0, pad_seg=True, seg_pad_value=255, bgr_to_rgb=False,
                 rgb_to_bgr=False, non_blocking=False, boxtype2tensor=True):
        super().__init__(mean=mean, std=std, pad_size_divisor=pad_size_divisor,
                         pad_value=pad_value, bgr_to_rgb=bgr_to_rgb, rgb_to_bgr=rgb_to_bgr,
                         non_blocking=non_blocking)
        self.pad_mask = pad_mask
        self.mask_pad_value = mask_pad_value
        self.pad_seg = pad_seg
        self.seg_pad_value = seg_pad_value

    def _pad_shapes(self, inputs):
        d = self.pad_size_divisor
        shapes = [x.shape[-2:] for x in inputs]  # list of CHW, or a BCHW tensor
        return [(math.ceil(h / d) * d, math.ceil(w / d) * d) for h, w in shapes]

    def forward(self, data: dict, training: bool = False) -> dict:
        pad_shapes = self._pad_shapes(data['inputs'])
        data = super().forward(data, training)
        inputs, samples = data['inputs'], data['data_samples']
        if samples is None:
            return dict(inputs=inputs, data_samples=None)
        batch_shape = tuple(inputs.shape[-2:])
        for sample, pad_shape in zip(samples, pad_shapes):
            sample.set_metainfo(dict(batch_input_shape=batch_shape, pad_shape=pad_shape))
        if training:
            for sample in samples:
                self._pad_gt(sample, batch_shape)
        return dict(inputs=inputs, data_samples=samples)

    def _pad_gt(self, sample, batch_shape):
        if self.pad_mask:
            for key in ('gt_instances', 'ignored_instances'):
                inst = sample.get(key)
                if inst is not None and 'masks' in inst:
                    inst.masks = pad_to(inst.masks, batch_shape, self.mask_pad_value)
        if self.pad_seg and 'gt_sem_seg' in sample:
            old = sample.gt_sem_seg  # PixelData refuses a field of a new size: rebuild it
            sample.gt_sem_seg = PixelData(
                sem_seg=pad_to(old.sem_seg, batch_shape, self.seg_pad_value),
                metainfo=old.metainfo)
