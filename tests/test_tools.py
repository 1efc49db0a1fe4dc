"""tools/train.py -> test.py -> demo.py -> benchmark.py end to end on a tiny synthetic set."""
import glob
import importlib.util
import json
import os
import os.path as osp
import pickle
import subprocess
import types

import cv2
import pytest
import torch

from cascade_seg.engine.runner_utils import apply_amp, apply_resume, default_work_dir, load_config

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')


def _tool(name):
    path = osp.join(REPO, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('synthetic'))
    make_synthetic_coco(root, num_train=4, num_val=3, image_size=(64, 64), seed=0, p_empty=0.0)
    return root + '/'


def _data_options(root):
    ann = root + 'annotations/instances_val.json'
    return [f'{k}.dataset.data_root={root}' for k in ('train_dataloader', 'val_dataloader',
                                                         'test_dataloader')] + [
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
        'train_dataloader.batch_size=2', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=5',
        'model.test_cfg.rcnn.max_per_img=10', 'log_level=WARNING']


@pytest.fixture(scope='module')
def run(data_root, tmp_path_factory):
    """One small training (2 epochs, validated after each, every iteration logged, the lr
    scaled by --auto-scale-lr) and one test of it with --out, --show-dir and --show."""
    tmp = tmp_path_factory.mktemp('run')
    work = str(tmp / 'work')
    options = _data_options(data_root)
    epochs = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
              'default_hooks.logger.interval=1']
    runner = _tool('train').main([CONFIG, '--work-dir', work, '--seed', '0', '--auto-scale-lr',
                                  '--cfg-options', *options, *epochs])
    ckpt = osp.join(work, 'epoch_2.pth')
    preds = str(tmp / 'preds.pkl')
    metrics = _tool('test').main([CONFIG, ckpt, '--work-dir', work, '--out', preds, '--show-dir',
                                  'show', '--show', '--score-thr', '0', '--cfg-options', *options])
    return types.SimpleNamespace(work=work, ckpt=ckpt, preds=preds, metrics=metrics,
                                 runner=runner, options=options, tmp=tmp)


def test_train_test_demo_benchmark_end_to_end(run, data_root, tmp_path):
    work, ckpt, preds, metrics, runner = run.work, run.ckpt, run.preds, run.metrics, run.runner
    assert runner.iter == 4 and runner.epoch == 2  # 4 images / batch 2, two epochs
    assert osp.isfile(ckpt)
    # --auto-scale-lr: batch 2 on one process, the config's lr is for batch 4
    lr = runner.optim_wrapper.optimizer.param_groups[0]['initial_lr']
    assert lr == pytest.approx(0.001 * 2 / 4)

    with open(osp.join(work, 'metrics.json')) as f:
        saved = json.load(f)
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= saved.keys()
    assert saved['coco/segm_mAP'] == pytest.approx(float(metrics['coco/segm_mAP']))
    # --out: MMDetection's records (metainfo + pred_instances, masks as RLE)
    with open(preds, 'rb') as f:
        records = pickle.load(f)
    assert len(records) == 3 and {'img_id', 'img_path', 'ori_shape'} <= records[0].keys()
    pred = records[0]['pred_instances']
    assert {'bboxes', 'scores', 'labels', 'masks'} <= pred.keys()
    assert isinstance(pred['bboxes'], torch.Tensor) and pred['bboxes'].shape[1] == 4
    assert len(pred['masks']) == len(pred['scores']) and 'counts' in pred['masks'][0]
    # --show-dir relative: below <work_dir>/<timestamp>/ as in MMDetection
    shown = glob.glob(osp.join(work, '*', 'show', '*.jpg'))
    assert len(shown) == 3, shown

    image = osp.join(data_root, 'val', sorted(os.listdir(osp.join(data_root, 'val')))[0])
    out_file = str(tmp_path / 'demo.png')
    result = _tool('demo').main([image, CONFIG, ckpt, '--out-file', out_file, '--score-thr', '0'])
    assert cv2.imread(out_file).shape == cv2.imread(image).shape
    assert result.pred_instances.masks.shape[1:] == (64, 64)

    bench_json = str(tmp_path / 'bench.json')
    rows = _tool('benchmark').main([CONFIG, '--task', 'all', '--img-size', '64', '--threads', '1',
                                    '--warmup', '0', '--runs', '1', '--json', bench_json])
    with open(bench_json) as f:
        saved = json.load(f)['results']
    assert [r['task'] for r in saved] == ['inference', 'train']
    infer, train = rows
    assert infer['num_dets'] == 100  # score_thr 0: max_per_img detections reach the mask head
    assert infer['img_per_s'] > 0 and train['s_per_iter'] > 0 and train['loss'] > 0
    assert infer['params'] == train['params'] > 1e6 and infer['flops'] > 1e8
    assert infer['threads'] == 1 and infer['img_size'] == [64, 64] and infer['device'] == 'cpu'
    assert 'mem_method' in infer and infer['peak_mem_mb'] >= 0


def test_train_arguments():
    train = _tool('train')
    assert train.parse_args([CONFIG]).resume is None
    assert train.parse_args([CONFIG, '--resume']).resume == 'auto'
    assert train.parse_args([CONFIG, '--resume', 'w/epoch_3.pth']).resume == 'w/epoch_3.pth'
    args = train.parse_args([CONFIG, '--amp', '--launcher', 'pytorch', '--cfg-options',
                             'train_cfg.max_epochs=2', 'model.roi_head.num_classes=3'])
    assert args.amp and args.launcher == 'pytorch'
    assert args.cfg_options == {'train_cfg.max_epochs': 2, 'model.roi_head.num_classes': 3}
    with pytest.raises(SystemExit):
        _tool('test').parse_args([CONFIG, 'ckpt.pth', '--out', 'results.txt'])


def test_config_handling(tmp_path):
    cfg = load_config(CONFIG, {'train_cfg.max_epochs': 2})
    assert cfg.train_cfg.max_epochs == 2 and cfg.default_scope == 'cascade_seg'
    assert default_work_dir(cfg) == osp.join('work_dirs', 'mask-rcnn_r18_fpn_synthetic')
    # no checkpoint in the work dir: a fresh start (tests/test_resume.py checks the warning)
    assert apply_resume(load_config(CONFIG, {'work_dir': str(tmp_path)}), 'auto').resume is False
    ckpt = str(tmp_path / 'iter_4.pth')
    torch.save(dict(meta=dict(seed=7), state_dict={}), ckpt)
    resumed = apply_resume(load_config(CONFIG), ckpt)
    assert resumed.resume is True and resumed.load_from == ckpt and resumed.randomness.seed == 7
    cpu = apply_amp(load_config(CONFIG), device='cpu').optim_wrapper
    assert cpu.type == 'AutocastOptimWrapper' and cpu.dtype == 'bfloat16'
    assert cpu.clip_grad.max_norm == 35  # the rest of the wrapper config is kept
    gpu = apply_amp(load_config(CONFIG), device='cuda').optim_wrapper
    assert gpu.type == 'AmpOptimWrapper' and gpu.loss_scale == 'dynamic'


@pytest.mark.parametrize('script', ['dist_train.sh', 'dist_test.sh', 'slurm_train.sh'])
def test_launch_scripts_are_valid_bash(script):
    path = osp.join(REPO, 'tools', script)
    assert subprocess.run(['bash', '-n', path]).returncode == 0
    text = open(path).read()
    assert '--launcher' in text and ('torch.distributed.run' in text or 'srun' in text)


def test_show_without_a_display_says_so(monkeypatch):
    from cascade_seg.visualization import show
    monkeypatch.setattr(show.sys, 'platform', 'linux')
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    messages = []
    monkeypatch.setattr(show, 'print_log', lambda msg, **kw: messages.append(msg))
    monkeypatch.setattr(show, '_said', set())
    img = torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()
    assert show.show_image(img) is False and show.show_image(img) is False
    assert len(messages) == 1 and 'no display' in messages[0]  # said once, not per image


def test_test_tta_flag(run, tmp_path):
    metrics = _tool('test').main([CONFIG, run.ckpt, '--work-dir', str(tmp_path), '--tta',
                                  '--cfg-options', *run.options])
    assert 0 <= metrics['coco/segm_mAP'] <= 1
    with pytest.raises(ValueError, match='base_batch_size'):
        from cascade_seg.engine.runner_utils import apply_auto_scale_lr
        apply_auto_scale_lr(load_config(CONFIG, {'auto_scale_lr': None}))


def test_browse_dataset(data_root, tmp_path):
    out = str(tmp_path / 'browse')
    n = _tool('browse_dataset').main([CONFIG, '--output-dir', out, '--not-show',
                                      '--cfg-options', *_data_options(data_root)])
    assert n == 4 and len(os.listdir(out)) == 4
    drawn = cv2.imread(osp.join(out, sorted(os.listdir(out))[0]))
    assert drawn.shape == (128, 128, 3)  # after the pipeline's resize, not the 64-pixel file


def _scalars(path, losses, maps):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps(dict(loss=loss, time=0.5 + 0.1 * (i % 2), lr=0.1,
                                    epoch=(i + 1) // 2, iter=i, step=i)) + '\n')
        for e, m in enumerate(maps, 1):
            f.write(json.dumps({'coco/bbox_mAP': m, 'step': e}) + '\n')


def test_analyze_logs(run, tmp_path):
    other = str(tmp_path / 'other' / '20260101_000000' / 'vis_data' / 'scalars.json')
    _scalars(other, [3.0, 2.5, 2.0, 1.5], [0.1, 0.2])
    out = str(tmp_path / 'curves.png')
    runs = _tool('analyze_logs').main(['plot_curve', run.work, str(tmp_path / 'other'), '--keys',
                                       'loss', 'bbox_mAP', '--legend', 'a_loss', 'a_map',
                                       'b_loss', 'b_map', '--out', out])
    assert cv2.imread(out) is not None
    assert [len(r['val']) for r in runs] == [2, 2] and len(runs[0]['train']) == 4
    times = _tool('analyze_logs').main(['cal_train_time', other])
    assert times[0]['epochs'] == [1, 2] and times[0]['mean_s_per_iter'] == pytest.approx(0.5)
    with pytest.raises(KeyError, match='no \'nope\''):
        _tool('analyze_logs').main(['plot_curve', other, '--keys', 'nope', '--out', out])


def test_confusion_matrix(run, tmp_path):
    out = str(tmp_path / 'cm')
    args = [CONFIG, run.preds, out, '--cfg-options', *run.options]
    matrix = _tool('confusion_matrix').main(args + ['--score-thr', '0.0'])
    assert osp.isfile(osp.join(out, 'confusion_matrix.png'))
    ann = next(o for o in run.options if o.startswith('val_evaluator.ann_file='))
    gt = json.load(open(ann.split('=', 1)[1]))
    num_gt = len([a for a in gt['annotations'] if not a.get('iscrowd')])
    # with no detection left, every ground-truth box is a miss of its own class
    empty = _tool('confusion_matrix').main(args + ['--score-thr', '1.01'])
    assert empty[:-1, -1].sum() == num_gt and empty.sum() == num_gt
    assert matrix[:-1].sum() >= num_gt  # each GT row counts the box at least once


def _perfect_predictions(config, options, path, spoil=None):
    """A --out pickle holding every val image's ground truth as its predictions."""
    from cascade_seg.analysis.browse import build_split_dataset
    from cascade_seg.engine.dump_results import encode_masks
    paths = dict(o.split('=', 1) for o in options if 'data_root' in o or 'ann_file' in o)
    dataset = build_split_dataset(load_config(config, paths), 'test')
    records = []
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        gt = sample.gt_instances
        boxes = gt.bboxes.clone()
        if sample.img_id == spoil:
            boxes[:, :2] += 10  # this image's predictions are off
        records.append(dict(img_id=sample.img_id, ori_shape=sample.ori_shape,
                            img_path=sample.img_path,
                            pred_instances=dict(bboxes=boxes, labels=gt.labels,
                                                scores=torch.ones(len(gt)),
                                                masks=encode_masks(gt.masks.numpy()))))
    with open(path, 'wb') as f:
        pickle.dump(records, f)
    return [r['img_id'] for r in records]


def test_analyze_results(run, tmp_path):
    preds = str(tmp_path / 'perfect.pkl')
    ids = _perfect_predictions(CONFIG, run.options, preds)
    ids = _perfect_predictions(CONFIG, run.options, preds, spoil=ids[1])
    out = str(tmp_path / 'ranked')
    good, bad = _tool('analyze_results').main([CONFIG, preds, out, '--topk', '1',
                                               '--cfg-options', *run.options])
    assert good[0][1] == pytest.approx(1.0) and bad == [(ids[1], bad[0][1])]
    assert bad[0][1] < 0.5
    assert len(os.listdir(osp.join(out, 'good'))) == len(os.listdir(osp.join(out, 'bad'))) == 1
    segm_good, _ = _tool('analyze_results').main([CONFIG, preds, out, '--metric', 'segm',
                                                  '--cfg-options', *run.options])
    assert segm_good[0][1] == pytest.approx(1.0)


def test_print_config(capsys):
    cfg = _tool('print_config').main([CONFIG, '--cfg-options', 'train_cfg.max_epochs=3'])
    text = capsys.readouterr().out
    assert cfg.train_cfg.max_epochs == 3 and 'max_epochs=3' in text
    assert 'num_classes=6' in text  # the resolved class count, not the parent's 80
