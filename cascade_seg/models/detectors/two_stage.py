"""Two-stage detector: backbone -> neck -> RPN -> (cascade) RoI head."""
import copy

import torch
from mmengine.model import BaseModel

from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

from ..layers import cpu_conv_layout

_HEAD_KEYS = ('bbox_head', 'mask_head')


def _heads_of(head_cfg):
    """A head entry is a dict (one for every stage) or, MMDetection-style, a list of dicts."""
    if head_cfg is None:
        return []
    return list(head_cfg) if isinstance(head_cfg, (list, tuple)) else [head_cfg]


def roi_head_num_classes(roi_head):
    """``[(key, num_classes), ...]`` for every bbox / mask head entry of a RoI head config.

    Covers the per-stage defaults, list-style heads and ``stage_overrides``. A
    top-level ``roi_head.num_classes`` (see :func:`apply_roi_num_classes`) wins over all.
    """
    if roi_head.get('num_classes') is not None:
        return [('roi_head.num_classes', roi_head['num_classes'])]
    found = []
    for key in _HEAD_KEYS:
        heads = _heads_of(roi_head.get(key))
        for i, head in enumerate(heads):
            if head.get('num_classes') is not None:
                name = f'roi_head.{key}' + (f'[{i}]' if len(heads) > 1 else '')
                found.append((name + '.num_classes', head['num_classes']))
    for stage, override in (roi_head.get('stage_overrides') or {}).items():
        for key in _HEAD_KEYS:
            head = (override or {}).get(key) or {}
            if head.get('num_classes') is not None:
                found.append((f'roi_head.stage_overrides.{stage}.{key}.num_classes',
                              head['num_classes']))
    return found


def apply_roi_num_classes(roi_head):
    """Copy of a RoI head config with ``num_classes`` popped and pushed into every head.

    This lets a config (or ``--cfg-options model.roi_head.num_classes=K``) change the
    class count of every stage's box and mask head with one key.
    """
    roi_head = copy.deepcopy(roi_head)
    num_classes = roi_head.pop('num_classes', None)
    if num_classes is None:
        return roi_head
    for key in _HEAD_KEYS:
        for head in _heads_of(roi_head.get(key)):
            head['num_classes'] = num_classes
    for override in (roi_head.get('stage_overrides') or {}).values():
        for key in _HEAD_KEYS:
            if (override or {}).get(key) is not None and 'num_classes' in override[key]:
                override[key]['num_classes'] = num_classes
    return roi_head


def _dataset_classes(cfg):
    """``{'<split>_dataloader.dataset': classes}`` for every split whose config names classes."""
    found = {}
    for split in ('train', 'val', 'test'):
        dataset = (cfg.get(f'{split}_dataloader') or {}).get('dataset')
        name = f'{split}_dataloader.dataset'
        while isinstance(dataset, dict) and dataset.get('dataset') is not None:  # wrappers
            dataset, name = dataset['dataset'], name + '.dataset'
        if isinstance(dataset, dict) and dataset.get('datasets'):  # ConcatDataset: first part
            dataset, name = dataset['datasets'][0], name + '.datasets[0]'
        classes = ((dataset or {}).get('metainfo') or {}).get('classes')
        if classes is not None:
            found[name] = tuple(classes)
    return found


def check_num_classes(cfg, classes=None):
    """Check that the RoI heads predict as many classes as the dataset defines.

    Args:
        cfg: the full config (mmengine ``Config`` or dict) with ``model.roi_head``.
        classes: the dataset's class names; read from the dataloader configs'
            ``metainfo.classes`` when None (no check if no config names them).
    Returns:
        The number of classes checked against, or None when nothing could be checked.
    Raises:
        ValueError naming every mismatching key and the fix.
    """
    roi_head = (cfg.get('model') or {}).get('roi_head')
    if roi_head is None:
        return None
    if classes is not None:
        sources = {'the given classes': tuple(classes)}
    else:
        sources = _dataset_classes(cfg)
    problems = []
    for source, names in sources.items():
        for key, num in roi_head_num_classes(roi_head):
            if num != len(names):
                problems.append(f'model.{key} = {num} but {source} has {len(names)} classes')
    if problems:
        expected = len(next(iter(sources.values())))
        raise ValueError('num_classes does not match the dataset: ' + '; '.join(problems)
                         + f'. Set model.roi_head.num_classes={expected} (it applies to the box '
                         'and mask heads of every stage), e.g. '
                         f'--cfg-options model.roi_head.num_classes={expected}')
    return len(next(iter(sources.values()))) if sources else None


@MODELS.register_module()
class TwoStageDetector(BaseModel):
    """Backbone (+ neck) features, RPN proposals (or given ones), then the RoI head.

    ``train_cfg.rpn`` / ``test_cfg.rpn`` go to the RPN, ``train_cfg.rcnn`` /
    ``test_cfg.rcnn`` to the RoI head, and ``train_cfg.rpn_proposal`` sets how
    training proposals are made. Without an RPN, each data sample must carry
    ``proposals`` (InstanceData with ``bboxes``).
    """

    def __init__(self, backbone, neck=None, rpn_head=None, roi_head=None, train_cfg=None,
                 test_cfg=None, data_preprocessor=None, init_cfg=None):
        if isinstance(data_preprocessor, dict):  # our registry: mmengine's root one lacks our types
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.train_cfg = train_cfg = train_cfg or {}
        self.test_cfg = test_cfg = test_cfg or {}
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.rpn_head = None
        if rpn_head is not None:
            self.rpn_head = MODELS.build(dict(rpn_head, train_cfg=train_cfg.get('rpn'),
                                              test_cfg=test_cfg.get('rpn')))
        self.roi_head = None
        if roi_head is not None:
            self.roi_head = MODELS.build(dict(apply_roi_num_classes(roi_head),
                                              train_cfg=train_cfg.get('rcnn'),
                                              test_cfg=test_cfg.get('rcnn')))

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

    def _given_proposals(self, batch_data_samples):
        if any(s.get('proposals') is None for s in batch_data_samples):
            raise ValueError('this detector has no rpn_head, so every data sample needs '
                             '`proposals` (InstanceData with bboxes)')
        return [s.proposals for s in batch_data_samples]

    def _proposals(self, x, batch_data_samples):
        if self.rpn_head is None:
            return self._given_proposals(batch_data_samples)
        return self.rpn_head.predict(x, batch_data_samples)

    def loss(self, batch_inputs, batch_data_samples):
        """Flat dict: ``loss_rpn_cls, loss_rpn_bbox`` + the RoI head's ``s{t}.*`` losses."""
        x = self.extract_feat(batch_inputs)
        losses = {}
        if self.rpn_head is not None:
            # RPN treats every GT as one class, so no label rewriting (or deep copy) is needed.
            proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg.get('rpn'))
            rpn_losses, proposals = self.rpn_head.loss_and_predict(
                x, batch_data_samples, proposal_cfg=proposal_cfg)
            # keep RPN names apart from RoI-head names
            losses.update({k if 'rpn' in k or 'loss' not in k else f'rpn_{k}': v
                           for k, v in rpn_losses.items()})
        else:
            proposals = self._given_proposals(batch_data_samples)
        losses.update(self.roi_head.loss(_dense(x), proposals, batch_data_samples))
        return losses

    def predict(self, batch_inputs, batch_data_samples=None, rescale=True):
        """Set ``pred_instances`` (bboxes, scores, labels, masks) in each data sample."""
        if batch_data_samples is None:
            batch_data_samples = _samples_for(batch_inputs)
        x = self.extract_feat(batch_inputs)
        proposals = self._proposals(x, batch_data_samples)
        results = self.roi_head.predict(_dense(x), proposals, batch_data_samples,
                                        rescale=rescale)
        for sample, result in zip(batch_data_samples, results):
            sample.pred_instances = result
        return batch_data_samples

    def _forward(self, batch_inputs, batch_data_samples=None):
        """Raw outputs: ``(rpn (cls_scores, bbox_preds), roi head forward)``, no post-processing."""
        if batch_data_samples is None:
            batch_data_samples = _samples_for(batch_inputs)
        x = self.extract_feat(batch_inputs)
        outs = ()
        if self.rpn_head is not None:
            outs += (self.rpn_head(x),)
        if self.roi_head is not None:
            proposals = self._proposals(x, batch_data_samples)
            outs += (self.roi_head(_dense(x), proposals, batch_data_samples),)
        return outs


def _dense(feats):
    """NCHW-contiguous copies of channels-last features, made once for the RoI head: RoIAlign
    would otherwise copy every level at every call (and again in backward)."""
    return tuple(f.contiguous() for f in feats)


def _samples_for(batch_inputs):
    """Data samples for bare inputs (no resize, no padding): just enough meta to run."""
    h, w = batch_inputs.shape[-2:]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(batch_inputs.shape[0])]


@MODELS.register_module()
class MaskRCNN(TwoStageDetector):
    """MMDetection's name for a one-stage RoI head detector; same class."""


@MODELS.register_module()
class CascadeRCNN(TwoStageDetector):
    """MMDetection's name for a multi-stage RoI head detector; same class."""


@MODELS.register_module()
class HybridTaskCascade(TwoStageDetector):
    """MMDetection's name for HTC (interleaved / mask info flow / semantic); same class."""

