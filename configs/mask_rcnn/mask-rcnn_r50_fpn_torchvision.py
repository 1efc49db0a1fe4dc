# torchvision's maskrcnn_resnet50_fpn inference, for weights converted with
#   python tools/convert_checkpoint.py --from torchvision IN OUT
# Labels are torchvision's 90 COCO category slots (ours = torchvision label - 1, i.e. the COCO
# category id - 1; the 10 unused ids stay as never-trained classes). See docs/checkpoints.md.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'

tv_roi_layer = dict(sampling_ratio=2, aligned=False)  # MultiScaleRoIAlign
model = dict(
    backbone=dict(norm_cfg=dict(type='FrozenBN')),
    rpn_head=dict(anchor_generator=dict(round_base_anchors=True)),  # integer base anchors
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=tv_roi_layer, level_mapping='torchvision'),
        mask_roi_extractor=dict(roi_layer=tv_roi_layer, level_mapping='torchvision'),
        bbox_head=dict(num_classes=90),  # box coder stds (0.1, 0.1, 0.2, 0.2) = weights 10, 10, 5, 5
        mask_head=dict(num_classes=90)),
    test_cfg=dict(
        # RegionProposalNetwork: top 1000 per level, w, h >= 1e-3, NMS 0.7 per level, keep 1000
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=1e-3, score_thr=0.0, filter_small_boxes_mode='torchvision'),
        # RoIHeads.postprocess_detections + paste_masks_in_image
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
                  min_bbox_size=1e-2, mask_thr_binary=0.5, mask_paste='torchvision')))
