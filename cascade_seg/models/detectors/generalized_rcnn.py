"""The generalized R-CNN: backbone -> neck -> proposal generator (any dense head) -> RoI head."""
import torch

from cascade_seg.registry import MODELS

from .base import BaseDetector, samples_for


@MODELS.register_module()
class GeneralizedRCNN(BaseDetector):
    """Backbone (+ neck) features, proposals from any dense head (or given ones), RoI head.

    Args:
        proposal_generator: a dense head with ``loss_and_predict(feats, data_samples,
            proposal_cfg)`` and ``predict(feats, data_samples)`` (``RPNHead``; a one-stage
            head such as FCOS). ``rpn_head`` is MMDetection's name for the same slot.
        roi_head: the RoI head; it gets ``train_cfg.rcnn`` / ``test_cfg.rcnn``.
        train_cfg / test_cfg: ``rpn`` goes to the proposal generator, ``rpn_proposal`` sets
            how training proposals are made (default: ``test_cfg.rpn``).

    Without a proposal generator, each data sample must carry ``proposals`` (InstanceData
    with ``bboxes``). The generator's losses keep their own names (``loss_rpn_cls``, ...).
    Parameters are named ``proposal_generator.*``; MMDetection's ``rpn_head.*`` names load too.
    ``inference_precision`` (``'fp32'``, ``'bf16'``, ``'fp16'``) is the autocast of ``val_step``
    and ``test_step`` (see engine/precision.py).
    """

    def __init__(self, backbone, neck=None, proposal_generator=None, roi_head=None,
                 train_cfg=None, test_cfg=None, data_preprocessor=None, init_cfg=None,
                 rpn_head=None):
        super().__init__(backbone, neck, data_preprocessor, init_cfg)
        if rpn_head is not None and proposal_generator is not None:
            raise ValueError('give either proposal_generator or rpn_head (the same slot)')
        proposal_generator = proposal_generator if rpn_head is None else rpn_head
        self.train_cfg = train_cfg = train_cfg or {}
        self.test_cfg = test_cfg = test_cfg or {}
        self.proposal_generator = None
        if proposal_generator is not None:
            self.proposal_generator = MODELS.build(dict(
                proposal_generator, train_cfg=train_cfg.get('rpn'), test_cfg=test_cfg.get('rpn')))
        self.roi_head = None
        if roi_head is not None:
            self.roi_head = MODELS.build(dict(roi_head, train_cfg=train_cfg.get('rcnn'),
                                              test_cfg=test_cfg.get('rcnn')))

    @property
    def rpn_head(self):
        """MMDetection's name for the proposal generator."""
        return self.proposal_generator

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old, new = f'{prefix}rpn_head.', f'{prefix}proposal_generator.'
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[new + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _given_proposals(batch_data_samples):
        if any(s.get('proposals') is None for s in batch_data_samples):
            raise ValueError('this detector has no proposal generator, so every data sample '
                             'needs `proposals` (InstanceData with bboxes)')
        return [s.proposals for s in batch_data_samples]

    def _proposals(self, x, batch_data_samples):
        if self.proposal_generator is None:
            return self._given_proposals(batch_data_samples)
        return self.proposal_generator.predict(x, batch_data_samples)

    def loss(self, batch_inputs, batch_data_samples):
        """Flat dict: the proposal generator's losses + the RoI head's ``s{t}.*`` losses."""
        x = self.extract_feat(batch_inputs)
        losses = {}
        if self.proposal_generator is not None:
            proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg.get('rpn'))
            losses, proposals = self.proposal_generator.loss_and_predict(
                x, batch_data_samples, proposal_cfg=proposal_cfg)
        else:
            proposals = self._given_proposals(batch_data_samples)
        roi_losses = self.roi_head.loss(_dense(x), proposals, batch_data_samples)
        clash = set(losses) & set(roi_losses)
        if clash:
            raise KeyError(f'the proposal generator and the RoI head both return {sorted(clash)}')
        losses.update(roi_losses)
        return losses

    def predict_instances(self, batch_inputs, batch_data_samples, rescale=True):
        x = self.extract_feat(batch_inputs)
        proposals = self._proposals(x, batch_data_samples)
        return self.roi_head.predict(_dense(x), proposals, batch_data_samples, rescale=rescale)

    def _forward(self, batch_inputs, batch_data_samples=None):
        """Raw outputs: ``(proposal generator forward, RoI head forward)``, no post-processing."""
        if batch_data_samples is None:
            batch_data_samples = samples_for(batch_inputs)
        x = self.extract_feat(batch_inputs)
        outs = ()
        if self.proposal_generator is not None:
            outs += (self.proposal_generator(x),)
        if self.roi_head is not None:
            proposals = self._proposals(x, batch_data_samples)
            outs += (self.roi_head(_dense(x), proposals, batch_data_samples),)
        return outs


def _dense(feats):
    """The RoI head's copies of the features, made once: NCHW-contiguous (RoIAlign would
    otherwise copy every channels-last level at every call, and again in backward) and float32
    (under bf16 autocast RoIAlign pools in float32, see roi_align.py: one conversion per level
    here instead of one per RoIAlign call)."""
    return tuple(f.to(dtype=torch.float32 if f.dtype != torch.float64 else f.dtype,
                      memory_format=torch.contiguous_format) for f in feats)


# MMDetection's name for a detector with proposals and a RoI head: the same class.
TwoStageDetector = GeneralizedRCNN
MODELS.register_module(name='TwoStageDetector', module=GeneralizedRCNN)


@MODELS.register_module()
class MaskRCNN(GeneralizedRCNN):
    """MMDetection's name for a one-stage RoI head detector; same class."""


@MODELS.register_module()
class CascadeRCNN(GeneralizedRCNN):
    """MMDetection's name for a multi-stage RoI head detector; same class."""


@MODELS.register_module()
class HybridTaskCascade(GeneralizedRCNN):
    """MMDetection's name for HTC (interleaved / mask info flow / semantic); same class."""


@MODELS.register_module()
class KeypointRCNN(GeneralizedRCNN):
    """torchvision's name for Mask R-CNN's keypoint variant; same class."""
