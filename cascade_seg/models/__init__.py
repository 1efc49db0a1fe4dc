"""Importing this package registers every model component in cascade_seg.registry.MODELS."""
from . import (backbones, data_preprocessor, dense_heads, detectors, layers, losses, necks,  # noqa: F401
               roi_heads, task_utils, tta)
