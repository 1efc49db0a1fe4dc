"""Utilities: checkpoint conversion from torchvision and MMDetection."""
from .convert import (COCO80_CATEGORY_IDS, ConversionReport, align_to_model,  # noqa: F401
                      convert_mmdet, convert_torchvision, load_state_dict_file, mmdet_to_cascade,
                      select_classes, torchvision_to_mmdet)
