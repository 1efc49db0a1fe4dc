"""Datasets and data transforms; importing this registers them."""
from . import synthetic, transforms  # noqa: F401
from .coco import CocoDataset

__all__ = ['CocoDataset']
