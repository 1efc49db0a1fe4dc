# MMDetection's pafpn/faster-rcnn_r50_pafpn_1x_coco.py, for its weights
# (tools/convert_checkpoint.py --from mmdet) and the PAFPN parity test: the R50 Mask R-CNN
# config without the mask branch, with MMDetection's PAFPN arithmetic (no activation, bottom-up
# sum before the output convs). No registered FasterRCNN alias: the detector class is the one
# every model here is.
_base_ = '../mask_rcnn/mask-rcnn_r50_fpn_mmdet.py'
model = dict(
    type='GeneralizedRCNN',
    neck=dict(type='PAFPN', mode='mmdet'),
    roi_head=dict(mask_roi_extractor=None, mask_head=None))
