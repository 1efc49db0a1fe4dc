"""Issue check: a COCO dataset that is not ours (sparse category ids, polygons and RLE, crowd
regions, grayscale/RGBA/16-bit images, nested file names, images without annotations) loads
through the COCO base config by changing dataset keys only, and CocoMetric scores its own
ground truth, turned into predictions, at AP 1.0."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

import cascade_seg.datasets  # noqa: F401
import cascade_seg.evaluation  # noqa: F401
from cascade_seg.registry import DATASETS, METRICS

ROOT = osp.join(osp.dirname(__file__), '..')


@pytest.mark.parametrize('classes', [None, ('cat', 'toothbrush', 'person')])
def test_foreign_coco_by_config_change_scores_ap_one(foreign_coco, classes):
    cfg = Config.fromfile(osp.join(ROOT, 'configs/_base_/datasets/coco_instance.py'))
    overrides = dict(data_root=str(foreign_coco.root) + '/', ann_file='annotations/instances.json',
                     data_prefix=dict(img='images/'))
    if classes:
        overrides['metainfo'] = dict(classes=classes)
    cfg.test_dataloader.dataset.update(overrides)
    cfg.test_evaluator.ann_file = str(foreign_coco.ann_file)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    assert len(dataset) == len(foreign_coco.coco['images'])  # test mode keeps every image
    metric = METRICS.build(cfg.test_evaluator)
    metric.dataset_meta = dataset.metainfo
    num_gt = 0
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        gt = sample.gt_instances
        num_gt += len(gt)
        sample.pred_instances = InstanceData(bboxes=gt.bboxes, labels=gt.labels,
                                             scores=torch.ones(len(gt)), masks=gt.masks)
        metric.process({}, [sample])
    non_crowd = sum(1 for a in foreign_coco.coco['annotations'] if not a['iscrowd'])
    assert num_gt == non_crowd  # crowd regions are never positives
    res = metric.evaluate(len(dataset))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0)
    assert res['coco/segm_mAP'] == pytest.approx(1.0)
    assert res['coco/segm_mAP_75'] == pytest.approx(1.0)
