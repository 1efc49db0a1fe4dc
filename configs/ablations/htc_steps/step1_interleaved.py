# + interleaved execution: each stage's mask branch trains on the boxes that stage regressed
_base_ = './step0_cascade.py'
model = dict(roi_head=dict(interleaved=True))
