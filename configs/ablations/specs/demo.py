# The main job (`make demo`): the cascade-strategy ablation on the embedded synthetic dataset.
# Mask R-CNN -> Cascade Mask R-CNN -> HTC without semantic -> HTC, small CPU configs, one schedule.
variants = [
    dict(name='mask_rcnn', config='configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='cascade_mask_rcnn', config='configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='htc_without_semantic', config='configs/htc/htc-without-semantic_r18_fpn_synthetic.py'),
    dict(name='htc', config='configs/htc/htc_r18_fpn_synthetic.py'),
]
# The demo must finish in 15 minutes on 2 CPU cores: every model gets the same short schedule
# (AdamW from scratch, LR x0.1 for the last epoch). For the full synthetic schedule, copy this
# spec without `common_overrides` and run it with tools/ablate.py.
common_overrides = {
    'train_cfg.max_epochs': 3,
    'train_cfg.val_interval': 100,  # evaluated once, by the test run
    'param_scheduler.1.milestones': [2],
}
seeds = [0]
# Training speed comes from the training log (mean s/iter); inference is benchmarked at the
# demo's image size. tools/benchmark.py does the 512x512 R50 runs.
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=2, runs=5, device='cpu')
report = dict(baseline='mask_rcnn',
              columns=['bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_75',
                       'train_time_s', 'inference.s_per_img', 'peak_rss_mb', 'params'])
# One line under the table (tools/ablate.py adds the schedule, seeds and what ± and the
# intervals cover): what was trained and how, the same for every row.
protocol = ("Main job: each model's small synthetic CPU config trained from scratch on the "
            'embedded synthetic train set, all with the same schedule, each evaluated once on '
            'the synthetic validation set')
