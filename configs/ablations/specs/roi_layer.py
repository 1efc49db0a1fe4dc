# Mask R-CNN paper, Table 2c: RoIPool vs RoIAlign (box and mask branches switched together).
base = 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'
variants = [
    dict(name='RoIAlign', overrides={}),
    dict(name='RoIAlign (unaligned)', overrides={
        'model.roi_head.bbox_roi_extractor.roi_layer.aligned': False,
        'model.roi_head.mask_roi_extractor.roi_layer.aligned': False}),
    dict(name='RoIPool', overrides={
        'model.roi_head.bbox_roi_extractor.roi_layer': dict(type='RoIPool', output_size=7),
        'model.roi_head.mask_roi_extractor.roi_layer': dict(type='RoIPool', output_size=14)}),
]
seeds = [0]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=128, threads=2, warmup=1, runs=3)
report = dict(baseline='RoIAlign', columns=['bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_75',
                                            'inference.s_per_img'])
protocol = 'Synthetic Mask R-CNN (CPU config) from scratch; only the RoI feature layer differs'
