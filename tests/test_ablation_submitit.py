"""tools/ablate.py --executor: every (variant, seed) its own submitit job (here submitit's local
executor: real subprocess jobs), the same results layout as a local sweep, the table when they
finish, resumable."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('submitit')

from cascade_seg.ablation.cluster import JOB_FILE, _Attached  # noqa: E402
from cascade_seg.datasets.synthetic import make_synthetic_coco  # noqa: E402

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    from tests.test_tools import _tool
    tmp = tmp_path_factory.mktemp('submitit')
    data = tmp / 'data'
    make_synthetic_coco(str(data), num_train=4, num_val=2, image_size=(64, 64), seed=2,
                        p_empty=0.0)
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
model = dict(test_cfg=dict(rcnn=dict(max_per_img=20)))
""")
    spec = tmp / 'spec.py'
    spec.write_text(f"""
base = {str(cfg)!r}
variants = [
    dict(name='a'),
    dict(name='no_data', overrides={{'train_dataloader.dataset.ann_file': 'missing.json'}}),
    dict(name='broken', overrides={{'model.roi_head.bbox_hed.num_classes': 3}}),
]
run = dict(train=True, test=True, speed=[])
report = dict(baseline='a', columns=['bbox_mAP', 'segm_mAP'])
""")
    work = tmp / 'work'
    args = [str(spec), '--work-dir', str(work), '--executor', 'local', '--timeout-min', '10']
    with pytest.raises(SystemExit):  # a failed run makes the command fail, after the table
        _tool('ablate').main(args)
    return spec, work, args


def test_every_run_is_a_job_with_the_usual_layout(sweep):
    spec, work, _ = sweep
    summary = json.loads((work / 'results.json').read_text())
    rows = {r['name']: r for r in summary['variants']}
    assert rows['a']['status'] == 'done'
    assert 0 <= rows['a']['mean']['segm_mAP'] <= 1
    assert summary['statistics']['variants']  # the table's intervals were computed
    job_ids = set()
    for name in ('a', ):
        run = work / name / 'seed0'
        rec = json.loads((run / 'result.json').read_text())
        assert rec['status'] == 'done' and rec['eval'] == {'bbox': 'eval_bbox.npz',
                                                           'segm': 'eval_segm.npz'}
        assert osp.exists(run / 'epoch_1.pth')
        job = json.loads((run / JOB_FILE).read_text())
        assert job['executor'] == 'local' and job['hash'] == rec['hash']
        job_ids.add(job['job_id'])
        # the job's output is in the run folder, as with a local sweep
        log = (run / 'console.log').read_text()
        assert 'submitit local' in log and 'segm_mAP_copypaste' in log
    job_ids.add(json.loads((work / 'no_data' / 'seed0' / JOB_FILE).read_text())['job_id'])
    assert len(job_ids) == 2 and os.getpid() not in {int(j) for j in job_ids}  # own processes
    # a failure inside a job and a config that does not build are both recorded
    assert rows['no_data']['status'] == 'failed' and 'missing.json' in rows['no_data']['error']
    assert rows['broken']['status'] == 'failed' and 'bbox_hed' in rows['broken']['error']
    assert not (work / 'broken' / 'seed0' / JOB_FILE).exists()  # no job for it
    assert (work / '.submitit').is_dir()


def test_rerun_skips_finished_runs_and_resubmits_the_rest(sweep):
    from tests.test_tools import _tool
    spec, work, args = sweep
    before = {n: json.loads((work / n / 'seed0' / JOB_FILE).read_text())['job_id']
              for n in ('a', 'no_data')}
    with pytest.raises(SystemExit):
        _tool('ablate').main(args)
    after = {n: json.loads((work / n / 'seed0' / JOB_FILE).read_text())['job_id']
             for n in ('a', 'no_data')}
    assert after['a'] == before['a']                                # done: not submitted again
    assert after['no_data'] != before['no_data']                    # failed: a new job
    rec = json.loads((work / 'a' / 'seed0' / 'result.json').read_text())
    assert rec['status'] == 'done'


def test_jobs_of_an_earlier_call_are_waited_for():
    assert not _Attached('local', os.getpid()).done()  # a live process: still running
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    assert _Attached('local', proc.pid).done()


def test_no_wait_is_for_slurm_only(tmp_path):
    from tests.test_tools import _tool
    with pytest.raises(SystemExit, match='--no-wait needs --executor slurm'):
        _tool('ablate').main(['spec.py', '--work-dir', str(tmp_path), '--executor', 'local',
                              '--no-wait'])


def test_shared_trunk_is_its_own_job_and_the_variants_wait_for_it(sweep, tmp_path):
    """A spec with a shared trunk: the trunk of each seed is a job of its own, the variants'
    jobs start once it is done and load it, and the footnote states the trunk."""
    from cascade_seg.ablation import render
    from tests.test_tools import _tool
    spec, _, _ = sweep
    base = [ln for ln in spec.read_text().splitlines() if ln.startswith('base = ')][0]
    trunk_spec = tmp_path / 'trunk_spec.py'
    trunk_spec.write_text(f"""
{base}
variants = [dict(name='a')]
trunk = dict(modules=('backbone', ), freeze=False)
run = dict(train=True, test=True, speed=[])
report = dict(baseline='a', columns=['bbox_mAP', 'segm_mAP'])
""")
    work = tmp_path / 'work'
    _tool('ablate').main([str(trunk_spec), '--work-dir', str(work), '--executor', 'local',
                          '--timeout-min', '10'])
    trunk_run, run = work / '_trunk' / 'seed0', work / 'a' / 'seed0'
    assert json.loads((trunk_run / 'result.json').read_text())['status'] == 'done'
    assert (trunk_run / 'trunk.pth').is_file() and (trunk_run / JOB_FILE).is_file()
    trunk_job = json.loads((trunk_run / JOB_FILE).read_text())['job_id']
    assert json.loads((run / JOB_FILE).read_text())['job_id'] != trunk_job
    assert json.loads((run / 'result.json').read_text())['status'] == 'done'
    assert "shared trunk: " in (run / 'console.log').read_text()   # loaded, not missing
    # the variant's job was submitted after the trunk had written its weights
    assert osp.getmtime(trunk_run / 'trunk.pth') <= osp.getmtime(run / JOB_FILE)
    summary = json.loads((work / 'results.json').read_text())
    assert [r['name'] for r in summary['variants']] == ['a']
    assert summary['trunk']['modules'] == ['backbone'] and not summary['trunk']['freeze']
    assert 'initialisation of those modules' in render(summary, 'md')
