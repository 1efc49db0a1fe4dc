_base_ = './schedule_1x.py'
# Short CPU schedule for the synthetic set (~300 images, batch 4: ~75 iterations per epoch),
# trained from scratch, hence the short warm-up and gradient clipping.
train_cfg = dict(max_epochs=12, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    _base_.param_scheduler[1],
]
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(base_batch_size=4)
