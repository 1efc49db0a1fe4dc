# Cascade Mask R-CNN with PANet's three components (in every stage's box and mask heads).
_base_ = [
    '../cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/panet_delta.py'
]
model = _base_.panet_delta
