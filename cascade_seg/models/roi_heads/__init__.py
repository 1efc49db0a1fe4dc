"""RoI heads; importing this package registers them in MODELS (and the task branches in
TASK_BRANCHES)."""
from . import level_mapping  # noqa: F401  (registers the level-mapping rules)
from .bbox_heads import (ConvFCBBoxHead, Shared2FCBBoxHead, Shared4Conv1FCBBoxHead, bbox_targets,
                         postprocess_detections, refine_boxes, regress_by_class)
from .branches import KeypointBranch, MaskBranch, TaskBranch
from .cascade_roi_head import CascadeRoIHead
from .keypoint_head import KeypointRCNNHead
from .mask_heads import FCNMaskHead, HTCMaskHead, MLPMaskHead
from .roi_extractor import SingleRoIExtractor
from .semantic_head import FusedSemanticHead
from .all_level_roi_extractor import AllLevelRoIExtractor  # noqa: F401  (PANet)
from .afp_bbox_head import AFPShared2FCBBoxHead  # noqa: F401  (PANet)
from .afp_mask_head import AFPFCNMaskHead  # noqa: F401  (PANet)
from .ff_mask_head import FFMaskHead  # noqa: F401  (PANet)

__all__ = ['SingleRoIExtractor', 'ConvFCBBoxHead', 'Shared2FCBBoxHead', 'Shared4Conv1FCBBoxHead',
           'FCNMaskHead', 'HTCMaskHead', 'MLPMaskHead', 'FusedSemanticHead', 'CascadeRoIHead',
           'TaskBranch', 'MaskBranch', 'KeypointBranch', 'KeypointRCNNHead', 'bbox_targets', 'postprocess_detections', 'refine_boxes',
           'regress_by_class']
