# CenterMask with VoVNetV2-39 (OSA modules with identity paths and eSE), the paper's backbone, in
# place of ResNet-50. As in CenterMask2: BGR input with the mean subtracted (std 1), frozen BN
# statistics and affine parameters, every conv trained. Pretrained weights: a local file via
# init_cfg (nothing is downloaded).
_base_ = './centermask_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(_delete_=True, type='VoVNet', arch='V-39', out_indices=(0, 1, 2, 3),
                  frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=False),
                  norm_eval=True, init_cfg=None),
    neck=dict(in_channels=[256, 512, 768, 1024]))
