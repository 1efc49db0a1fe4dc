# GCNet Mask R-CNN R50 (context blocks r16, c3-c5) for MMDetection 3.x weights
# (tools/convert_checkpoint.py --from mmdet). The backbone keys (layerN.i.context_block.*) are
# MMDetection's already and our Mask R-CNN defaults are its inference semantics, so nothing
# changes; this file pairs the converted model with a config, as every *_mmdet.py does.
_base_ = './mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py'
