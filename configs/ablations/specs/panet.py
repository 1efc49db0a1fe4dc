# PANet paper (arXiv 1803.01534), Table 3: Mask R-CNN, then bottom-up path augmentation (BPA,
# the PAFPN neck), adaptive feature pooling (AFP: every RoI pooled from every level, fused after
# a per-level fc1 / conv1) and fully-connected fusion (FF) in the mask head, on the synthetic
# Mask R-CNN. '+AFP' alone is not a row of the paper (its rows add the parts cumulatively); it
# separates AFP's effect from BPA's here.
# `paper`: the paper's R-50 COCO val numbers (mask AP, %), for the table to print beside ours.
# The paper's 35.7 is the row it adds BPA to: its re-implemented Mask R-CNN with its training
# refinements (multi-scale training, synchronized BN), not the plain one.
# The main job's protocol (_base_/main_protocol.py), but the rows differ in the neck, so the
# shared trunk is the backbone only (like the paper's ImageNet initialisation); neck, RPN and
# heads train from scratch in every row.
_base_ = ['./_base_/main_protocol.py']
trunk = dict(modules=('backbone', ))
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
_bpa = {'model.neck.type': 'PAFPN', '+model.neck.mode': 'paper'}
_afp = {
    'model.roi_head.bbox_roi_extractor.type': 'AllLevelRoIExtractor',
    'model.roi_head.mask_roi_extractor.type': 'AllLevelRoIExtractor',
    'model.roi_head.bbox_head.type': 'AFPShared2FCBBoxHead',
    '+model.roi_head.bbox_head.num_levels': 4,
    '+model.roi_head.bbox_head.fusion': 'max',
    'model.roi_head.mask_head.type': 'AFPFCNMaskHead',
    '+model.roi_head.mask_head.num_levels': 4,
    '+model.roi_head.mask_head.fusion': 'max',
}
_ff = {'model.roi_head.mask_head.type': 'FFMaskHead', '+model.roi_head.mask_head.fc_relu': False}
variants = [
    dict(name='baseline', overrides={}, paper=dict(segm_mAP=35.7)),
    dict(name='+BPA', overrides=_bpa, paper=dict(segm_mAP=36.4)),
    dict(name='+AFP', overrides=_afp),
    dict(name='+BPA+AFP', overrides={**_bpa, **_afp}, paper=dict(segm_mAP=36.9)),
    # = configs/panet/panet_r18_fpn_synthetic.py
    dict(name='+FF', overrides={**_bpa, **_afp, **_ff}, paper=dict(segm_mAP=37.6)),
]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='baseline', columns=['bbox_mAP', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                            'inference.s_per_img', 'params'])
protocol = ("PANet's Table 3 steps on the synthetic Mask R-CNN (R18-FPN CPU config), "
            'main-job protocol with a shared backbone only; only the named parts differ')
