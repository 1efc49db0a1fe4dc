# torchvision's keypointrcnn_resnet50_fpn inference (see ../_base_/models/torchvision_delta.py):
# one class (person; ours = torchvision label - 1), 17 keypoints.
_base_ = ['./keypoint-rcnn_r50_fpn_1x_coco.py', '../_base_/models/torchvision_delta.py']
model = dict(
    **_base_.tv_delta,
    roi_head=dict(
        bbox_roi_extractor=_base_.tv_extractor,
        keypoint_roi_extractor=_base_.tv_extractor))
