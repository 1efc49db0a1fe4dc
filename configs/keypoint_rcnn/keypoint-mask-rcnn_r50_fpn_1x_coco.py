# Mask R-CNN with masks and keypoints on COCO persons (the Mask R-CNN paper's Table 5 setting):
# the box, mask and keypoint branches are peers of one RoI head.
_base_ = [
    '../_base_/models/mask-rcnn_r50_fpn.py', '../_base_/datasets/coco_keypoint.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py',
    '../_base_/models/keypoint-rcnn_delta.py'
]
model = dict(type='KeypointRCNN', roi_head=dict(num_classes=1, **_base_.keypoint_delta['roi_head']))
