_base_ = [
    '../cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py',
    '../_base_/models/panet_delta.py'
]
model = _base_.panet_delta
