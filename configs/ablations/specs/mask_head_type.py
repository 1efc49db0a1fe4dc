# Mask R-CNN paper, Table 2e: an FCN mask head vs an MLP mask head on the same RoI features.
# The main job's protocol (_base_/main_protocol.py): shared trunk, 500 iterations, bf16.
_base_ = ['./_base_/main_protocol.py']
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='FCN', overrides={}, paper=dict(segm_mAP=33.6, segm_mAP_50=55.2, segm_mAP_75=35.3)),
    # the paper's MLP: two 1024-d fc layers on the 14x14 RoI feature, then 28x28 per class
    dict(name='MLP', paper=dict(segm_mAP=31.5, segm_mAP_50=53.7, segm_mAP_75=32.8),
         overrides={'model.roi_head.mask_head': dict(
        type='MLPMaskHead', in_channels=64, roi_feat_size=14, num_fcs=2, fc_out_channels=1024,
        mask_size=28, num_classes=6)}),
]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='FCN', columns=['segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                       'inference.s_per_img', 'params'])
protocol = ('Synthetic Mask R-CNN (R18-FPN CPU config), main-job protocol'
            '; only the mask head differs')
