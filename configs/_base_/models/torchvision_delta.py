# Mixin: torchvision's detection inference conventions, for weights converted with
#   python tools/convert_checkpoint.py --from torchvision IN OUT
# FrozenBN, integer base anchors, MultiScaleRoIAlign (sampling 2, not aligned) with the FPN
# paper's level mapping, RegionProposalNetwork's and RoIHeads' post-processing, pasting as
# paste_masks_in_image. Use it as an extra base and merge `tv_delta` into `model`, plus
# `tv_extractor` into every RoI extractor the model has.
tv_extractor = dict(roi_layer=dict(sampling_ratio=2, aligned=False), level_mapping='torchvision')
tv_delta = dict(
    backbone=dict(norm_cfg=dict(type='FrozenBN')),
    rpn_head=dict(anchor_generator=dict(round_base_anchors=True)),
    test_cfg=dict(
        # RegionProposalNetwork: top 1000 per level, w, h >= 1e-3, NMS 0.7 per level, keep 1000
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=1e-3, score_thr=0.0, filter_small_boxes_mode='torchvision'),
        # RoIHeads.postprocess_detections (+ paste_masks_in_image)
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
                  min_bbox_size=1e-2, mask_thr_binary=0.5, mask_paste='torchvision')))
