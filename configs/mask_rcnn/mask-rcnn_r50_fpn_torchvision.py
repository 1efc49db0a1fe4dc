# torchvision's maskrcnn_resnet50_fpn inference (see ../_base_/models/torchvision_delta.py).
# Labels are torchvision's 90 COCO category slots (ours = torchvision label - 1, i.e. the COCO
# category id - 1; the 10 unused ids stay as never-trained classes). See docs/checkpoints.md.
_base_ = ['./mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/torchvision_delta.py']
model = dict(
    **_base_.tv_delta,
    roi_head=dict(
        bbox_roi_extractor=_base_.tv_extractor,
        mask_roi_extractor=_base_.tv_extractor,
        bbox_head=dict(num_classes=90),  # box coder stds (0.1, 0.1, 0.2, 0.2) = weights 10, 10, 5, 5
        mask_head=dict(num_classes=90)))
