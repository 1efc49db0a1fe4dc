# HTC paper, step 0: the Cascade Mask R-CNN baseline (every step below changes one switch)
_base_ = '../../cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
