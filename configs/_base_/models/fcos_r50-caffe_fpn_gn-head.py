# FCOS R50-FPN with the FCOS paper's improvements, as MMDetection's
# fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py sets them: a caffe-style
# ResNet-50 (stride in the first 1x1 conv, BGR input, mean subtracted, std 1), P3-P7 (P6/P7 by
# stride-2 3x3 convs from P5, ReLU before P7), GN towers with conv biases, centerness on the
# regression tower, ReLU(scale x) * stride distances, centre sampling (1.5 x stride), focal +
# GIoU + centerness losses. Inference is the FCOS paper's (sqrt(cls x centerness), NMS 0.6).
# `fcos_head` is every head option but the class count: CenterMask uses it as its proposal
# generator (configs/_base_/models/centermask_r50_fpn.py).
fcos_head = dict(
    type='FCOSHead',
    in_channels=256,
    stacked_convs=4,
    feat_channels=256,
    strides=[8, 16, 32, 64, 128],
    regress_ranges=[(-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)],
    center_sampling=True,
    center_sample_radius=1.5,
    norm_on_bbox=True,
    centerness_on_reg=True,
    conv_bias=True,
    norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
    loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
    loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0))
model = dict(
    type='FCOS',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[103.530, 116.280, 123.675],
        std=[1.0, 1.0, 1.0],
        bgr_to_rgb=False,
        pad_size_divisor=32),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='caffe',
        # no download: point this at a local caffe-style R-50, e.g.
        # init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_caffe.pth')
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_output',
        num_outs=5,
        relu_before_extra_convs=True),
    bbox_head=dict(fcos_head, num_classes=80),
    test_cfg=dict(
        score_thr=0.05,
        nms_pre=1000,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100,
        min_bbox_size=0,
        topk_by='cls_x_centerness',
        sqrt_score=True))
