"""The ablation job's console without training anything: the progress bar and its ETA from
the runs' progress files, start/finish lines, a worker that dies without a record, and the
error's last line."""
import io
import json
import os

import pytest

from cascade_seg.ablation import progress as prog
from cascade_seg.ablation import runner
from cascade_seg.ablation.spec import Variant


def _runs(tmp_path, n=2, length=4):
    runs = []
    for i in range(n):
        vdir = tmp_path / f'v{i}' / 'seed0'
        vdir.mkdir(parents=True)
        runs.append(dict(label=f'v{i} seed 0', vdir=str(vdir), length=length, unit='epochs'))
    return runs


def _progress(run, **state):
    with open(os.path.join(run['vdir'], prog.PROGRESS_FILE), 'w') as f:
        json.dump(state, f)


def test_bar_counts_epochs_over_all_runs_and_extrapolates(tmp_path, monkeypatch):
    runs = _runs(tmp_path)
    clock = [1000.0]
    monkeypatch.setattr(prog.time, 'time', lambda: clock[0])
    console = prog.JobConsole(runs, stream=io.StringIO())
    console.started(0)
    _progress(runs[0], phase='train', iter=20, max_iters=40, by_epoch=True, iters_per_epoch=10,
              max_epochs=4)
    clock[0] += 60  # 2 of 8 epochs in 60 s -> 6 more epochs take 180 s
    text = console.render()
    assert '[######------------------]  25%' in text and '2.0/8 epochs' in text
    assert 'runs 0/2' in text and 'v0 seed 0: epoch 3/4 iter 0/10' in text
    assert '1:00 elapsed, ETA 3:00' in text
    console.finished(0)
    console.started(1)
    _progress(runs[1], phase='test', test_iter=3, test_total=10, iter=40, max_iters=40)
    clock[0] += 60
    text = console.render()
    assert '100%' in text and 'v1 seed 0: testing 3/10' in text and 'runs 1/2' in text


def test_resumed_and_skipped_runs_do_not_count_as_speed(tmp_path, monkeypatch):
    runs = _runs(tmp_path, n=3)
    clock = [0.0]
    monkeypatch.setattr(prog.time, 'time', lambda: clock[0])
    console = prog.JobConsole(runs, stream=io.StringIO())
    console.finished(0, skipped=True)  # done before: 4 epochs for free
    _progress(runs[1], phase='train', iter=30, max_iters=40)  # resumed at epoch 3 of 4
    console.started(1)
    _progress(runs[1], phase='train', iter=40, max_iters=40)
    clock[0] += 100  # this job trained 1 epoch in 100 s; 4 remain
    done, total, now_done, _ = console.progress()
    assert (done, total, now_done) == (8.0, 12.0, 1.0)
    assert 'ETA 6:40' in console.render()


def test_lines_and_bar_on_a_log_file(tmp_path, monkeypatch):
    """Not a terminal: whole lines only, the bar at most every ``interval`` seconds."""
    runs = _runs(tmp_path, n=1)
    clock = [0.0]
    monkeypatch.setattr(prog.time, 'time', lambda: clock[0])
    out = io.StringIO()
    console = prog.JobConsole(runs, stream=out, interval=60)
    console.draw(force=True)
    console.started(0)
    console.line('[1/1] v0 seed 0: started')
    for t in range(1, 5):
        clock[0] = 30.0 * t
        _progress(runs[0], phase='train', iter=10 * t, max_iters=40)
        console.draw()
    console.finished(0)
    console.close()
    lines = out.getvalue().splitlines()
    assert '\r' not in out.getvalue()
    bars = [ln for ln in lines if '%' in ln]
    assert len(bars) == 4  # start, after 60 s and 120 s, final
    assert '100%' in bars[-1] and 'ETA 0:00' in bars[-1]


def test_planned_length():
    assert prog.planned_length(dict(train_cfg=dict(by_epoch=True, max_epochs=12))) == (12, 'epochs')
    assert prog.planned_length(dict(train_cfg=dict(type='IterBasedTrainLoop', max_iters=1500))) \
        == (1500, 'iters')
    assert prog.fmt_duration(3725) == '1:02:05' and prog.fmt_duration(65) == '1:05'


def test_worker_that_died_is_failed_with_its_last_log_line(tmp_path):
    vdir = tmp_path / 'v' / 'seed0'
    vdir.mkdir(parents=True)
    (vdir / runner.RESULT_FILE).write_text(json.dumps(dict(name='v', seed=0, hash='h',
                                                           status='running')))
    (vdir / runner.CONSOLE_LOG).write_text('Epoch(train) [1][5/40] loss: 3.2\nKilled\n\n')
    info = dict(variant=Variant(name='v', config='c.py'), seed=0, vdir=str(vdir), digest='h')
    rec = runner._collect(info, -9)
    assert rec['status'] == 'failed'
    assert rec['error'] == 'worker process exited with status -9: Killed'
    assert json.loads((vdir / runner.RESULT_FILE).read_text())['status'] == 'failed'
    assert runner._finish_text(rec, 75) == \
        'FAILED after 1:15: worker process exited with status -9: Killed'


@pytest.mark.parametrize('text,last', [
    ('Traceback (most recent call last):\n  File "x"\nValueError: bad\n\n', 'ValueError: bad'),
    ('OverrideError: one line', 'OverrideError: one line'), ('', ''), (None, '')])
def test_last_line(text, last):
    assert runner.last_line(text) == last


def test_finish_text():
    rec = dict(status='done', metrics={'coco/bbox_mAP': 0.3512, 'coco/segm_mAP': 0.3049})
    assert runner._finish_text(rec, 190) == 'done in 3:10: box AP 35.1, mask AP 30.5'
    assert runner._finish_text(dict(rec, skipped=True)) == \
        'unchanged since it finished, skipped: box AP 35.1, mask AP 30.5'
