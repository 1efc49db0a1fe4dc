"""tools/ablate.py's path end to end on a tiny generated dataset: two tiny variants train,
are evaluated once and benchmarked, keep their per-image evaluation data; a broken variant
fails alone; a rerun skips finished variants and resumes an interrupted one from its
checkpoint; the command line shows start/finish lines and a progress bar while the runs'
logs go to their folders; tools/make_table.py recomputes the intervals."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from cascade_seg.ablation import render, run_spec, stats
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


def _runner_log(run_dir):
    return sorted(run_dir.glob('*/*.log'))[-1].read_text()


def test_variants_run_and_broken_variant_is_isolated(tiny_spec):
    spec, work, summary = tiny_spec
    rows = {r['name']: r for r in summary['variants']}
    for name in ('a', 'b'):
        assert rows[name]['status'] == 'done', rows[name]
        mean = rows[name]['mean']
        assert 0.0 <= mean['segm_mAP'] <= 1.0 and 0.0 <= mean['bbox_mAP'] <= 1.0
        assert mean['inference.s_per_img'] > 0 and mean['params'] > 0
        run_dir = work / name / 'seed0'
        assert osp.exists(run_dir / 'epoch_1.pth')
        # per-image evaluation data: recomputing AP from them gives the reported numbers
        rec = json.loads((run_dir / 'result.json').read_text())
        assert rec['eval'] == {'bbox': 'eval_bbox.npz', 'segm': 'eval_segm.npz'}
        assert rec['eval_exact'] == {'bbox': True, 'segm': True}
        data = stats.load_eval(str(run_dir / 'eval_segm.npz'))
        assert stats.point_metrics(data)['mAP'] == rec['metrics']['coco/segm_mAP']
        assert len(data['img_ids']) == 4
        # evaluated once: the test pass, no validation at the end of training
        log = _runner_log(run_dir)
        assert log.count('bbox_mAP_copypaste') == 1 and log.count('segm_mAP_copypaste') == 1
        assert 'Epoch(val)' not in log and 'Epoch(test)' in log
        assert rec['schedule'].startswith('1 epoch, batch 4, AdamW lr')
        progress = json.loads((run_dir / 'progress.json').read_text())
        assert progress['phase'] == 'tested' and progress['iter'] == progress['max_iters'] == 2
    assert rows['b']['mean']['params'] < rows['a']['mean']['params']  # the override took effect
    assert rows['broken']['status'] == 'failed'
    assert "'broken'" in rows['broken']['error'] and 'model.roi_head.bbox_hed' in rows['broken']['error']
    assert summary['job']['failed'] == [dict(name='broken', seed=0, error=rows['broken']['error'])]
    stored = json.loads((work / 'results.json').read_text())
    assert [r['name'] for r in stored['variants']] == ['a', 'b', 'broken']
    st = stored['statistics']
    assert st['settings']['num_images'] == 4 and st['settings']['replicates'] == 1000
    assert {'bbox_mAP', 'segm_mAP', 'segm_mAP_75'} <= set(st['variants']['b'])
    assert 'delta' in st['variants']['b']['segm_mAP']
    assert 'delta' not in st['variants']['a']['segm_mAP']  # the baseline
    table = render(stored, 'md')
    assert '| broken | FAILED: ' in table and '| a (baseline) |' in table
    assert 'Δ mask AP [95% CI]' in table and 'validation-image sampling only' in table


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


def test_cli_new_run_in_its_own_process(tiny_spec):
    """A run the job has not done yet: started in a worker process whose output goes to the
    run's folder; the console shows its start and finish and a progress bar; variants that
    did not run (other seeds) are not reported as failed."""
    spec, work, _ = tiny_spec
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/ablate.py'), str(spec),
                           '--work-dir', str(work), '--only', 'a', '--seeds', '1',
                           '--bootstrap', '200'],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = work / 'a' / 'seed1'
    assert re.search(r'\[1/1\] a seed 1: started \(log: .*a/seed1/console\.log\)', out)
    assert re.search(r'\[1/1\] a seed 1: done in \d+:\d\d: box AP \d+\.\d, mask AP \d+\.\d', out)
    assert re.search(r'\[#{24}\] 100% \| 1\.0/1 epochs \| runs 1/1 \|.*ETA 0:00', out)
    assert 'FAILED' not in out + proc.stderr and 'failed' not in proc.stderr
    # the Runner's output is in the run's folder, not on the console
    for noise in ('Environment', 'Config:', 'Epoch(train)', 'mmengine'):
        assert noise not in out
    console_log = (run_dir / 'console.log').read_text()
    assert 'Epoch(train)' in console_log and 'Config:' in _runner_log(run_dir)
    assert len(out.splitlines()) < 30
    assert '| b | not run |' in out  # other variants of the spec have no seed-1 run
    assert json.loads((run_dir / 'result.json').read_text())['status'] == 'done'


def test_cli_reports_only_failed_runs(tiny_spec):
    spec, work, _ = tiny_spec
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/ablate.py'), str(spec),
                           '--work-dir', str(work), '--bootstrap', '200'], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    # finished runs are skipped with their numbers; the broken one fails with its error
    assert re.search(r'\[1/3\] a seed 0: unchanged since it finished, skipped: box AP', proc.stdout)
    assert re.search(r"\[3/3\] broken seed 0: FAILED: OverrideError: variant 'broken'",
                     proc.stdout)
    assert proc.stderr.strip().splitlines() == [
        "FAILED: broken seed 0: OverrideError: variant 'broken': override key "
        "'model.roi_head.bbox_hed.num_classes' does not exist in its config "
        "(no 'model.roi_head.bbox_hed')"]
    assert '| a (baseline) |' in proc.stdout
    assert json.loads((work / 'a' / 'seed0' / 'result.json').read_text())['status'] == 'done'


def test_make_table_recomputes_intervals(tiny_spec, tmp_path):
    spec, work, _ = tiny_spec
    results = str(work / 'results.json')
    tool = [sys.executable, osp.join(ROOT, 'tools/make_table.py'), results]
    csv_out = subprocess.run(tool + ['--format', 'csv', '--baseline', 'b', '--bootstrap', '200'],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert csv_out.returncode == 0, csv_out.stderr
    lines = csv_out.stdout.splitlines()
    assert lines[0] == 'variant,metric,mean,std,n,se,delta,ci_low,ci_high,significant'
    row = dict(zip(lines[0].split(','), next(ln for ln in lines if ln.startswith('a,segm_mAP,'))
                   .split(',')))
    assert float(row['ci_low']) <= float(row['delta']) <= float(row['ci_high'])
    assert row['significant'] in ('0', '1') and row['n'] == '1' and row['std'] == ''
    png = str(tmp_path / 'plot.png')
    md = subprocess.run(tool + ['--plot', png, '--bootstrap', '200'], capture_output=True,
                        text=True, cwd=ROOT, timeout=300)
    assert md.returncode == 0, md.stderr
    assert 'Δ box AP [95% CI]' in md.stdout and 'B=200' in md.stdout and osp.getsize(png) > 1000


def test_shared_trunk_trains_once_and_is_loaded_frozen(tiny_spec, tmp_path):
    """A spec with a shared trunk: the trunk trains once per seed (first, even with 2 jobs),
    every variant loads it and keeps it frozen; the footnote says so."""
    import torch
    spec, _, _ = tiny_spec
    trunk_spec = tmp_path / 'trunk_spec.py'
    base = re.search(r"base = (.+)\n", spec.read_text())[1]
    trunk_spec.write_text(f"""
base = {base}
variants = [dict(name='a'),
            dict(name='b', overrides={{'model.roi_head.bbox_head.fc_out_channels': 64}})]
trunk = dict(overrides={{'train_cfg.max_epochs': 1}})
run = dict(train=True, test=True, speed=[])
report = dict(baseline='a', columns=['bbox_mAP', 'segm_mAP'])
""")
    work = tmp_path / 'work'
    summary = run_spec(str(trunk_spec), str(work), jobs=2)
    assert [r['status'] for r in summary['variants']] == ['done', 'done']
    trunk = torch.load(work / '_trunk' / 'seed0' / 'trunk.pth', weights_only=True)['state_dict']
    for name in ('a', 'b'):
        final = torch.load(work / name / 'seed0' / 'epoch_1.pth',
                           weights_only=False)['state_dict']
        for key in ('backbone.conv1.weight', 'neck.fpn_convs.0.conv.weight',
                    'proposal_generator.rpn_cls.weight', 'backbone.bn1.running_mean'):
            assert torch.equal(final[key], trunk[key]), (name, key)   # loaded and frozen
        if name == 'a':  # same head shapes as the trunk's model: trained anew, not loaded
            assert not torch.equal(final['roi_head.bbox_head.0.fc_cls.weight'],
                                   trunk['roi_head.bbox_head.0.fc_cls.weight'])
        log = (work / name / 'seed0' / 'console.log').read_text()
        assert 'shared trunk:' in log and 'frozen' in log
    # the variants started after the trunk had finished
    trunk_done = json.loads((work / '_trunk' / 'seed0' / 'result.json').read_text())
    assert trunk_done['status'] == 'done' and not trunk_done.get('metrics')   # trained only
    assert summary['trunk']['modules'] == ['backbone', 'neck', 'proposal_generator']
    assert 'Shared trunk (backbone, neck, proposal_generator): trained once per seed' in \
        render(summary, 'md')
    # a rerun skips the finished trunk and variants
    again = run_spec(str(trunk_spec), str(work), jobs=2)
    assert [r['status'] for r in again['variants']] == ['done', 'done']
    assert all(json.loads((work / n / 'seed0' / 'result.json').read_text())['hash'] ==
               r['hashes'][0] for n, r in zip(('a', 'b'), again['variants']))
