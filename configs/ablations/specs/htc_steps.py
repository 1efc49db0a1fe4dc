# HTC paper, step by step: Cascade -> +interleaved -> +mask information flow -> +semantic.
# The four configs in configs/ablations/htc_steps/ differ by one key each.
variants = [
    dict(name='cascade', config='configs/ablations/htc_steps/step0_cascade.py'),
    dict(name='+interleaved', config='configs/ablations/htc_steps/step1_interleaved.py'),
    dict(name='+mask_info_flow', config='configs/ablations/htc_steps/step2_mask_info_flow.py'),
    dict(name='+semantic', config='configs/ablations/htc_steps/step3_semantic.py'),
]
seeds = [0]
run = dict(train=True, test=True, speed=['inference', 'train'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='cascade', columns=['bbox_mAP', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                                           'train.s_per_iter', 'inference.s_per_img'])
protocol = 'Synthetic CPU configs from scratch; each HTC step adds one key to the previous one'
