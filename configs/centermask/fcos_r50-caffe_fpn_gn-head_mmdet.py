# FCOS for MMDetection 3.x weights (tools/convert_checkpoint.py --from mmdet) and the FCOS parity
# test: the same network; MMDetection's inference ranks each level's candidates by the class
# probability alone (nms_pre of them) and reports cls x centerness without the square root.
_base_ = './fcos_r50-caffe_fpn_gn-head_1x_coco.py'
model = dict(test_cfg=dict(topk_by='cls', sqrt_score=False))
