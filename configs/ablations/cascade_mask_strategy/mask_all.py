# Cascade Mask R-CNN with a mask head per stage, averaged at test time (the default)
_base_ = '../../cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
model = dict(roi_head=dict(mask_stages='all'))
