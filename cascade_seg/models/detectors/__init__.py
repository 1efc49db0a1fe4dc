from .generalized_rcnn import (CascadeRCNN, GeneralizedRCNN, HybridTaskCascade,  # noqa: F401
                               KeypointRCNN, MaskRCNN, TwoStageDetector)

__all__ = ['GeneralizedRCNN', 'TwoStageDetector', 'MaskRCNN', 'CascadeRCNN', 'HybridTaskCascade',
           'KeypointRCNN']
