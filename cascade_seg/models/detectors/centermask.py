"""CenterMask (Lee & Park, arXiv 1911.06667): the generalized R-CNN with a one-stage detector
(FCOS) as proposal generator and a RoI head of task branches on its detections."""
import inspect

from cascade_seg.registry import MODELS

from .generalized_rcnn import GeneralizedRCNN


@MODELS.register_module()
class CenterMask(GeneralizedRCNN):
    """``GeneralizedRCNN`` whose proposal generator predicts the dataset's classes and whose
    ``roi_head`` (``num_stages=0``) keeps its detections, adding masks (and mask scores).

    The class count stays one key, ``roi_head.num_classes``: a proposal generator that predicts
    classes (``predicts_classes``, e.g. ``FCOSHead``) and leaves ``num_classes`` unset takes it
    from there; if both are set they must agree.
    """

    def __init__(self, backbone, neck=None, proposal_generator=None, roi_head=None, **kwargs):
        num_classes = (roi_head or {}).get('num_classes')
        if num_classes is not None and proposal_generator is not None:
            kind = proposal_generator.get('type')
            cls = kind if inspect.isclass(kind) else MODELS.get(kind)
            if getattr(cls, 'predicts_classes', False):
                own = proposal_generator.get('num_classes')
                if own is None:
                    proposal_generator = dict(proposal_generator, num_classes=num_classes)
                elif own != num_classes:
                    raise ValueError(f'proposal_generator.num_classes={own} but '
                                     f'roi_head.num_classes={num_classes}; set only '
                                     'roi_head.num_classes')
        super().__init__(backbone, neck=neck, proposal_generator=proposal_generator,
                         roi_head=roi_head, **kwargs)
