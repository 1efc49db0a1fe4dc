# PANet R50 on Mask R-CNN: PAFPN (bottom-up path augmentation) + adaptive feature pooling in
# the box and mask heads + the fully-connected fusion mask head. Everything else is Mask R-CNN's.
_base_ = ['../mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/panet_delta.py']
model = _base_.panet_delta
