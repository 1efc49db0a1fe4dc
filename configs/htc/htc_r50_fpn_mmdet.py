# HTC R50-FPN for MMDetection 3.x weights: MMDetection 3.3 keeps only the last stage's mask
# at test time (see htc-without-semantic_r50_fpn_mmdet.py).
_base_ = './htc_r50_fpn_1x_coco.py'
model = dict(roi_head=dict(mask_average='last'))
