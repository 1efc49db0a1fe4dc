# COCO 2017 person keypoints: the instance dataset config with the person keypoint files, the
# keypoints loaded (and swapped left/right by RandomFlip, from the keypoint names), and OKS AP.
_base_ = './coco_instance.py'
metainfo = dict(classes=('person', ))


def _with(pipeline, **changes):
    """The base pipeline with some steps' arguments changed, keyed by step type."""
    return [dict(step, **changes.get(step['type'], {})) for step in pipeline]


train_pipeline = _with(_base_.train_pipeline, LoadAnnotations=dict(with_keypoints=True))
test_pipeline = _with(_base_.test_pipeline, LoadAnnotations=dict(with_keypoints=True))
train_dataloader = dict(dataset=dict(
    ann_file='annotations/person_keypoints_train2017.json', metainfo=metainfo,
    pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(
    ann_file='annotations/person_keypoints_val2017.json', metainfo=metainfo,
    pipeline=test_pipeline))
test_dataloader = val_dataloader
# OKS sigmas: COCO's 17 person ones (the metric's default for 17 keypoints)
val_evaluator = dict(ann_file=_base_.data_root + 'annotations/person_keypoints_val2017.json',
                     metric=['bbox', 'segm', 'keypoints'])
test_evaluator = val_evaluator
