_base_ = [
    '../mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/cascade-mask-rcnn_delta.py'
]
# the cascade RoI head, plus MMDetection's cascade recipe for the RPN
model = dict(
    _base_.cascade_delta,
    rpn_head=dict(loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    train_cfg=dict(_base_.cascade_delta.train_cfg,
                   rpn=dict(allowed_border=0), rpn_proposal=dict(max_per_img=2000)))
