# The small synthetic-set twin of panet_r50_fpn_1x_coco.py (R18 from scratch, 64 channels).
_base_ = ['../mask_rcnn/mask-rcnn_r18_fpn_synthetic.py', '../_base_/models/panet_delta.py']
model = _base_.panet_delta
