"""One-stage detectors: backbone -> neck -> one dense head that gives the detections."""
from mmengine.model import BaseModel

from cascade_seg.engine.precision import InferencePrecisionMixin
from cascade_seg.registry import MODELS

from ..layers import cpu_conv_layout
from .generalized_rcnn import _samples_for


@MODELS.register_module()
class SingleStageDetector(InferencePrecisionMixin, BaseModel):
    """Backbone (+ neck) features and a dense head (e.g. ``FCOSHead``) whose detections are the
    output; MMDetection's layout, so its one-stage checkpoints convert unchanged.

    Args:
        bbox_head: the dense head; it gets the whole ``train_cfg`` and ``test_cfg``.
    Losses are the head's (``loss_cls``, ``loss_bbox``, ...); ``mode='tensor'`` returns its raw
    per-level outputs.
    """

    def __init__(self, backbone, neck=None, bbox_head=None, train_cfg=None, test_cfg=None,
                 data_preprocessor=None, init_cfg=None):
        if isinstance(data_preprocessor, dict):  # our registry: mmengine's root lacks our types
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if bbox_head is None:
            raise ValueError('a one-stage detector needs a bbox_head')
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.bbox_head = MODELS.build(dict(bbox_head, train_cfg=train_cfg, test_cfg=test_cfg))

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

    def loss(self, batch_inputs, batch_data_samples):
        return self.bbox_head.loss(self.extract_feat(batch_inputs), batch_data_samples)

    def predict(self, batch_inputs, batch_data_samples=None, rescale=True):
        """Set ``pred_instances`` (bboxes, scores, labels) in each data sample."""
        if batch_data_samples is None:
            batch_data_samples = _samples_for(batch_inputs)
        results = self.bbox_head.predict(self.extract_feat(batch_inputs), batch_data_samples,
                                         rescale=rescale)
        for sample, result in zip(batch_data_samples, results):
            sample.pred_instances = result
        return batch_data_samples

    def _forward(self, batch_inputs, batch_data_samples=None):
        return self.bbox_head(self.extract_feat(batch_inputs))


@MODELS.register_module()
class FCOS(SingleStageDetector):
    """MMDetection's name for a one-stage detector with an ``FCOSHead``; same class."""
