# Mixin: the RoI-head changes that turn a Mask R-CNN config into Cascade Mask R-CNN
# (MMDetection's cascade values). It names no channels and leaves the RPN alone, so it fits
# any scale and keeps Mask R-CNN vs Cascade comparisons controlled. Use it as an extra base:
#   _base_ = ['<a mask-rcnn config>', '../_base_/models/cascade-mask-rcnn_delta.py']
#   model = _base_.cascade_delta
cascade_delta = dict(
    type='CascadeRCNN',
    roi_head=dict(
        num_stages=3,
        stage_loss_weights=(1.0, 0.5, 0.25),
        mask_stages='all',  # a mask head per stage, averaged at test time
        # defaults for every stage: class-agnostic boxes, smooth L1
        bbox_head=dict(
            reg_class_agnostic=True,
            loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
        # later stages see better boxes, so their regression targets are tighter
        stage_overrides=dict(
            s1=dict(bbox_head=dict(bbox_coder=dict(target_stds=[0.05, 0.05, 0.1, 0.1]))),
            s2=dict(bbox_head=dict(bbox_coder=dict(target_stds=[0.033, 0.033, 0.067, 0.067]))))),
    train_cfg=dict(
        rcnn=dict(
            assigner=dict(match_low_quality=False),
            # the IoU threshold rises per stage: 0.5 (the defaults), 0.6, 0.7
            stage_overrides=dict(
                s1=dict(assigner=dict(pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.6)),
                s2=dict(assigner=dict(pos_iou_thr=0.7, neg_iou_thr=0.7, min_pos_iou=0.7))))))
