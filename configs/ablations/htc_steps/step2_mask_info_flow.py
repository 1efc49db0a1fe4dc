# + mask information flow: each stage's mask head also gets the earlier mask heads' features
_base_ = './step1_interleaved.py'
model = dict(roi_head=dict(mask_info_flow=True))
