# torchvision's keypointrcnn_resnet50_fpn inference, for weights converted with
#   python tools/convert_checkpoint.py --from torchvision IN OUT
# One class (person; ours = torchvision label - 1), 17 keypoints, and torchvision's RoI layers,
# level mapping, anchors and post-processing as in ../mask_rcnn/mask-rcnn_r50_fpn_torchvision.py.
_base_ = './keypoint-rcnn_r50_fpn_1x_coco.py'
tv_roi_layer = dict(sampling_ratio=2, aligned=False)  # MultiScaleRoIAlign
model = dict(
    backbone=dict(norm_cfg=dict(type='FrozenBN')),
    rpn_head=dict(anchor_generator=dict(round_base_anchors=True)),  # integer base anchors
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=tv_roi_layer, level_mapping='torchvision'),
        keypoint_roi_extractor=dict(roi_layer=tv_roi_layer, level_mapping='torchvision')),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=1e-3, score_thr=0.0, filter_small_boxes_mode='torchvision'),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
                  min_bbox_size=1e-2)))
