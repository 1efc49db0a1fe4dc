_base_ = ['../htc/htc-without-semantic_r18_fpn_synthetic.py', '../_base_/models/panet_delta.py']
model = _base_.panet_delta
