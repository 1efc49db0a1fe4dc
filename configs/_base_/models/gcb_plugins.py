# GCNet (arXiv 1904.11492) global context blocks as ResNet plugins, MMDetection's settings: one
# ContextBlock after conv3 (+ its norm) of every bottleneck of stages c3-c5, bottleneck ratio
# 1/16 or 1/4. A config adds them with one key:
#   _base_ = ['<an R50 config>', '../_base_/models/gcb_plugins.py']
#   model = dict(backbone=dict(plugins=_base_.gcb_r16_c3_c5))
gcb_r16_c3_c5 = [dict(cfg=dict(type='ContextBlock', ratio=1. / 16),
                      stages=(False, True, True, True), position='after_conv3')]
gcb_r4_c3_c5 = [dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
                     stages=(False, True, True, True), position='after_conv3')]
