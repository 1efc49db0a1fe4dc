"""Task branches of the RoI head; importing this package registers them in TASK_BRANCHES."""
from .base import TaskBranch, resolve_stages
from .keypoint_branch import KeypointBranch
from .mask_branch import MaskBranch

__all__ = ['TaskBranch', 'resolve_stages', 'MaskBranch', 'KeypointBranch']
