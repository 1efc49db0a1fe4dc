# Mask R-CNN paper, Table 2a (backbone architecture), the FPN rows our ResNet supports:
# ResNet-50-FPN vs ResNet-101-FPN. The synthetic Mask R-CNN with only the backbone changed
# (depth and the FPN's input widths; trained from scratch like its R18). The paper's C4 and
# ResNeXt rows have no counterpart here. Slow on CPU: R101 is ~3x the R18 step.
# `paper`: the paper's COCO mask AP / AP50 / AP75 (%), for the table to print beside ours.
# The main job's protocol (_base_/main_protocol.py) without its trunk, which is an R18: each row
# trains end to end from scratch for 1500 iterations, as many as a main-job row has seen in
# all (1000 in the trunk + 500).
_base_ = ['./_base_/main_protocol.py']
trunk = None
common_overrides = {
    'train_cfg': dict(type='IterBasedTrainLoop', max_iters=1500),
    'param_scheduler': [
        dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=1500, milestones=[1200],
             gamma=0.1)],
    'default_hooks.checkpoint.interval': 1500,
}
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
_bottleneck_fpn = {'model.neck.in_channels': [256, 512, 1024, 2048]}
variants = [
    dict(name='R-50-FPN', overrides={'model.backbone.depth': 50, **_bottleneck_fpn},
         paper=dict(segm_mAP=33.6, segm_mAP_50=55.2, segm_mAP_75=35.3)),
    dict(name='R-101-FPN', overrides={'model.backbone.depth': 101, **_bottleneck_fpn},
         paper=dict(segm_mAP=34.4, segm_mAP_50=55.3, segm_mAP_75=36.7)),
]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='R-50-FPN', columns=['bbox_mAP', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                            'inference.s_per_img', 'params'])
protocol = ('Synthetic Mask R-CNN, main-job settings without the shared trunk: end to end from '
            'scratch, 1500 iterations; only the backbone depth differs')
