# The main job (`make demo`): the cascade-strategy ablation on the embedded synthetic dataset.
# Mask R-CNN -> Cascade Mask R-CNN -> HTC without semantic -> HTC, small CPU configs.
#
# 15 minutes on 2 CPU cores (install included) do not train four detectors from scratch to a
# useful accuracy (Mask R-CNN alone needs ~1000 iterations, HTC costs 2.5x an iteration). So the
# rows share one trunk: ResNet-18-FPN + RPN trained once (as Mask R-CNN, 1000 iterations), which
# initialises every row; each row then trains end to end for 500 iterations with its own RoI
# head (and HTC its semantic head) from scratch. Every row gets the same initialisation and the
# same schedule; the trunk is not frozen, so each row's backbone adapts to its heads. For
# end-to-end training of every row from scratch, run a copy of this spec with `trunk = None`
# (and a longer schedule) through tools/ablate.py.
_base_ = ['./_base_/main_protocol.py']  # the shared trunk, the schedule, bf16, 64 RoIs
# `cost`: relative time of a run, so that two jobs start the longest first
variants = [
    dict(name='mask_rcnn', config='configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py', cost=1.0),
    dict(name='cascade_mask_rcnn', cost=2.2,
         config='configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='htc_without_semantic', cost=2.5,
         config='configs/htc/htc-without-semantic_r18_fpn_synthetic.py'),
    dict(name='htc', config='configs/htc/htc_r18_fpn_synthetic.py', cost=4.5),
]

# Training speed comes from the training log (mean s/iter); inference is benchmarked at the
# demo's image size. tools/benchmark.py does the 512x512 R50 runs.
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=2, runs=5, device='cpu')
report = dict(baseline='mask_rcnn',
              columns=['bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_75',
                       'train_time_s', 'inference.s_per_img', 'peak_rss_mb', 'params'])
# One line under the table (tools/ablate.py adds the trunk, the schedule, seeds and what ± and
# the intervals cover): what was trained and how, the same for every row.
protocol = ('Main job: small synthetic CPU configs (ResNet-18-FPN, 64 channels) on the embedded '
            'synthetic train set; every row starts from one shared trunk, trains end to end '
            'with its RoI head from scratch on the same schedule, and is evaluated once on the '
            'synthetic validation set')
