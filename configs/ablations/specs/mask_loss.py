# Mask R-CNN paper, Table 2b: decoupled per-class sigmoid masks vs a coupled softmax over classes.
# The main job's protocol (_base_/main_protocol.py): shared trunk, 500 iterations, bf16.
_base_ = ['./_base_/main_protocol.py']
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='sigmoid (decoupled)', overrides={},
         paper=dict(segm_mAP=30.3, segm_mAP_50=51.2, segm_mAP_75=31.5)),
    dict(name='softmax (coupled)', overrides={'+model.roi_head.mask_head.predictor': 'softmax'},
         paper=dict(segm_mAP=24.8, segm_mAP_50=44.1, segm_mAP_75=25.1)),
]
run = dict(train=True, test=True, speed=[])
report = dict(baseline='sigmoid (decoupled)', columns=['segm_mAP', 'segm_mAP_50', 'segm_mAP_75'])
protocol = ('Synthetic Mask R-CNN (R18-FPN CPU config), main-job protocol'
            '; only the mask loss differs')
