_base_ = './htc-without-semantic_r50_fpn_1x_coco.py'
# HTC's semantic branch: a segmentation head on the fused FPN levels (COCO-stuff: 183 classes);
# its feature, pooled per RoI, is added to the box and mask RoI features
model = dict(
    data_preprocessor=dict(pad_seg=True),
    roi_head=dict(
        semantic_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0, aligned=True),
            out_channels=256,
            featmap_strides=[8]),
        semantic_head=dict(
            type='FusedSemanticHead',
            num_ins=5,
            fusion_level=1,
            seg_scale_factor=1 / 8,
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=183,
            ignore_label=255,
            loss_weight=0.2),
        semantic_fusion=('bbox', 'mask')))

# the same pipeline, now also loading the stuff+thing maps
train_pipeline = [dict(t, with_seg=True) if t['type'] == 'LoadAnnotations' else t
                  for t in _base_.train_pipeline]
train_dataloader = dict(
    dataset=dict(data_prefix=dict(seg='stuffthingmaps/train2017/'), pipeline=train_pipeline))
