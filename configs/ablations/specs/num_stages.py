# Number of cascade stages, 1 (Mask R-CNN) to 4. Stage 3 (the fourth) gets IoU 0.75 and
# tighter target stds; loss weights halve per stage as in the Cascade R-CNN paper.
base = 'configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
# stage names in stage_overrides are checked, so fewer stages restate the surviving overrides
_s1_head = dict(s1=dict(bbox_head=dict(bbox_coder=dict(target_stds=[0.05, 0.05, 0.1, 0.1]))))
_s1_train = dict(s1=dict(assigner=dict(pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.6)))
variants = [
    dict(name='1 stage', overrides={'model.roi_head.num_stages': 1,
                                    'model.roi_head.stage_loss_weights': [1.0],
                                    'model.roi_head.stage_overrides': {},
                                    'model.train_cfg.rcnn.stage_overrides': {}}),
    dict(name='2 stages', overrides={'model.roi_head.num_stages': 2,
                                     'model.roi_head.stage_loss_weights': [1.0, 0.5],
                                     'model.roi_head.stage_overrides': _s1_head,
                                     'model.train_cfg.rcnn.stage_overrides': _s1_train}),
    dict(name='3 stages', overrides={}),
    dict(name='4 stages', overrides={
        'model.roi_head.num_stages': 4,
        'model.roi_head.stage_loss_weights': [1.0, 0.5, 0.25, 0.125],
        '+model.roi_head.stage_overrides.s3': dict(bbox_head=dict(bbox_coder=dict(
            target_stds=[0.025, 0.025, 0.05, 0.05]))),
        '+model.train_cfg.rcnn.stage_overrides.s3': dict(assigner=dict(
            pos_iou_thr=0.75, neg_iou_thr=0.75, min_pos_iou=0.75)),
    }),
]
seeds = [0]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='1 stage', columns=['bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'segm_mAP',
                                           'inference.s_per_img', 'params'])
protocol = 'Synthetic Cascade Mask R-CNN (CPU config) from scratch with 1 to 4 stages'
