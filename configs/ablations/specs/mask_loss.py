# Mask R-CNN paper, Table 2b: decoupled per-class sigmoid masks vs a coupled softmax over classes.
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='sigmoid (decoupled)', overrides={}),
    dict(name='softmax (coupled)', overrides={'+model.roi_head.mask_head.predictor': 'softmax'}),
]
seeds = [0]
run = dict(train=True, test=True, speed=[])
report = dict(baseline='sigmoid (decoupled)', columns=['segm_mAP', 'segm_mAP_50', 'segm_mAP_75'])
protocol = 'Synthetic Mask R-CNN (CPU config) from scratch; only the mask loss differs'
