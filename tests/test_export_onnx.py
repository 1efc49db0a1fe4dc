"""ONNX export: onnxruntime gives PyTorch's detections and masks (Mask R-CNN, Cascade Mask R-CNN,
HTC with the semantic branch) on synthetic val images of sizes other than the traced one."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('syn'))
    make_synthetic_coco(root, num_train=1, num_val=2, image_size=(96, 96), seed=5, p_empty=0.0)
    val = [cv2.imread(osp.join(root, 'val', n)) for n in sorted(os.listdir(osp.join(root, 'val')))]
    # other sizes and aspect ratios than the traced 128 x 128 input
    return val + [cv2.resize(val[0], (150, 70)), cv2.resize(val[1], (40, 120))]


def _op_types(graph):
    """Op types of a graph and of its subgraphs (the branches of ``If`` nodes)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                ops |= _op_types(attr.g)
    return ops


@pytest.mark.parametrize('rel', ['mask_rcnn/mask-rcnn_r18_fpn_synthetic.py',
                                 'cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py',
                                 'htc/htc_r18_fpn_synthetic.py'])
def test_onnxruntime_matches_pytorch(rel, images, tmp_path):
    from tests.test_tools import _tool
    out = str(tmp_path / 'model.onnx')
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f'{i}.png'))
        cv2.imwrite(paths[-1], img)
    # random weights (seeded by the builder), 100 detections per image: a dense test of the
    # box cascade, NMS and the mask heads
    reports = _tool('export_onnx').main([osp.join(REPO, 'configs', rel), '--out', out,
                                         '--verify', *paths, '--cfg-options', 'log_level=WARNING'])
    import onnx
    ops = _op_types(onnx.load(out).graph)
    assert {'RoiAlign', 'NonMaxSuppression', 'TopK'} <= ops  # all inside the graph
    for r in reports:
        assert r['num_ref'] > 10
        assert r['matched_fraction'] >= 0.99, r
        assert r['min_mask_iou'] >= 0.99, r


def test_preprocess_matches_the_pipeline_and_preprocessor():
    from mmengine.registry import init_default_scope

    from cascade_seg.apis.inference import build_test_pipeline
    from cascade_seg.deploy.onnx_export import _pipeline_settings, preprocess
    from cascade_seg.engine.runner_utils import load_config
    from cascade_seg.registry import MODELS
    cfg = load_config(osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'))
    init_default_scope('cascade_seg')
    img = np.random.default_rng(1).integers(0, 256, (70, 150, 3), dtype=np.uint8)
    data = build_test_pipeline(cfg, from_array=True)(dict(img=img, img_id=0))
    pre = MODELS.build(cfg.model.data_preprocessor)
    batch = pre(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
    x, img_shape, scale = preprocess(img, _pipeline_settings(cfg))
    assert np.array_equal(x, batch['inputs'].numpy())
    assert tuple(img_shape) == data['data_samples'].img_shape
    assert scale == pytest.approx(data['data_samples'].scale_factor)
