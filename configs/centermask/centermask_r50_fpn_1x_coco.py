# CenterMask R50-FPN on COCO 2017, 1x schedule (the paper trains 24 epochs / CenterMask2 3x with
# multi-scale training; this is the repo's common 1x protocol). FCOS's optimisation: SGD lr 0.01
# for batch 16 with 2x lr and no decay on biases, 500 iterations of linear warm-up from 1/3.
_base_ = [
    '../_base_/models/centermask_r50_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(
    optimizer=dict(lr=0.01),
    paramwise_cfg=dict(bias_lr_mult=2.0, bias_decay_mult=0.0))
