# Small FCOS (box only) for CPU: the CenterMask synthetic twin's backbone, neck and FCOS head as a
# one-stage detector. Another COCO-format dataset: the dataset keys (docs/data_pipeline.md); the
# class count, model.bbox_head.num_classes, follows the dataset's classes.
_base_ = [
    '../_base_/models/fcos_r50-caffe_fpn_gn-head.py', '../_base_/datasets/synthetic_instance.py',
    '../_base_/schedules/schedule_synthetic.py', '../_base_/default_runtime.py'
]
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True),
    backbone=dict(depth=18, style='pytorch', frozen_stages=-1, norm_eval=False,
                  norm_cfg=dict(type='BN', requires_grad=True)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64))
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(max_keep_ckpts=1))
