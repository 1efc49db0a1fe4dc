# `make demo DEMO_ARGS=--gpu`: the demo's four models at full size (ResNet-50, 256-channel FPN,
# 1024-d box head) on a larger synthetic set (384 px; tools/run_demo.py writes it to
# data/synthetic_gpu), trained on a CUDA device with the same schedule for every model.
variants = [
    dict(name='mask_rcnn', config='configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='cascade_mask_rcnn', config='configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'),
    dict(name='htc_without_semantic', config='configs/htc/htc-without-semantic_r18_fpn_synthetic.py'),
    dict(name='htc', config='configs/htc/htc_r18_fpn_synthetic.py', overrides={
        'model.roi_head.semantic_roi_extractor.out_channels': 256,
        'model.roi_head.semantic_head.in_channels': 256,
        'model.roi_head.semantic_head.conv_out_channels': 256}),
]
_data = 'data/synthetic_gpu/'
_size = (384, 384)
common_overrides = {
    'model.backbone.depth': 50,
    'model.neck.in_channels': [256, 512, 1024, 2048],
    'model.neck.out_channels': 256,
    'model.rpn_head.in_channels': 256,
    'model.rpn_head.feat_channels': 256,
    'model.roi_head.bbox_roi_extractor.out_channels': 256,
    'model.roi_head.bbox_head.in_channels': 256,
    'model.roi_head.bbox_head.fc_out_channels': 1024,
    'model.roi_head.mask_roi_extractor.out_channels': 256,
    'model.roi_head.mask_head.in_channels': 256,
    'model.roi_head.mask_head.conv_out_channels': 256,
    'model.train_cfg.rpn.sampler.num': 256,
    'model.train_cfg.rcnn.sampler.num': 512,
    'train_dataloader.batch_size': 8,
    'train_dataloader.num_workers': 4,
    'train_dataloader.dataset.data_root': _data,
    'train_dataloader.dataset.pipeline.2.scale': _size,
    'val_dataloader.dataset.data_root': _data,
    'val_dataloader.dataset.pipeline.1.scale': _size,
    'test_dataloader.dataset.data_root': _data,
    'test_dataloader.dataset.pipeline.1.scale': _size,
    'val_evaluator.ann_file': _data + 'annotations/instances_val.json',
    'test_evaluator.ann_file': _data + 'annotations/instances_val.json',
    'train_cfg.max_epochs': 24,
}
seeds = [0]
run = dict(train=True, test=True, speed=['inference', 'train'])
speed = dict(img_size=512, threads=2, warmup=2, runs=5, device='cuda')
report = dict(baseline='mask_rcnn',
              columns=['bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_75',
                       'train.s_per_iter', 'inference.s_per_img', 'train.peak_mem_mb', 'params'])
protocol = ('GPU demo: the four models at full size (ResNet-50-FPN, from scratch) on the 384 px '
            'synthetic set, all with the same schedule, each evaluated once on its validation set')
