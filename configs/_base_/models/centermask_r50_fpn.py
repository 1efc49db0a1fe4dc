# CenterMask R50-FPN (arXiv 1911.06667): FCOS (configs/_base_/models/fcos_r50-caffe_fpn_gn-head.py)
# in the proposal-generator slot; a RoI head without box stages runs the mask branches on its
# detections: 14x14 RoIAlign on P3-P5 with CenterMask's area-ratio level rule, the SAG-Mask head,
# and the mask-IoU head on the same pooled features. The class count is one key,
# model.roi_head.num_classes (the CenterMask detector passes it on to FCOS).
_base_ = './fcos_r50-caffe_fpn_gn-head.py'
model = dict(
    _delete_=True,
    type='CenterMask',
    data_preprocessor=_base_.model.data_preprocessor,
    backbone=_base_.model.backbone,
    neck=_base_.model.neck,
    proposal_generator=_base_.fcos_head,
    roi_head=dict(
        type='CascadeRoIHead',
        num_stages=0,
        bbox_roi_extractor=None,
        bbox_head=None,
        num_classes=80,
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0, aligned=True),
            out_channels=256,
            featmap_strides=[8, 16, 32],
            # k = clamp(ceil(5 - log2(A_img / A_box)), 3, 5) on P3..P5
            level_mapping=dict(type='AreaRatioLevelMapping', max_level=5)),
        mask_head=dict(
            type='SAGMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
        # the mask branch's pooled RoI features (not its head's), pooled once
        mask_iou_roi_extractor='mask',
        mask_iou_head=dict(
            type='MaskIoUHead',
            num_convs=4,
            num_fcs=2,
            roi_feat_size=14,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            loss_weight=1.0)),
    train_cfg=dict(
        # FCOS's detections the mask branches train on (CenterMask2: 100 per image), + GT boxes
        rpn_proposal=dict(score_thr=0.05, nms_pre=1000, nms=dict(type='nms', iou_threshold=0.6),
                          max_per_img=100, min_bbox_size=0),
        rcnn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.5,
                neg_iou_thr=0.5,
                min_pos_iou=0.5,
                match_low_quality=False,
                ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                add_gt_as_proposals=True),
            pos_weight=-1)),
    test_cfg=dict(
        # the detections, 50 per image for the mask branches (CenterMask)
        rpn=dict(score_thr=0.05, nms_pre=1000, nms=dict(type='nms', iou_threshold=0.6),
                 max_per_img=50, min_bbox_size=0),
        rcnn=dict(mask_thr_binary=0.5)))
