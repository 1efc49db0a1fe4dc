"""A corpus of bad inputs (issue 13, items 4-11), generated here, with the verdict for each.

Each case asserts the exact outcome: the error names the file and the annotation, image
or config key; or, under on_bad_annotation='skip', the dataset logs the dropped items and
their count, CocoMetric logs that it scores the same ground truth, and perfect predictions
of what the dataset kept score AP 1.0 (they did not before: the metric read the raw file).
The annotation corpus edits the foreign COCO dataset of conftest.py.
"""
import os
import os.path as osp
import re
import types

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

import cascade_seg.datasets.coco as coco_module
import cascade_seg.engine  # noqa: F401  (safe loader, hooks)
import cascade_seg.engine.runner_utils as runner_utils
import cascade_seg.evaluation.coco_metric as metric_module
from cascade_seg.datasets import CocoDataset
from cascade_seg.engine.hooks import SavePredictionImagesHook
from cascade_seg.evaluation import CocoMetric
from cascade_seg.structures import DetDataSample
from tests.test_tools import _tool  # loads tools/<name>.py as a module

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
HTC_CONFIG = osp.join(REPO, 'configs/htc/htc_r18_fpn_synthetic.py')
TEST_PIPELINE = [dict(type='LoadImageFromFile'),
                 dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                 dict(type='PackDetInputs')]


def _ann(coco, ann_id):
    return next(a for a in coco['annotations'] if a['id'] == ann_id)


def _set(ann_id, **fields):
    return lambda coco: _ann(coco, ann_id).update(fields)


def _image(coco, img_id):
    return next(i for i in coco['images'] if i['id'] == img_id)


# name: (edit of the foreign COCO dict, what the message must contain, dropped annotation ids,
#        dropped images). Images: 13 deep.png (40x32, annotation 105), 14 sub/dir/img.png
#        (annotation 106).
CORPUS = {
    # item 4: dropped by the dataset, but the metric used to keep them (AP < 1, or a crash
    # inside pycocotools for the two segmentation cases)
    'degenerate bbox': (_set(105, bbox=[5, 5, 0, 10]),
                        ["bad annotation id 105 of image 'deep.png'", 'degenerate bbox'],
                        [105], []),
    'polygon with 2 points': (_set(105, segmentation=[[5, 5, 25, 20]]),
                              ["bad annotation id 105 of image 'deep.png'",
                               'polygon with fewer than 3 points (4 coordinates)'], [105], []),
    'empty segmentation': (_set(105, segmentation=[]),
                           ["bad annotation id 105 of image 'deep.png'", 'empty segmentation'],
                           [105], []),
    'malformed bbox': (_set(105, bbox=[5, 5, 10]),
                       ["bad annotation id 105 of image 'deep.png'",
                        'malformed bbox [5, 5, 10] (expected [x, y, w, h])'], [105], []),
    'non-finite bbox': (_set(105, bbox=[5, 5, float('inf'), 10]),
                        ["bad annotation id 105 of image 'deep.png'",
                         'non-finite bbox [5, 5, inf, 10]'], [105], []),
    # item 6: the box used to be clipped to nothing and the loss went NaN
    'bbox outside the image': (_set(105, bbox=[50, 5, 10, 10]),
                               ["bad annotation id 105 of image 'deep.png'",
                                'bbox [50, 5, 10, 10] lies entirely outside the image (40x32'],
                               [105], []),
    # item 5: silently replaced an object / dropped without a word / moved annotations
    'duplicate annotation id': (_set(106, id=105),
                                ["annotation id 105 is used again (image 'sub/dir/img.png'; "
                                 "first used for image 'deep.png')"], [105], []),
    'unknown image_id': (_set(106, image_id=999),
                         ['annotation id 106 refers to image_id 999, which is not in "images"'],
                         [106], []),
    'duplicate image id': (lambda c: (_image(c, 14).update(id=13), _set(106, image_id=13)(c)),
                           ["image id 13 is used by 2 images ('deep.png', 'sub/dir/img.png')"],
                           [105, 106], ['deep.png', 'sub/dir/img.png']),
}


def make_dataset(foreign_coco, ann_file, **kwargs):
    return CocoDataset(data_root=str(foreign_coco.root), ann_file=str(ann_file),
                       data_prefix=dict(img='images/'), pipeline=TEST_PIPELINE,
                       test_mode=True, **kwargs)


def capture_logs(monkeypatch):
    logged = []
    for module in (coco_module, metric_module):
        monkeypatch.setattr(module, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    return logged


@pytest.mark.parametrize('case', sorted(CORPUS))
def test_error_mode_names_file_and_ids(foreign_coco, write_coco_variant, case):
    edit, expected, _, _ = CORPUS[case]
    path = write_coco_variant(edit)
    with pytest.raises(ValueError) as err:
        make_dataset(foreign_coco, path)
    msg = str(err.value)
    assert msg.startswith(f'{path}: ') and "on_bad_annotation='skip'" in msg
    for text in expected:
        assert text in msg
    # the metric on its own (no dataset telling it to skip) refuses the file the same way,
    # when it is set up -- not after an evaluation
    metric = CocoMetric(ann_file=str(path), metric=['bbox', 'segm'])
    with pytest.raises(ValueError, match=re.escape(expected[0])):
        metric.dataset_meta = dict(classes=('person', 'cat', 'toothbrush'))


@pytest.mark.parametrize('case', sorted(CORPUS))
def test_skip_mode_logs_count_and_metric_scores_what_the_dataset_kept(
        foreign_coco, write_coco_variant, monkeypatch, case):
    edit, expected, dropped_anns, dropped_imgs = CORPUS[case]
    path = write_coco_variant(edit)
    logged = capture_logs(monkeypatch)
    dataset = make_dataset(foreign_coco, path, on_bad_annotation='skip')
    assert sorted(dataset.dropped['annotations']) == dropped_anns
    assert dataset.dropped['images'] == dropped_imgs
    assert len(dataset) == 7 - len(dropped_imgs)
    item, summary = [m for m, _ in logged]
    assert item.startswith(f'{path}: ') and item.endswith(' -- skipped')
    for text in expected:
        assert text in item
    n = len(dropped_anns)
    images = f' and {len(dropped_imgs)} images' if dropped_imgs else ''
    assert summary.startswith(f"{path}: on_bad_annotation='skip' dropped {n} annotations{images} (")
    assert all(kw['level'] >= 30 for _, kw in logged)

    logged.clear()
    metric = CocoMetric(ann_file=str(path), metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo  # carries on_bad_annotation='skip'
    (msg, kw), = logged
    assert msg == 'CocoMetric evaluates the ground truth the dataset kept: ' + summary
    kept_gt = len(metric._ground_truth().dataset['annotations'])
    assert kept_gt == sum(1 for a in foreign_coco.coco['annotations']) - n
    num_instances = 0
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        gt = sample.gt_instances
        num_instances += len(gt) + len(sample.ignored_instances)
        sample.pred_instances = InstanceData(bboxes=gt.bboxes, labels=gt.labels,
                                             scores=torch.ones(len(gt)), masks=gt.masks)
        metric.process({}, [sample])
    assert num_instances == kept_gt  # the dataset and the metric hold the same ground truth
    res = metric.evaluate(len(dataset))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0)
    assert res['coco/segm_mAP'] == pytest.approx(1.0)


# ------------------------------------------------------------------ item 7: paths
@pytest.mark.parametrize('kind', ['parent', 'absolute'])
def test_file_name_outside_the_image_folder_is_refused(foreign_coco, write_coco_variant, kind):
    outside = foreign_coco.root / 'outside.png'
    cv2.imwrite(str(outside), np.zeros((32, 40, 3), np.uint8))
    name = '../outside.png' if kind == 'parent' else str(outside)
    path = write_coco_variant(lambda c: _image(c, 13).update(file_name=name))
    for mode in ('error', 'skip'):
        with pytest.raises(ValueError) as err:
            make_dataset(foreign_coco, path, on_bad_annotation=mode)
        msg = str(err.value)
        why = 'leads out of the image folder' if kind == 'parent' else 'is an absolute path'
        assert msg.startswith(f'{path}: image id 13: file_name {name!r} {why}')
        assert 'allow_external_files=True' in msg
    allowed = make_dataset(foreign_coco, path, allow_external_files=True)
    info = next(allowed.get_data_info(i) for i in range(len(allowed))
                if allowed.get_data_info(i)['img_id'] == 13)
    assert osp.realpath(info['img_path']) == osp.realpath(outside)
    assert allowed[[allowed.get_data_info(i)['img_id'] for i in range(7)].index(13)][
        'inputs'].shape[1:] == (32, 40)


def test_show_dir_keeps_the_path_below_the_image_folder(tmp_path):
    img_dir = tmp_path / 'images'
    for sub in ('a', 'b'):
        (img_dir / sub).mkdir(parents=True)
        cv2.imwrite(str(img_dir / sub / 'x.png'), np.full((20, 20, 3), 50, np.uint8))
    outside = tmp_path / 'y.png'
    cv2.imwrite(str(outside), np.zeros((20, 20, 3), np.uint8))
    dataset = types.SimpleNamespace(data_prefix=dict(img=str(img_dir) + '/'), metainfo={})
    runner = types.SimpleNamespace(model=torch.nn.Module(),
                                   test_dataloader=types.SimpleNamespace(dataset=dataset))
    samples = []
    for path in (img_dir / 'a' / 'x.png', img_dir / 'b' / 'x.png', outside):
        sample = DetDataSample(metainfo=dict(img_path=str(path)))
        sample.pred_instances = InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                             labels=torch.zeros(0, dtype=torch.long))
        samples.append(sample)
    out = tmp_path / 'show'
    SavePredictionImagesHook(str(out)).after_test_iter(runner, 0, outputs=samples)
    written = sorted(osp.relpath(osp.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert written == ['a/x.png', 'b/x.png', 'y.png']


# ------------------------------------------------------------------ item 10: unreadable input
TRUNCATED = '{"images": [{"id": 1, "file_name": "a.png", "height": 4, "width":'


@pytest.mark.parametrize('content, expected', [
    ('', 'the annotation file is empty (0 bytes)'),
    (TRUNCATED, f'invalid JSON at line 1, column {len(TRUNCATED) + 1} (byte {len(TRUNCATED)} of '
                f'{len(TRUNCATED)}): Expecting value (it ends there: the file looks truncated)'),
])
def test_empty_or_truncated_json_names_the_file(foreign_coco, tmp_path, content, expected):
    path = tmp_path / 'broken.json'
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        make_dataset(foreign_coco, path)
    assert str(err.value) == f'{path}: {expected}'
    with pytest.raises(ValueError) as err:
        CocoMetric(ann_file=str(path))
    assert str(err.value) == f'{path}: {expected}'


def test_annotation_that_is_not_an_object(foreign_coco, write_coco_variant, monkeypatch):
    path = write_coco_variant(lambda c: c['annotations'].append([1, 2, 3]))
    with pytest.raises(ValueError) as err:
        make_dataset(foreign_coco, path)
    assert str(err.value) == (f"{path}: annotation [1, 2, 3] is not an object "
                              "(set on_bad_annotation='skip' to drop such annotations)")
    logged = capture_logs(monkeypatch)
    assert make_dataset(foreign_coco, path, on_bad_annotation='skip').dropped['annotations'] == \
        [None]
    assert logged[-1][0] == (f"{path}: on_bad_annotation='skip' dropped 1 annotations "
                             '(1 malformed annotation)')


def test_image_entry_without_size_names_the_file(foreign_coco, write_coco_variant):
    path = write_coco_variant(lambda c: _image(c, 13).pop('height'))
    for mode in ('error', 'skip'):
        with pytest.raises(ValueError) as err:
            make_dataset(foreign_coco, path, on_bad_annotation=mode)
        assert str(err.value) == f"{path}: image entry 13 lacks ['height']"


def test_zero_byte_image_names_the_path(foreign_coco):
    (foreign_coco.img_dir / 'deep.png').write_bytes(b'')
    dataset = make_dataset(foreign_coco, foreign_coco.ann_file)
    idx = next(i for i in range(len(dataset)) if dataset.get_data_info(i)['img_id'] == 13)
    with pytest.raises(ValueError) as err:
        dataset[idx]
    assert str(err.value) == f'{foreign_coco.img_dir}/deep.png: the image file is empty (0 bytes)'


def test_wrongly_typed_option_names_the_key():
    with pytest.raises(ValueError) as err:
        runner_utils.load_config(CONFIG, {'train_cfg.max_epochs': 'two'})
    assert str(err.value) == ("--cfg-options train_cfg.max_epochs=two: train_cfg.max_epochs must "
                              "be an integer (the config has 12), got the text 'two'")
    # a key the config does not have yet is checked by type after merging
    cfg = runner_utils.load_config(CONFIG, {'train_cfg': dict(type='IterBasedTrainLoop',
                                                              max_iters='two')})
    with pytest.raises(ValueError) as err:
        runner_utils.check_config_types(cfg)
    assert str(err.value) == "train_cfg.max_iters must be an integer, got 'two' (str)"
    cfg = runner_utils.load_config(CONFIG)
    cfg.optim_wrapper.optimizer.lr = '1e-3x'  # written so in a config file
    with pytest.raises(ValueError) as err:
        runner_utils.check_config_types(cfg)
    assert str(err.value) == "optim_wrapper.optimizer.lr must be a number, got '1e-3x' (str)"


def test_unread_top_level_key_is_reported(monkeypatch):
    logged = []
    monkeypatch.setattr(runner_utils, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    runner_utils.load_config(CONFIG, {'default_hook.checkpoint.interval': 1, 'trian_cfg': 1})
    assert [m for m, _ in logged] == [
        "config key 'default_hook' is not read by any component, so it has no effect; "
        "did you mean 'default_hooks'?",
        "config key 'trian_cfg' is not read by any component, so it has no effect; "
        "did you mean 'train_cfg'?"]
    assert all(kw['level'] >= 30 for _, kw in logged)


def test_shipped_configs_have_no_unread_key_warnings(monkeypatch):
    logged = []
    monkeypatch.setattr(runner_utils, 'print_log', lambda msg, **kw: logged.append(msg))
    configs = [osp.join(d, f) for d, _, fs in os.walk(osp.join(REPO, 'configs')) for f in fs
               if f.endswith('.py') and '_base_' not in d and 'specs' not in d]
    assert len(configs) > 10
    for path in configs:
        runner_utils.check_config_types(runner_utils.load_config(path))
    assert logged == []


# ------------------------------------------------------------------ item 8: tools/test.py
@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('bad_inputs_synthetic'))
    make_synthetic_coco(root, num_train=2, num_val=2, image_size=(64, 64), seed=0, p_empty=0.0)
    root += '/'
    ann = root + 'annotations/instances_val.json'
    options = [f'{k}.dataset.data_root={root}'
               for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
                'model.test_cfg.rcnn.max_per_img=10', 'log_level=WARNING']
    return types.SimpleNamespace(root=root, options=options)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A random Mask R-CNN checkpoint, the same with one NaN weight, and an HTC one."""
    from cascade_seg.apis import init_detector
    out = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    state = init_detector(CONFIG).state_dict()
    paths = types.SimpleNamespace(good=str(out / 'good.pth'), nan=str(out / 'nan.pth'),
                                  htc=str(out / 'htc.pth'))
    torch.save(dict(state_dict=state, meta={}), paths.good)
    state = {k: v.clone() for k, v in state.items()}
    # in state-dict order: the RPN's conv bias (1 Inf), the classifier (3 NaN)
    paths.bad_keys = [next(k for k in state if k.endswith('rpn_conv.bias')),
                      next(k for k in state if k.endswith('fc_cls.weight'))]
    state[paths.bad_keys[0]][1] = float('inf')
    state[paths.bad_keys[1]][0, :3] = float('nan')
    torch.save(dict(state_dict=state, meta={}), paths.nan)
    torch.save(dict(state_dict=init_detector(HTC_CONFIG).state_dict(), meta={}), paths.htc)
    return paths


def test_test_py_refuses_a_checkpoint_that_does_not_fit(synthetic, checkpoints, tmp_path):
    work = tmp_path / 'work'
    with pytest.raises(RuntimeError) as err:
        _tool('test').main([CONFIG, checkpoints.htc, '--work-dir', str(work),
                            '--cfg-options', *synthetic.options])
    msg = str(err.value)
    assert msg.startswith(f'checkpoint {checkpoints.htc} does not fit the model (pass '
                          '--partial-load')
    assert 'unexpected in checkpoint (' in msg and 'roi_head.bbox_head.2.fc_cls.weight' in msg
    assert not (work / 'metrics.json').exists()
    metrics = _tool('test').main([CONFIG, checkpoints.htc, '--work-dir', str(work),
                                  '--partial-load', '--cfg-options', *synthetic.options])
    assert 'coco/bbox_mAP' in metrics and (work / 'metrics.json').exists()


def test_test_py_refuses_non_finite_weights(synthetic, checkpoints, tmp_path):
    work = tmp_path / 'work'
    for extra in ([], ['--partial-load']):
        with pytest.raises(ValueError) as err:
            _tool('test').main([CONFIG, checkpoints.nan, '--work-dir', str(work), *extra,
                                '--cfg-options', *synthetic.options])
        rpn, cls = checkpoints.bad_keys
        assert str(err.value).startswith(
            f'{checkpoints.nan}: 2 weight tensors hold NaN/Inf values: '
            f'{rpn} (0 NaN, 1 Inf), {cls} (3 NaN, 0 Inf).')
        assert not (work / 'metrics.json').exists()
    from cascade_seg.apis import init_detector
    with pytest.raises(ValueError, match='2 weight tensors hold NaN/Inf'):
        init_detector(CONFIG, checkpoints.nan)


# ------------------------------------------------------------------ item 9: arrays
@pytest.fixture(scope='module')
def model():
    from cascade_seg.apis import init_detector
    torch.manual_seed(0)
    return init_detector(CONFIG, cfg_options={'model.test_cfg.rcnn.score_thr': 0.0,
                                              'model.test_cfg.rcnn.max_per_img': 20})


def _same(a, b):
    pa, pb = a.pred_instances, b.pred_instances
    assert len(pa) == len(pb) > 0
    assert torch.allclose(pa.bboxes, pb.bboxes) and torch.allclose(pa.scores, pb.scores)


def test_arrays_are_converted_like_files(model, tmp_path):
    from cascade_seg.apis import inference_detector
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (40, 56, 3)).astype(np.uint8)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    deep = (img.astype(np.uint16) * 257 + rng.randint(0, 200, img.shape)).astype(np.uint16)
    files = {'deep.png': deep,
             'gray.png': gray, 'bgra.png': np.dstack([img, np.full(gray.shape, 7, np.uint8)])}
    for name, pixels in files.items():
        assert cv2.imwrite(str(tmp_path / name), pixels.astype(pixels.dtype))
    path = {n: str(tmp_path / n) for n in files}
    # 16-bit: the same image as a 16-bit PNG path
    _same(inference_detector(model, files['deep.png'].astype(np.uint16)),
          inference_detector(model, path['deep.png']))
    _same(inference_detector(model, gray), inference_detector(model, path['gray.png']))
    _same(inference_detector(model, gray[..., None]), inference_detector(model, path['gray.png']))
    _same(inference_detector(model, files['bgra.png']), inference_detector(model, path['bgra.png']))
    reference = inference_detector(model, img)
    _same(inference_detector(model, img.astype(np.float32)), reference)  # 0..255 floats
    _same(inference_detector(model, img.astype(np.int64)), reference)


@pytest.mark.parametrize('array, message', [
    (np.zeros((0, 0, 3), np.uint8), 'image array (input 0) is empty (shape (0, 0, 3))'),
    (np.zeros((8, 0), np.uint8), 'image array (input 0) is empty (shape (8, 0))'),
    (np.zeros((8, 8, 2), np.uint8), 'image array (input 0) has 2 channels (shape (8, 8, 2)): '
                                    'expected 1 (gray), 3 (BGR) or 4 (BGRA)'),
    (np.zeros((2, 8, 8, 3), np.uint8), 'image array (input 0) has shape (2, 8, 8, 3): '
                                       'expected (H, W) or (H, W, C)'),
    (np.full((8, 8, 3), 0.5, np.float32), 'image array (input 0) (float32) has values in '
                                          '[0.5, 0.5]: this looks like a [0, 1] image'),
    (np.full((8, 8, 3), np.nan, np.float64), 'image array (input 0) (float64) holds NaN or Inf'),
    (np.full((8, 8, 3), 300, np.int32), 'image array (input 0) (int32) has values in [300, 300]: '
                                        'expected 0..255'),
    (np.ones((8, 8, 3), bool), 'image array (input 0) has dtype bool'),
])
def test_arrays_that_are_no_image_are_refused(model, array, message):
    from cascade_seg.apis import inference_detector
    with pytest.raises(ValueError) as err:
        inference_detector(model, array)
    assert str(err.value).startswith(message)


# ------------------------------------------------------------------ item 11: unsafe pickles
class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / 'PAYLOAD_RAN'
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(1)},
                    meta=dict(note=_Payload(marker))), path)
    return types.SimpleNamespace(path=str(path), marker=marker)


def test_the_payload_is_live(evil):
    torch.load(evil.path, weights_only=False)  # what a full unpickler would do
    assert evil.marker.exists()


@pytest.mark.parametrize('entry', ['tools/test.py', 'tools/demo.py', 'tools/train.py --resume',
                                   'tools/convert_checkpoint.py', 'init_detector'])
def test_malicious_checkpoint_never_runs(synthetic, evil, tmp_path, entry):
    image = osp.join(synthetic.root, 'val', sorted(os.listdir(synthetic.root + 'val'))[0])
    work = str(tmp_path / 'work')
    calls = {
        'tools/test.py': lambda: _tool('test').main(
            [CONFIG, evil.path, '--work-dir', work, '--cfg-options', *synthetic.options]),
        'tools/demo.py': lambda: _tool('demo').main(
            [image, CONFIG, evil.path, '--out-file', str(tmp_path / 'out.png')]),
        'tools/train.py --resume': lambda: _tool('train').main(
            [CONFIG, '--work-dir', work, '--resume', evil.path, '--cfg-options',
             *synthetic.options]),
        'tools/convert_checkpoint.py': lambda: _tool('convert_checkpoint').main(
            ['--from', 'mmdet', evil.path, str(tmp_path / 'converted.pth')]),
        'init_detector': lambda: __import__('cascade_seg.apis', fromlist=['x']).init_detector(
            CONFIG, evil.path),
    }
    with pytest.raises(RuntimeError) as err:
        calls[entry]()
    assert evil.path in str(err.value) and 'posix.system' in str(err.value)
    assert not evil.marker.exists()


def test_every_torch_load_passes_weights_only_true():
    """Not relying on torch's default: each call in the package and tools says it."""
    calls = []
    for top in ('cascade_seg', 'tools'):
        for folder, _, files in os.walk(osp.join(REPO, top)):
            for name in files:
                if name.endswith('.py'):
                    text = open(osp.join(folder, name)).read()
                    for match in re.finditer(r'torch\.load\(', text):
                        end = text.index(')', match.end())
                        calls.append((name, text[match.end():end]))
    assert calls, 'expected torch.load calls'
    assert [c for c in calls if 'weights_only=True' not in c[1]] == []
    from mmengine.runner.checkpoint import CheckpointLoader
    from cascade_seg.engine.checkpoint import _mmengine_local_loader
    assert CheckpointLoader._get_checkpoint_loader('work/epoch_1.pth') is _mmengine_local_loader
