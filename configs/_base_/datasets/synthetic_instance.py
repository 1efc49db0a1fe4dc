# The embedded synthetic shapes set (cascade_seg/datasets/synthetic.py, docs/synthetic_dataset.md).
# Generate it first: python tools/make_synthetic_coco.py --out data/synthetic
dataset_type = 'CocoDataset'
data_root = 'data/synthetic/'
backend_args = None
# == synthetic.THING_CLASSES (category ids 2, 3, 5, 7, 11, 13 in the JSON: mapped by name).
# Semantic maps add the stuff classes ('speckle', 'gradient', 'stripes') as labels 6..8.
metainfo = dict(classes=('ring', 'ell', 'cross', 'crescent', 'triangle', 'ellipse'))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    # loaded after Resize: the GT stays at the original scale, as the metric expects
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs'),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/', seg='semantic/'),
        metainfo=metainfo,
        # the ~10% object-free images are kept for validation only, as with COCO
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/', seg='semantic/'),
        metainfo=metainfo,
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator
