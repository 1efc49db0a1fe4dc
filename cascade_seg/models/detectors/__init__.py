from .centermask import CenterMask
from .generalized_rcnn import (CascadeRCNN, GeneralizedRCNN, HybridTaskCascade,  # noqa: F401
                               KeypointRCNN, MaskRCNN, TwoStageDetector)
from .single_stage import FCOS, SingleStageDetector

__all__ = ['GeneralizedRCNN', 'TwoStageDetector', 'MaskRCNN', 'CascadeRCNN', 'HybridTaskCascade',
           'KeypointRCNN', 'SingleStageDetector', 'FCOS', 'CenterMask']
