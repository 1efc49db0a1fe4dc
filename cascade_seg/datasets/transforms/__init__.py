"""Data transforms (registered in cascade_seg.registry.TRANSFORMS)."""
from .formatting import PackDetInputs
from .loading import LoadAnnotations, LoadImageFromFile
from .transforms import Pad, RandomFlip, Resize
from .tta import TestTimeAug

__all__ = ['LoadImageFromFile', 'LoadAnnotations', 'Resize', 'RandomFlip', 'Pad', 'PackDetInputs',
           'TestTimeAug']
