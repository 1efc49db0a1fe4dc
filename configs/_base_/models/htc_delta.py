# Mixin: what turns a Cascade Mask R-CNN config into HTC without the semantic branch.
#   _base_ = ['<a cascade config>', '../_base_/models/htc_delta.py']
#   model = _base_.htc_delta
htc_delta = dict(
    type='HybridTaskCascade',
    roi_head=dict(
        interleaved=True,  # stage t's mask branch trains on the boxes stage t regressed
        # stage t's mask head adds the earlier mask heads' features through a 1x1 `conv_res`
        # (the head gives it to every mask head but the first unless with_conv_res is set)
        mask_info_flow=True,
        mask_average='all'))  # test: average every stage's mask (the paper; MMDetection: 'last')
