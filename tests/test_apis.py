"""Inference API (init_detector / inference_detector) and drawing, on the real small config."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from cascade_seg.apis import build_test_pipeline, inference_detector, init_detector
from cascade_seg.engine.runner_utils import load_config
from cascade_seg.structures import DetDataSample
from cascade_seg.visualization import DetLocalVisualizer, class_color, draw_arrays, draw_instances

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
CLASSES = ('ring', 'ell', 'cross', 'crescent', 'triangle', 'ellipse')
# keep every detection so the mask branch and the mask pasting run on random weights
SMALL = {'model.test_cfg.rcnn.score_thr': 0.0, 'model.test_cfg.rcnn.max_per_img': 5}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return init_detector(CONFIG, cfg_options=SMALL)


def _image(h=48, w=64, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def test_test_pipeline_drops_annotations_and_reads_arrays():
    cfg = load_config(CONFIG)
    from_file = [type(t).__name__ for t in build_test_pipeline(cfg).transforms]
    from_array = [type(t).__name__ for t in build_test_pipeline(cfg, from_array=True).transforms]
    assert from_file[0] == 'LoadImageFromFile' and 'LoadAnnotations' not in from_file
    assert from_array == ['LoadImageFromNDArray'] + from_file[1:]
    out = build_test_pipeline(cfg, from_array=True)(dict(img=_image(), img_id=3))
    assert out['inputs'].shape[0] == 3 and out['inputs'].dtype == torch.uint8
    assert out['data_samples'].ori_shape == (48, 64)
    assert max(out['data_samples'].img_shape) == 128  # the config's Resize ran


def test_init_detector_without_checkpoint(model):
    assert not model.training
    assert model.dataset_meta['classes'] == CLASSES  # from the config's dataset
    assert model.cfg.model.test_cfg.rcnn.score_thr == 0.0


def _check_prediction(result, h, w):
    assert isinstance(result, DetDataSample)
    pred = result.pred_instances
    n = len(pred)
    assert 0 < n <= 5
    assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, ) and pred.labels.shape == (n, )
    assert pred.masks.shape == (n, h, w) and pred.masks.dtype == torch.bool
    assert (pred.bboxes[:, 2] <= w + 1e-3).all() and (pred.bboxes[:, 3] <= h + 1e-3).all()
    assert ((pred.labels >= 0) & (pred.labels < len(CLASSES))).all()


def test_inference_on_array_path_and_list(model, tmp_path):
    img = _image()
    from_array = inference_detector(model, img)
    _check_prediction(from_array, 48, 64)
    path = str(tmp_path / 'img.png')
    cv2.imwrite(path, img)
    from_path = inference_detector(model, path)
    _check_prediction(from_path, 48, 64)
    assert from_path.img_path == path
    # a lossless file and the same array give the same predictions
    assert torch.allclose(from_path.pred_instances.bboxes, from_array.pred_instances.bboxes)
    both = inference_detector(model, [img, _image(40, 40, seed=1)], progress=True)
    assert isinstance(both, list) and len(both) == 2
    _check_prediction(both[1], 40, 40)
    with pytest.raises(FileNotFoundError, match='missing.png'):
        inference_detector(model, str(tmp_path / 'missing.png'))


def test_init_detector_loads_checkpoint_and_reports_mismatch(model, tmp_path):
    path = str(tmp_path / 'ckpt.pth')
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dict(classes=('x', ) * 6))), path)
    loaded = init_detector(CONFIG, path, cfg_options=SMALL)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded.dataset_meta['classes'] == ('x', ) * 6  # checkpoint meta wins over config
    # a head for 3 classes does not fit the 6-class config: both shapes are named
    options = dict(SMALL, **{'model.roi_head.num_classes': 3})
    with pytest.raises(RuntimeError, match=r'fc_cls\.weight: \(7, \d+\) vs \(4, \d+\)'):
        init_detector(CONFIG, path, cfg_options=options, strict=True)
    partial = init_detector(CONFIG, path, cfg_options=options)  # non-strict: the rest loads
    name = next(k for k in state if k.startswith('backbone.') and k.endswith('weight'))
    assert torch.equal(partial.state_dict()[name], state[name])


def test_draw_instances():
    img = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 15:35, 10:30] = True
    boxes = np.array([[10, 15, 30, 35]], np.float32)
    out = draw_arrays(img, boxes, [2], np.array([0.9]), mask, ['a', 'b', 'c'], score_thr=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    color = np.array(class_color(2))
    expected = (100 * 0.5 + color * 0.5).astype(np.uint8)
    assert (out[25, 20] == expected).all()  # inside the mask: blended with the class colour
    assert (out[5, 50] == 100).all()  # far away: untouched
    assert (out[35, 10] == color).all()  # box corner drawn in the class colour
    assert (img == 100).all()  # input not modified
    low = draw_arrays(img, boxes, [2], np.array([0.2]), mask, score_thr=0.5)
    assert (low == img).all()  # below the threshold: nothing drawn
    inst = InstanceData(bboxes=torch.from_numpy(boxes), labels=torch.tensor([2]),
                        scores=torch.tensor([0.9]), masks=torch.from_numpy(mask))
    assert (draw_instances(img, inst, ['a', 'b', 'c'], score_thr=0.5) == out).all()
    assert class_color(0) != class_color(1)


def test_visualizer_writes_side_by_side_file(tmp_path):
    sample = DetDataSample()
    masks = torch.zeros((1, 32, 32), dtype=torch.bool)
    masks[0, 8:20, 8:20] = True
    inst = InstanceData(bboxes=torch.tensor([[8., 8., 20., 20.]]), labels=torch.tensor([0]),
                        masks=masks)
    sample.gt_instances = inst
    sample.pred_instances = inst.clone()
    sample.pred_instances.scores = torch.tensor([0.8])
    vis = DetLocalVisualizer(name='test_apis_vis')
    vis.dataset_meta = dict(classes=('thing', ))
    out_file = str(tmp_path / 'vis.png')
    vis.add_datasample('x', np.zeros((32, 32, 3), np.uint8), sample, out_file=out_file)
    drawn = cv2.imread(out_file)
    assert drawn.shape == (32, 64, 3)  # GT | prediction
    assert drawn[:, :32].any() and drawn[:, 32:].any()
