# The embedded synthetic shapes set (cascade_seg/datasets/synthetic.py, docs/synthetic_dataset.md):
# the COCO dataset config with another root, class list and image size. Its semantic maps
# (semantic/) are loaded only by the configs whose model uses them (configs/htc/htc_*).
# Generate it first: python tools/make_synthetic_coco.py --out data/synthetic
_base_ = './coco_instance.py'
data_root = 'data/synthetic/'
# == synthetic.THING_CLASSES (category ids 2, 3, 5, 7, 11, 13 in the JSON: mapped by name).
# A config that points a dataset at another annotation file without naming classes reads them
# from that file (cascade_seg/engine/user_config.py), so these names never leak into it.
metainfo = dict(classes=('ring', 'ell', 'cross', 'crescent', 'triangle', 'ellipse'))


def _with(pipeline, **changes):
    """The base pipeline with some steps' arguments changed, keyed by step type."""
    return [dict(step, **changes.get(step['type'], {})) for step in pipeline]


train_pipeline = _with(_base_.train_pipeline, Resize=dict(scale=(128, 128)))
test_pipeline = _with(_base_.test_pipeline, Resize=dict(scale=(128, 128)))
# tiny images: loading in the main process is faster than worker processes
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=metainfo,
        # the ~10% object-free images are kept for validation only, as with COCO
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=metainfo,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
