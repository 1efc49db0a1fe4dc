from .two_stage import (CascadeRCNN, HybridTaskCascade, MaskRCNN, TwoStageDetector,  # noqa: F401
                        check_num_classes)

__all__ = ['TwoStageDetector', 'MaskRCNN', 'CascadeRCNN', 'HybridTaskCascade', 'check_num_classes']
