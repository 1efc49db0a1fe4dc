"""tools/ablate.py's path end to end on a tiny generated dataset: two tiny variants train,
evaluate and benchmark; a broken variant fails alone; a rerun skips finished variants and
resumes an interrupted one from its checkpoint."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from cascade_seg.ablation import render, run_spec
from cascade_seg.ablation import runner as ablation_runner
from cascade_seg.datasets.synthetic import make_synthetic_coco

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def tiny_spec(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ablate')
    data = tmp / 'data'
    make_synthetic_coco(str(data), num_train=8, num_val=4, image_size=(64, 64), seed=1)
    base = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
    cfg = tmp / 'tiny.py'
    cfg.write_text(f"""
_base_ = {base!r}
data_root = {str(data) + '/'!r}
train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=10)
default_hooks = dict(logger=dict(interval=1))
""")
    spec = tmp / 'spec.py'
    spec.write_text(f"""
base = {str(cfg)!r}
variants = [
    dict(name='a'),
    dict(name='b', overrides={{'model.roi_head.bbox_head.fc_out_channels': 64}}),
    dict(name='broken', overrides={{'model.roi_head.bbox_hed.num_classes': 3}}),
]
run = dict(train=True, test=True, speed=['inference'])
speed = dict(img_size=64, threads=1, warmup=0, runs=1)
report = dict(baseline='a', columns=['bbox_mAP', 'segm_mAP', 'inference.s_per_img'])
""")
    work = tmp / 'work'
    summary = run_spec(str(spec), str(work))
    return spec, work, summary


def test_variants_run_and_broken_variant_is_isolated(tiny_spec):
    spec, work, summary = tiny_spec
    rows = {r['name']: r for r in summary['variants']}
    for name in ('a', 'b'):
        assert rows[name]['status'] == 'done', rows[name]
        mean = rows[name]['mean']
        assert 0.0 <= mean['segm_mAP'] <= 1.0 and 0.0 <= mean['bbox_mAP'] <= 1.0
        assert mean['inference.s_per_img'] > 0 and mean['params'] > 0
        assert osp.exists(work / name / 'seed0' / 'epoch_1.pth')
    assert rows['b']['mean']['params'] < rows['a']['mean']['params']  # the override took effect
    assert rows['broken']['status'] == 'failed'
    assert "'broken'" in rows['broken']['error'] and 'model.roi_head.bbox_hed' in rows['broken']['error']
    stored = json.loads((work / 'results.json').read_text())
    assert [r['name'] for r in stored['variants']] == ['a', 'b', 'broken']
    table = render(stored, 'md')
    assert '| broken | FAILED: ' in table and '| a (baseline) |' in table


def test_rerun_skips_finished_and_resumes_interrupted(tiny_spec, monkeypatch):
    spec, work, _ = tiny_spec
    record_b = work / 'b' / 'seed0' / 'result.json'
    rec = json.loads(record_b.read_text())
    rec['status'] = 'running'  # as if the process died after training
    record_b.write_text(json.dumps(rec))
    calls = []
    real_execute = ablation_runner._execute

    def spy(spec_, variant, cfg, seed, vdir, launcher):
        calls.append(variant.name)
        return real_execute(spec_, variant, cfg, seed, vdir, launcher)

    monkeypatch.setattr(ablation_runner, '_execute', spy)
    summary = run_spec(str(spec), str(work), only=['a', 'b'])
    assert calls == ['b']  # 'a' was done with the same config hash
    rows = {r['name']: r for r in summary['variants']}
    assert rows['b']['status'] == 'done'
    # resumed from the finished epoch: no further epoch was trained
    assert not osp.exists(work / 'b' / 'seed0' / 'epoch_2.pth')
    log = sorted((work / 'b' / 'seed0').glob('*/*.log'))[-1].read_text()
    assert 'resumed epoch: 1' in log.lower() or 'Resumed' in log


def test_cli_reports_failure_exit_code(tiny_spec):
    spec, work, _ = tiny_spec
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/ablate.py'), str(spec),
                           '--work-dir', str(work), '--isolate'], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert 'failed variants: broken' in proc.stderr
    assert '| a (baseline) |' in proc.stdout
    # the finished variants were skipped; the broken one ran again in its own process
    assert 'started in a subprocess' in proc.stdout
    assert json.loads((work / 'a' / 'seed0' / 'result.json').read_text())['status'] == 'done'
