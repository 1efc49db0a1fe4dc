# Small Mask R-CNN for CPU: ResNet-18 from scratch, 64-channel FPN, few RoIs, synthetic data.
# Another COCO-format dataset: override the dataset keys (docs/data_pipeline.md, "Using your own
# COCO-format dataset"); the class count follows the dataset's classes.
_base_ = [
    '../_base_/models/mask-rcnn_r50_fpn.py', '../_base_/datasets/synthetic_instance.py',
    '../_base_/schedules/schedule_synthetic.py', '../_base_/default_runtime.py'
]
model = dict(
    # no pretrained weights: train every layer, BN statistics included
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(max_keep_ckpts=1))
