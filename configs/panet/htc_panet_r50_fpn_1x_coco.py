# HTC with PANet's three components. The semantic branch's RoI feature (K, C, S, S) is added to
# the all-level RoI features (K, L, C, S, S), broadcast over the level axis.
_base_ = ['../htc/htc_r50_fpn_1x_coco.py', '../_base_/models/panet_delta.py']
model = _base_.panet_delta
