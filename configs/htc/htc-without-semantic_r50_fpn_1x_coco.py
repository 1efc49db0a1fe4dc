_base_ = [
    '../cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/htc_delta.py'
]
# the HTC changes, plus MMDetection's HTC recipe: low-quality matches kept in the RoI
# assigners, and a lower test score threshold
model = dict(_base_.htc_delta,
             train_cfg=dict(rcnn=dict(assigner=dict(match_low_quality=True))),
             test_cfg=dict(rcnn=dict(score_thr=0.001)))
