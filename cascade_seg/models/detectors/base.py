"""What every detector shares: the data preprocessor, backbone (+ neck) features, the
``loss`` / ``predict`` / ``tensor`` modes, and data samples for bare tensors."""
from mmengine.model import BaseModel

from cascade_seg.engine.precision import InferencePrecisionMixin
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

from ..layers import cpu_conv_layout


class BaseDetector(InferencePrecisionMixin, BaseModel):
    """Subclasses build their heads and implement ``loss``, ``predict_instances`` (per-image
    ``InstanceData``) and ``_forward`` (raw outputs). ``inference_precision`` (``'fp32'``,
    ``'bf16'``, ``'fp16'``) is the autocast of ``val_step`` and ``test_step`` (see
    engine/precision.py)."""

    def __init__(self, backbone, neck=None, data_preprocessor=None, init_cfg=None):
        if isinstance(data_preprocessor, dict):  # our registry: mmengine's root lacks our types
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None

    def forward(self, inputs, data_samples=None, mode='tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._forward(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def extract_feat(self, batch_inputs):
        batch_inputs = cpu_conv_layout(batch_inputs, self.training)
        x = self.backbone(batch_inputs)
        return self.neck(x) if self.neck is not None else x

    def predict(self, batch_inputs, batch_data_samples=None, rescale=True):
        """Set ``pred_instances`` in each data sample (bboxes, scores, labels and whatever
        else the heads predict); without data samples the input size is the original size."""
        if batch_data_samples is None:
            batch_data_samples = samples_for(batch_inputs)
        results = self.predict_instances(batch_inputs, batch_data_samples, rescale)
        for sample, result in zip(batch_data_samples, results):
            sample.pred_instances = result
        return batch_data_samples


def samples_for(batch_inputs):
    """Data samples for bare inputs (no resize, no padding): just enough meta to run."""
    h, w = batch_inputs.shape[-2:]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(batch_inputs.shape[0])]
