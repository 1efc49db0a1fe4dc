# Cascade Mask R-CNN with one mask head trained on (and run after) every stage
_base_ = '../../cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
model = dict(roi_head=dict(mask_stages='shared'))
