# The main job's protocol, shared by the specs that inherit it
# (`_base_ = ['./_base_/main_protocol.py']`):
# one trunk (ResNet-18-FPN + RPN, trained once per seed as the small Mask R-CNN for 1000
# iterations) initialises every row, which then trains end to end for 500 iterations with the
# rest of its model from its own initialisation. bf16 autocast in training and evaluation
# (native on AVX512-BF16 / AMX CPUs, fp32 elsewhere), 64 sampled RoIs per image (the same
# accuracy here as 128, 1.6x cheaper RoI heads). A spec that changes the neck or proposal
# generator shares only the backbone: `trunk = dict(modules=('backbone', ))`.
#
# Every spec inheriting this file gets the same trunk (same config, same hash), so one trained
# trunk can serve them all: copy `<work-dir>/_trunk` of one spec's run into the next one's work
# dir and tools/ablate.py finds it done.


def _iters(n, warmup):
    """An iteration schedule: linear warm-up, then LR x0.1 for the last fifth."""
    return {
        'train_cfg': dict(type='IterBasedTrainLoop', max_iters=n),
        'param_scheduler': [
            dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=warmup),
            dict(type='MultiStepLR', by_epoch=False, begin=0, end=n, milestones=[int(0.8 * n)],
                 gamma=0.1)],
        '+default_hooks.checkpoint.by_epoch': False,
        'default_hooks.checkpoint.interval': n,
    }


common_overrides = {
    **_iters(500, warmup=50),
    'model.train_cfg.rcnn.sampler.num': 64,
    '+precision': 'bf16',
    'log_processor.by_epoch': False,
}
trunk = dict(config='configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py',
             overrides=_iters(1000, warmup=100),
             modules=('backbone', 'neck', 'proposal_generator'), freeze=False)
seeds = [0]
