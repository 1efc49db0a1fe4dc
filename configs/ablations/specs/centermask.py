# CenterMask paper (arXiv 1911.06667), its steps from FCOS + a Mask R-CNN mask head to CenterMask,
# on the synthetic CenterMask (R18-FPN CPU config, from scratch): the mask branch on FCOS's
# detections with Mask R-CNN's level rule (eq. 1, k0 = 4) and FCN head, then CenterMask's
# area-ratio level rule, then the spatial attention (SAG-Mask), then mask-IoU scoring (= the
# base config). Mask R-CNN (R18-FPN) under the same data, schedule and from-scratch training is
# the last row. No `paper` numbers: the paper's ablations are on other backbones and schedules.
# The main job's protocol (_base_/main_protocol.py), sharing the backbone only (the rows'
# necks and proposal generators differ from the Mask R-CNN trunk's); the rest of every row,
# FCOS included, trains from scratch.
_base_ = ['./_base_/main_protocol.py']
trunk = dict(modules=('backbone', ))
base = 'configs/centermask/centermask_r18_fpn_synthetic.py'
_fpn_rule = {'model.roi_head.mask_roi_extractor.level_mapping': dict(
    type='CanonicalLevelMapping', canonical_scale=224, canonical_level=4)}
_fcn_head = {'model.roi_head.mask_head.type': 'FCNMaskHead'}
_no_mask_iou = {'model.roi_head.mask_iou_head': None}
variants = [
    dict(name='FCOS+mask', overrides={**_fpn_rule, **_fcn_head, **_no_mask_iou}),
    dict(name='+level rule', overrides={**_fcn_head, **_no_mask_iou}),
    dict(name='+spatial attention', overrides=_no_mask_iou),
    # = configs/centermask/centermask_r18_fpn_synthetic.py
    dict(name='+mask scoring', overrides={}),
    dict(name='Mask R-CNN', config='configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'),
]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='FCOS+mask', columns=['bbox_mAP', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                             'inference.s_per_img', 'params'])
protocol = ("CenterMask's steps on the synthetic CenterMask (R18-FPN CPU config), main-job "
            'protocol with a shared backbone only; only the named parts differ; Mask R-CNN '
            'R18-FPN on the same protocol')
