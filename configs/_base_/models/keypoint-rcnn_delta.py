# Mixin: the keypoint branch of Keypoint R-CNN (Mask R-CNN paper, section 5), added to any
# Mask R-CNN-style config: 14x14 RoIAlign on P2-P5, 8 x (3x3 conv, 512, ReLU), a stride-2
# transposed conv and bilinear x2 to 56x56 heatmaps, one per keypoint. Use it as an extra base:
#   _base_ = ['<a mask-rcnn config>', '../_base_/models/keypoint-rcnn_delta.py']
#   model = _base_.keypoint_delta
keypoint_delta = dict(
    roi_head=dict(
        keypoint_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0, aligned=True),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        keypoint_head=dict(
            type='KeypointRCNNHead',
            num_keypoints=17,       # the one key for another skeleton
            in_channels=256,
            num_convs=8,
            conv_out_channels=512)))
