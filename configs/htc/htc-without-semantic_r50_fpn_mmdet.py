# HTC (no semantic branch) R50-FPN for MMDetection 3.x weights.
# MMDetection 3.3's HTC test path runs every mask head (information flow) but keeps only the
# last stage's mask probabilities; the paper (and our default) averages all stages.
_base_ = './htc-without-semantic_r50_fpn_1x_coco.py'
model = dict(roi_head=dict(mask_average='last'))
