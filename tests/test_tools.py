"""tools/train.py -> test.py -> demo.py -> benchmark.py end to end on a tiny synthetic set."""
import importlib.util
import json
import os
import os.path as osp
import pickle
import subprocess

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


def test_train_test_demo_benchmark_end_to_end(data_root, tmp_path):
    work = str(tmp_path / 'work')
    options = _data_options(data_root)
    runner = _tool('train').main([CONFIG, '--work-dir', work, '--seed', '0', '--cfg-options',
                                  *options])
    assert runner.iter == 2 and runner.epoch == 1  # 4 images / batch 2, one epoch
    ckpt = osp.join(work, 'epoch_1.pth')
    assert osp.isfile(ckpt)

    show_dir, preds = str(tmp_path / 'show'), str(tmp_path / 'preds.pkl')
    metrics = _tool('test').main([CONFIG, ckpt, '--work-dir', work, '--out', preds, '--show-dir',
                                  show_dir, '--score-thr', '0', '--cfg-options', *options])
    with open(osp.join(work, 'metrics.json')) as f:
        saved = json.load(f)
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= saved.keys()
    assert saved['coco/segm_mAP'] == pytest.approx(float(metrics['coco/segm_mAP']))
    with open(preds, 'rb') as f:
        records = pickle.load(f)
    assert len(records) == 3 and {'bboxes', 'scores', 'labels', 'masks'} <= records[0].keys()
    assert len(records[0]['masks']) == len(records[0]['scores'])  # one RLE per detection
    assert len(os.listdir(show_dir)) == 3

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
