# + the semantic branch: step 2 is HTC without semantic, so this step is the full HTC config
_base_ = '../../htc/htc_r18_fpn_synthetic.py'
