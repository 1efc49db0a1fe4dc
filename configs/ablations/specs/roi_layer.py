# Mask R-CNN paper, Table 2c: RoIPool vs RoIAlign (box and mask branches switched together).
# The main job's protocol (_base_/main_protocol.py): shared trunk, 500 iterations, bf16.
_base_ = ['./_base_/main_protocol.py']
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='RoIAlign', overrides={}, paper=dict(segm_mAP=30.3, segm_mAP_75=31.5)),
    dict(name='RoIAlign (unaligned)', overrides={
        'model.roi_head.bbox_roi_extractor.roi_layer.aligned': False,
        'model.roi_head.mask_roi_extractor.roi_layer.aligned': False}),
    dict(name='RoIPool', paper=dict(segm_mAP=26.9, segm_mAP_75=26.4), overrides={
        'model.roi_head.bbox_roi_extractor.roi_layer': dict(type='RoIPool', output_size=7),
        'model.roi_head.mask_roi_extractor.roi_layer': dict(type='RoIPool', output_size=14)}),
]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='RoIAlign', columns=['bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_75',
                                            'inference.s_per_img'])
protocol = ('Synthetic Mask R-CNN (R18-FPN CPU config), main-job protocol'
            '; only the RoI feature layer differs')
