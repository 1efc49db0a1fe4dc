# Small CenterMask for CPU: ResNet-18 from scratch, 64-channel FPN and heads, the synthetic set
# and schedule of configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py. Another COCO-format dataset:
# override the dataset keys (docs/data_pipeline.md); the class count, model.roi_head.num_classes
# (FCOS takes it from there), follows the dataset's classes.
_base_ = [
    '../_base_/models/centermask_r50_fpn.py', '../_base_/datasets/synthetic_instance.py',
    '../_base_/schedules/schedule_synthetic.py', '../_base_/default_runtime.py'
]
model = dict(
    # the torchvision-style input of the other small configs (the net starts from scratch)
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True),
    # no pretrained weights: train every layer, BN statistics included
    backbone=dict(depth=18, style='pytorch', frozen_stages=-1, norm_eval=False,
                  norm_cfg=dict(type='BN', requires_grad=True)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    proposal_generator=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64),
        mask_iou_head=dict(in_channels=64, conv_out_channels=64, fc_out_channels=256)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(max_keep_ckpts=1))
