_base_ = './schedule_1x.py'
# 24 epochs, lr x0.1 after epochs 16 and 22 (same warm-up)
train_cfg = dict(max_epochs=24)
param_scheduler = [
    _base_.param_scheduler[0],
    dict(type='MultiStepLR', begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1)
]
