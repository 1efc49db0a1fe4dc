# Mask R-CNN R50-FPN for MMDetection 3.x weights (tools/convert_checkpoint.py --from mmdet).
# Our Mask R-CNN defaults are MMDetection's inference semantics, so nothing changes; this file
# exists so that every converted model has a `_mmdet` config to pair with.
_base_ = './mask-rcnn_r50_fpn_1x_coco.py'
