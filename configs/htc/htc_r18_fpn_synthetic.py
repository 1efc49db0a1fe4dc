_base_ = './htc-without-semantic_r18_fpn_synthetic.py'
# HTC's semantic branch on the synthetic set's semantic maps (already loaded by its pipeline):
# thing classes 0..C-1 plus 3 stuff classes (docs/synthetic_dataset.md)
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
            num_classes=len(_base_.train_dataloader.dataset.metainfo['classes']) + 3,
            ignore_label=255,
            loss_weight=0.2),
        semantic_fusion=('bbox', 'mask')))
