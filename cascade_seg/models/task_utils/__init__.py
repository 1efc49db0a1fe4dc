"""Pure tensor logic shared by the heads: box coding, box ops, assignment, sampling,
anchors, mask targets and mask pasting, keypoint targets and decoding."""
from .anchor_generator import AnchorGenerator, base_anchors
from .assigner import AssignResult, MaxIoUAssigner, max_iou_assign
from .box_coder import DeltaXYWHBBoxCoder, decode_deltas, encode_deltas
from .boxes import (bbox_overlaps, box_area, box_iof, box_iou, boxes_to_rois, clip_boxes,
                    flip_boxes, rescale_boxes, rois_to_boxes)
from .keypoint_ops import heatmaps_to_keypoints, keypoint_loss, keypoint_targets
from .mask_ops import mask_targets, paste_masks
from .sampler import PseudoSampler, RandomSampler, SamplingResult, random_sample

__all__ = [
    'AnchorGenerator',
    'base_anchors',
    'AssignResult',
    'MaxIoUAssigner',
    'max_iou_assign',
    'DeltaXYWHBBoxCoder',
    'decode_deltas',
    'encode_deltas',
    'bbox_overlaps',
    'box_area',
    'box_iof',
    'box_iou',
    'boxes_to_rois',
    'clip_boxes',
    'flip_boxes',
    'rescale_boxes',
    'rois_to_boxes',
    'heatmaps_to_keypoints',
    'keypoint_loss',
    'keypoint_targets',
    'mask_targets',
    'paste_masks',
    'PseudoSampler',
    'RandomSampler',
    'SamplingResult',
    'random_sample',
]
