# Mask R-CNN paper, section 4.2 ("Class-Specific vs. Class-Agnostic Masks"): one 28x28 mask per
# class vs a single mask whatever the class, on the same synthetic Mask R-CNN.
# `paper`: the paper's COCO mask AP (%) on ResNet-50-C4, for the table to print beside ours.
# The main job's protocol (_base_/main_protocol.py): shared trunk, 500 iterations, bf16.
_base_ = ['./_base_/main_protocol.py']
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='class-specific', overrides={}, paper=dict(segm_mAP=30.3)),
    dict(name='class-agnostic', overrides={'+model.roi_head.mask_head.class_agnostic': True},
         paper=dict(segm_mAP=29.7)),
]
run = dict(train=True, test=True, speed=[])
report = dict(baseline='class-specific', columns=['segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                                  'params'])
protocol = ('Synthetic Mask R-CNN (R18-FPN CPU config), main-job protocol'
            '; only the mask predictor differs')
