# Cascade Mask R-CNN R50-FPN for MMDetection 3.x weights (tools/convert_checkpoint.py --from mmdet).
# MMDetection's cascade test path: average the stages' classifier logits, then softmax; average
# every stage's mask probabilities. Both are our defaults; spelled out so the parity test
# keeps checking them if the defaults ever change.
_base_ = './cascade-mask-rcnn_r50_fpn_1x_coco.py'
model = dict(roi_head=dict(score_average='mean', mask_average='all'))
