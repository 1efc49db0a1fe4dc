"""The demo's pictures: a predictor that detects something yields a picture that differs
from the input where it detected it (filled mask, contour, box, label); no detection above
the threshold leaves the input unchanged apart from the enlargement."""
import importlib.util
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from cascade_seg.visualization import draw_prediction, select_instances

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))
CONFIG = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')


def _run_demo():
    spec = importlib.util.spec_from_file_location('run_demo', osp.join(ROOT, 'tools/run_demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(h=64, w=80):
    rs = np.random.RandomState(0)
    return rs.randint(40, 200, size=(h, w, 3)).astype(np.uint8)


def _prediction(scores=(0.9, 0.6, 0.1)):
    """Three square detections; the third scores below the default threshold."""
    boxes = torch.tensor([[10., 12., 30., 34.], [44., 8., 70., 30.], [40., 40., 60., 60.]])
    masks = torch.zeros((3, 64, 80), dtype=torch.bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        m[y1 + 2:y2 - 2, x1 + 2:x2 - 2] = True
    return InstanceData(bboxes=boxes, labels=torch.tensor([0, 2, 1]),
                        scores=torch.tensor(scores), masks=masks)


def _region(x1, y1, x2, y2, scale):
    return (slice(int(y1 * scale), int(y2 * scale)), slice(int(x1 * scale), int(x2 * scale)))


def test_detections_are_drawn_where_they_are():
    img, pred = _image(), _prediction()
    canvas, n = draw_prediction(img, pred, ['ring', 'ell', 'cross'], score_thr=0.3, scale=3)
    base = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    assert canvas.shape == base.shape and n == 2
    diff = (canvas != base).any(axis=2)
    for box in pred.bboxes[:2].tolist():  # mask interior, box and contour: all changed
        inside = diff[_region(*box, 3)]
        assert inside.mean() > 0.6
        x1, y1, x2, y2 = (int(v * 3) for v in box)
        assert diff[(y1 + y2) // 2, x1] and diff[y1, (x1 + x2) // 2]  # box edges
    assert not diff[_region(40, 40, 60, 60, 3)][6:].any()  # below the threshold: not drawn
    assert not diff[-20:, :30].any()  # far from any detection: untouched
    # the mask is blended with the class colour, not painted over
    y, x = int(23 * 3), int(20 * 3)
    assert 0 < np.abs(canvas[y, x].astype(int) - base[y, x].astype(int)).max() < 255


def test_no_detection_leaves_the_input_unchanged():
    img = _image()
    base = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    empty = InstanceData(bboxes=torch.zeros((0, 4)), labels=torch.zeros(0, dtype=torch.long),
                         scores=torch.zeros(0), masks=torch.zeros((0, 64, 80), dtype=torch.bool))
    canvas, n = draw_prediction(img, empty, scale=3)
    assert n == 0 and np.array_equal(canvas, base)
    low, n = draw_prediction(img, _prediction(scores=(0.2, 0.1, 0.05)), score_thr=0.3, scale=3)
    assert n == 0 and np.array_equal(low, base)
    same, _ = draw_prediction(img, empty)  # no scaling: an equal copy
    assert np.array_equal(same, img) and same is not img


def test_top_k_only_when_asked():
    pred = _prediction(scores=(0.2, 0.25, 0.1))
    assert list(select_instances(pred, 0.3)) == []
    assert list(select_instances(pred, 0.3, top_k=2)) == [1, 0]
    assert list(select_instances(_prediction(), 0.3)) == [0, 1]


def test_demo_visualize_images_with_a_stub_predictor(tmp_path):
    run_demo = _run_demo()
    img = _image()
    paths = []
    for name in ('a', 'b'):
        p = str(tmp_path / f'{name}.jpg')
        cv2.imwrite(p, img, [cv2.IMWRITE_JPEG_QUALITY, 100])
        paths.append(p)
    stub = {paths[0]: _prediction(), paths[1]: _prediction(scores=(0.05, 0.05, 0.05))}
    out = run_demo.visualize_images(stub.__getitem__, paths, str(tmp_path / 'vis'), 'model',
                                    ['ring', 'ell', 'cross'], score_thr=0.3, scale=2)
    assert [n for _, n in out] == [2, 0]
    assert [osp.basename(p) for p, _ in out] == ['model_a.png', 'model_b.png']
    for (png, n), src in zip(out, paths):
        base = cv2.resize(cv2.imread(src), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        drawn = cv2.imread(png)
        if n:
            assert (drawn[_region(10, 12, 30, 34, 2)] != base[_region(10, 12, 30, 34, 2)]).any()
        else:
            assert np.array_equal(drawn, base)


@pytest.mark.slow
def test_real_detector_output_is_drawn(tmp_path):
    """The path of tools/run_demo.py with a real (untrained) detector: its InstanceData
    (tensor masks at image size) is drawn; its top-5 change the picture."""
    from cascade_seg.apis import inference_detector, init_detector
    torch.manual_seed(0)
    model = init_detector(CONFIG, cfg_options={'model.test_cfg.rcnn.score_thr': 0.0})
    img_path = str(tmp_path / 'img.png')
    cv2.imwrite(img_path, _image(128, 128))
    pred = inference_detector(model, img_path).pred_instances
    assert len(pred) > 0 and pred.masks.shape[1:] == (128, 128)
    canvas, n = draw_prediction(cv2.imread(img_path), pred, model.dataset_meta['classes'],
                                top_k=5, scale=2)
    assert n == 5
    base = cv2.resize(cv2.imread(img_path), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    assert (canvas != base).any(axis=2).sum() > 100
