# FCOS R50-FPN (box only) on COCO 2017, 1x: MMDetection's
# fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py training recipe, with
# the FCOS paper's inference (sqrt(cls x centerness)). The COCO instance data without masks.
_base_ = [
    '../_base_/models/fcos_r50-caffe_fpn_gn-head.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]


def _with(pipeline, **changes):
    """The base pipeline with some steps' arguments changed, keyed by step type."""
    return [dict(step, **changes.get(step['type'], {})) for step in pipeline]


train_pipeline = _with(_base_.train_pipeline, LoadAnnotations=dict(with_mask=False))
test_pipeline = _with(_base_.test_pipeline, LoadAnnotations=dict(with_mask=False))
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(
    optimizer=dict(lr=0.01),
    paramwise_cfg=dict(bias_lr_mult=2.0, bias_decay_mult=0.0))
