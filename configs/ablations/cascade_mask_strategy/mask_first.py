# Cascade Mask R-CNN with one mask head, on stage 0's RoIs
_base_ = '../../cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
model = dict(roi_head=dict(mask_stages='first'))
