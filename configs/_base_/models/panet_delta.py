# Mixin: what turns a Mask R-CNN / Cascade / HTC config into its PANet version (arXiv 1803.01534):
# bottom-up path augmentation (PAFPN neck), adaptive feature pooling (every RoI pooled from every
# level, fused after a per-level first layer) and the fully-connected fusion mask head. It only
# changes types and switches, no channels, so it fits any scale and any number of stages:
#   _base_ = ['<a mask-rcnn, cascade or htc config>', '../_base_/models/panet_delta.py']
#   model = _base_.panet_delta
panet_delta = dict(
    neck=dict(type='PAFPN', mode='paper'),  # ReLU after each bottom-up conv, as in the paper
    roi_head=dict(
        bbox_roi_extractor=dict(type='AllLevelRoIExtractor'),
        bbox_head=dict(type='AFPShared2FCBBoxHead', num_levels=4, fusion='max'),
        mask_roi_extractor=dict(type='AllLevelRoIExtractor'),
        # fc_relu=False: the fc output is added as the paper describes (the released code
        # applies a ReLU first: fc_relu=True)
        mask_head=dict(type='FFMaskHead', num_levels=4, fusion='max', fc_relu=False)))
