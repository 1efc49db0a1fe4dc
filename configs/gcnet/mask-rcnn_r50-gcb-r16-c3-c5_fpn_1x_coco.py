# Mask R-CNN R50 + GCNet: a global context block (ratio 1/16) after conv3 of every c3-c5 bottleneck.
_base_ = ['../mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/gcb_plugins.py']
model = dict(backbone=dict(plugins=_base_.gcb_r16_c3_c5))
