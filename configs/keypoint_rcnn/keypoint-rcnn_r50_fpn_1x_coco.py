# Keypoint R-CNN R50-FPN on COCO persons (17 keypoints): the joint config without the mask branch.
_base_ = './keypoint-mask-rcnn_r50_fpn_1x_coco.py'


def _with(pipeline, **changes):
    """The base pipeline with some steps' arguments changed, keyed by step type."""
    return [dict(step, **changes.get(step['type'], {})) for step in pipeline]


model = dict(roi_head=dict(mask_roi_extractor=None, mask_head=None))
train_pipeline = _with(_base_.train_pipeline, LoadAnnotations=dict(with_mask=False))
test_pipeline = _with(_base_.test_pipeline, LoadAnnotations=dict(with_mask=False))
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'keypoints'])
test_evaluator = val_evaluator
