_base_ = [
    '../mask_rcnn/mask-rcnn_r18_fpn_synthetic.py', '../_base_/models/cascade-mask-rcnn_delta.py'
]
model = _base_.cascade_delta
