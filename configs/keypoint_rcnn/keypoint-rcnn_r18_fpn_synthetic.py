# Small Keypoint R-CNN for CPU on the synthetic set's keypoint files: every shape is one
# category, 'shape', with four extreme points (top, bottom, left, right; see
# docs/synthetic_dataset.md). Generate them first:
#   python tools/make_synthetic_coco.py --out data/synthetic --keypoints
# Another COCO keypoint file: override the dataset keys (data_root, ann_file, data_prefix,
# metainfo.classes), model.roi_head.keypoint_head.num_keypoints and, unless it has COCO's 17
# person keypoints, val_evaluator.kpt_oks_sigmas.
_base_ = [
    '../mask_rcnn/mask-rcnn_r18_fpn_synthetic.py', '../_base_/models/keypoint-rcnn_delta.py'
]
metainfo = dict(classes=('shape', ))
model = dict(
    type='KeypointRCNN',
    roi_head=dict(
        num_classes=len(metainfo['classes']),
        mask_roi_extractor=None,
        mask_head=None,
        keypoint_roi_extractor=dict(_base_.keypoint_delta['roi_head']['keypoint_roi_extractor'],
                                    out_channels=64),
        # the paper's head is 8 x 512 channels; 4 x 128 keeps a CPU step cheap
        keypoint_head=dict(_base_.keypoint_delta['roi_head']['keypoint_head'], num_keypoints=4,
                           in_channels=64, num_convs=4, conv_out_channels=128)))


def _with(pipeline, **changes):
    """The base pipeline with some steps' arguments changed, keyed by step type."""
    return [dict(step, **changes.get(step['type'], {})) for step in pipeline]


# boxes and keypoints, no masks
train_pipeline = _with(_base_.train_pipeline,
                       LoadAnnotations=dict(with_mask=False, with_keypoints=True))
test_pipeline = _with(_base_.test_pipeline,
                      LoadAnnotations=dict(with_mask=False, with_keypoints=True))
train_dataloader = dict(dataset=dict(
    ann_file='annotations/keypoints_train.json', metainfo=metainfo,
    pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(
    ann_file='annotations/keypoints_val.json', metainfo=metainfo,
    pipeline=test_pipeline))
test_dataloader = val_dataloader
# Extreme points are sharp landmarks (a pixel each, like COCO's eyes: sigma 0.025); 0.05 allows
# for the quantisation of 128-pixel images.
val_evaluator = dict(ann_file=_base_.data_root + 'annotations/keypoints_val.json',
                     metric=['bbox', 'keypoints'], kpt_oks_sigmas=0.05)
test_evaluator = val_evaluator
