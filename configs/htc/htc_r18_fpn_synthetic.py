_base_ = './htc-without-semantic_r18_fpn_synthetic.py'
# HTC's semantic branch on the synthetic set's semantic maps (semantic/<image stem>.png): the
# 6 thing classes (labels 0..5) plus 3 stuff classes (docs/synthetic_dataset.md). The only
# synthetic configs that load the maps.
model = dict(
    roi_head=dict(
        semantic_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0, aligned=True),
            out_channels=64,
            featmap_strides=[8]),
        semantic_head=dict(
            type='FusedSemanticHead',
            num_ins=5,
            fusion_level=1,
            seg_scale_factor=1 / 8,
            num_convs=4,
            in_channels=64,
            conv_out_channels=64,
            num_classes=6 + 3,  # things + stuff of the maps, not the detector's classes
            ignore_label=255,
            loss_weight=0.2),
        semantic_fusion=('bbox', 'mask')))

# the same training pipeline, now also loading the semantic maps
train_pipeline = [dict(t, with_seg=True) if t['type'] == 'LoadAnnotations' else t
                  for t in _base_.train_pipeline]
train_dataloader = dict(
    dataset=dict(data_prefix=dict(img='train/', seg='semantic/'), pipeline=train_pipeline))
