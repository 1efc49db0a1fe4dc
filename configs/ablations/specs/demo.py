# The main job (`make demo`): the cascade-strategy ablation on the embedded synthetic dataset.
# Mask R-CNN -> Cascade Mask R-CNN -> HTC without semantic -> HTC, small CPU configs, one schedule.
variants = [
    dict(name='mask_rcnn', config='configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='cascade_mask_rcnn', config='configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='htc_without_semantic', config='configs/htc/htc-without-semantic_r18_fpn_synthetic.py'),
    dict(name='htc', config='configs/htc/htc_r18_fpn_synthetic.py'),
]
seeds = [0]
run = dict(train=True, test=True, speed=['inference', 'train'])
# Speed is measured at the demo's own image size; tools/benchmark.py does the 512x512 R50 runs.
speed = dict(img_size=128, threads=2, warmup=2, runs=5, device='cpu')
report = dict(baseline='mask_rcnn',
              columns=['bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_75',
                       'train.s_per_iter', 'inference.s_per_img', 'train.peak_mem_mb', 'params'])
