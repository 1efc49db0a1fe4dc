"""One-stage detectors: backbone -> neck -> one dense head that gives the detections."""
from cascade_seg.registry import MODELS

from .base import BaseDetector


@MODELS.register_module()
class SingleStageDetector(BaseDetector):
    """Backbone (+ neck) features and a dense head (e.g. ``FCOSHead``) whose detections are the
    output; MMDetection's layout, so its one-stage checkpoints convert unchanged.

    Args:
        bbox_head: the dense head; it gets the whole ``train_cfg`` and ``test_cfg``.
    Losses are the head's (``loss_cls``, ``loss_bbox``, ...); ``mode='tensor'`` returns its raw
    per-level outputs.
    """

    def __init__(self, backbone, neck=None, bbox_head=None, train_cfg=None, test_cfg=None,
                 data_preprocessor=None, init_cfg=None):
        if bbox_head is None:
            raise ValueError('a one-stage detector needs a bbox_head')
        super().__init__(backbone, neck, data_preprocessor, init_cfg)
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        self.bbox_head = MODELS.build(dict(bbox_head, train_cfg=train_cfg, test_cfg=test_cfg))

    def loss(self, batch_inputs, batch_data_samples):
        return self.bbox_head.loss(self.extract_feat(batch_inputs), batch_data_samples)

    def predict_instances(self, batch_inputs, batch_data_samples, rescale=True):
        return self.bbox_head.predict(self.extract_feat(batch_inputs), batch_data_samples,
                                      rescale=rescale)

    def _forward(self, batch_inputs, batch_data_samples=None):
        return self.bbox_head(self.extract_feat(batch_inputs))


@MODELS.register_module()
class FCOS(SingleStageDetector):
    """MMDetection's name for a one-stage detector with an ``FCOSHead``; same class."""
