# Cascade R-CNN paper's mask-branch placement (first / last / every stage), plus one mask head
# shared by all stages. Each variant is one override of the synthetic Cascade Mask R-CNN.
base = 'configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='mask_first', overrides={'model.roi_head.mask_stages': 'first'}),
    dict(name='mask_last', overrides={'model.roi_head.mask_stages': 'last'}),
    dict(name='mask_all', overrides={'model.roi_head.mask_stages': 'all'}),
    dict(name='mask_shared', overrides={'model.roi_head.mask_stages': 'shared'}),
]
seeds = [0]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='mask_all', columns=['bbox_mAP', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                            'inference.s_per_img', 'params'])
protocol = ('Synthetic Cascade Mask R-CNN (CPU config) from scratch; only where the mask branch '
            'sits differs')
