"""Crash-safe checkpoints and exact resume (issue 13, items 1-3), on the real small detector.

The kill tests run tools/train.py in a subprocess that SIGKILLs itself at a chosen moment
inside AtomicCheckpointHook's save, then resume in this process from what is left on disk
and compare the final weights with an uninterrupted run.
"""
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook

import cascade_seg.engine  # noqa: F401
from cascade_seg.engine import build_runner
from cascade_seg.engine.checkpoint import checkpoint_problem, find_resume_checkpoint
from cascade_seg.engine.checkpoint_hook import atomic_write_text
from cascade_seg.engine.resume import RESUME_KEY, capture_rng, restore_rng
from cascade_seg.engine.runner_utils import apply_resume, load_config
from cascade_seg.registry import HOOKS

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
MAX_DIFF = 1e-6


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('resume_data'))
    make_synthetic_coco(root, num_train=8, num_val=2, image_size=(64, 64), seed=0, p_empty=0.0)
    return root + '/'


def options(root, loop='epoch', ckpt_by_epoch=False, ckpt_interval=3):
    """8 training images, batch 2: 4 iterations per epoch, 8 in all; validation after
    epoch 1 (iteration 4), so resumed runs cross an evaluation."""
    ann = root + 'annotations/instances_val.json'
    opts = {f'{k}.dataset.data_root': root
            for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    opts.update({
        'val_evaluator.ann_file': ann, 'test_evaluator.ann_file': ann,
        'train_dataloader.batch_size': 2, 'model.test_cfg.rcnn.max_per_img': 10,
        'default_hooks.checkpoint.interval': ckpt_interval,
        'default_hooks.checkpoint.by_epoch': ckpt_by_epoch, 'log_level': 'WARNING'})
    if loop == 'epoch':
        opts.update({'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 1})
    else:  # replaced whole (see train)
        opts.update({'train_cfg': dict(type='IterBasedTrainLoop', max_iters=8, val_interval=4),
                     'train_dataloader.sampler': dict(type='InfiniteSampler', shuffle=True),
                     'param_scheduler': [dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                                              begin=0, end=4)]})
    return opts


@HOOKS.register_module(name='ResumeTestCrash', force=True)
class CrashHook(Hook):
    """An exception right after iteration ``at`` (after its checkpoint, if any)."""
    priority = 'LOWEST'

    def __init__(self, at, on='iter'):
        self.at, self.on = at, on

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.on == 'iter' and runner.iter + 1 == self.at:
            raise KeyboardInterrupt('crash')

    def after_train_epoch(self, runner):
        if self.on == 'epoch' and runner.epoch + 1 == self.at:
            raise KeyboardInterrupt('crash')


def train(work_dir, opts, resume=None, crash=None, seed=0):
    whole = {k: v for k, v in opts.items() if k == 'train_cfg'}  # not merged into the epoch loop's
    cfg = load_config(CONFIG, {k: v for k, v in opts.items() if k not in whole})
    for key, value in whole.items():
        cfg[key] = value
    if crash:
        cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='ResumeTestCrash', **crash)]
    runner = build_runner(cfg, work_dir=str(work_dir), resume=resume, seed=seed)
    if crash:
        with pytest.raises(KeyboardInterrupt):
            runner.train()
    else:
        runner.train()
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    return runner, {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    worst = max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a
                if a[k].is_floating_point())
    assert worst[0] <= MAX_DIFF, f'{worst[1]} differs by {worst[0]}'


@pytest.fixture(scope='module')
def uninterrupted(data_root, tmp_path_factory):
    """Final weights of uninterrupted runs, per loop type."""
    cache = {}

    def get(loop):
        if loop not in cache:
            work = tmp_path_factory.mktemp(f'full_{loop}')
            runner, weights = train(work, options(data_root, loop))
            assert runner.iter == 8
            cache[loop] = weights
        return cache[loop]

    return get


# --------------------------------------------------------------------- SIGKILL inside a save
KILL_SCRIPT = textwrap.dedent('''
    import os, runpy, signal, sys
    import torch
    torch.set_num_threads(1)
    point, step = sys.argv[1], sys.argv[2]
    import cascade_seg.engine.checkpoint_hook as hook_module
    import mmengine.fileio.backends.local_backend as local_backend

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if point == 'writing':  # half of the checkpoint's bytes are on disk
        put = local_backend.LocalBackend.put
        def half_put(self, obj, filepath):
            if f'iter_{step}.pth' in str(filepath):
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                die()
            return put(self, obj, filepath)
        local_backend.LocalBackend.put = half_put
    elif point == 'before_pointer':  # the checkpoint is complete, last_checkpoint is not updated
        write = hook_module.atomic_write_text
        def kill_on_pointer(path, text):
            if text.endswith(f'iter_{step}.pth'):
                die()
            return write(path, text)
        hook_module.atomic_write_text = kill_on_pointer
    sys.argv = [sys.argv[3]] + sys.argv[4:]
    runpy.run_path(sys.argv[0], run_name='__main__')
''')


def _cli_options(opts):
    return [f'{k}={v}' for k, v in opts.items()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize('point', ['writing', 'before_pointer'])
def test_sigkill_inside_a_save_then_resume_is_exact(data_root, uninterrupted, tmp_path, point):
    """The shipped max_keep_ckpts=1: a kill while iter_6 is saved leaves iter_3 complete
    (half-written temporary file, or iter_6 complete but last_checkpoint not yet moved);
    resuming from it ends exactly where the uninterrupted run does."""
    work = tmp_path / 'work'
    script = tmp_path / 'kill.py'
    script.write_text(KILL_SCRIPT)
    opts = options(data_root)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, str(script), point, '6', osp.join(REPO, 'tools/train.py'), CONFIG,
         '--work-dir', str(work), '--seed', '0', '--cfg-options', *_cli_options(opts)],
        env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(f for f in os.listdir(work) if not osp.isdir(work / f))
    pointer = (work / 'last_checkpoint').read_text()
    assert pointer.endswith('iter_3.pth')
    assert checkpoint_problem(str(work / 'iter_3.pth')) is None  # not deleted before time
    if point == 'writing':
        temp = [f for f in files if f.startswith('.iter_6.pth.')]
        assert len(temp) == 1 and checkpoint_problem(str(work / temp[0])) is not None
        assert 'iter_6.pth' not in files
    else:
        assert checkpoint_problem(str(work / 'iter_6.pth')) is None
        # what --resume finds: the pointer names iter_3, which is complete
        assert find_resume_checkpoint(str(work)) == (str(work / 'iter_3.pth'), [])
        return  # resuming from iter_3 is the 'writing' case

    state = torch.load(work / 'iter_3.pth', weights_only=True)[RESUME_KEY]
    assert state['position'] == dict(batches_in_epoch=3) and state['world_size'] == 1
    assert len(state['rng']) == 1 and {'python', 'numpy', 'torch'} <= state['rng'][0].keys()
    runner, weights = train(work, opts, resume='auto')  # mid-epoch 1, then validation
    assert runner.iter == 8 and runner.epoch == 2
    assert_same_weights(uninterrupted('epoch'), weights)
    left = sorted(os.listdir(work))
    assert not [f for f in left if f.endswith('.tmp')]  # the killed save's leftovers are gone
    assert [f for f in left if f.endswith('.pth')] == ['iter_8.pth']  # max_keep_ckpts=1


# --------------------------------------------------------------------- exact resume, in process
def test_resume_between_epochs_skips_no_validation_randomness(data_root, uninterrupted, tmp_path):
    """epoch_1.pth is written before the validation of epoch 1, which the resumed run does
    not repeat: validation must not move the training random state."""
    opts = options(data_root, ckpt_by_epoch=True, ckpt_interval=1)
    train(tmp_path, opts, crash=dict(at=1, on='epoch'))
    assert torch.load(tmp_path / 'epoch_1.pth', weights_only=True)[RESUME_KEY]['position'] == \
        dict(batches_in_epoch=0)
    runner, weights = train(tmp_path, opts, resume=str(tmp_path / 'epoch_1.pth'))
    assert runner.iter == 8 and runner.epoch == 2
    assert_same_weights(uninterrupted('epoch'), weights)


def test_iteration_loop_resume_is_exact(data_root, uninterrupted, tmp_path):
    """iter_4.pth is written before the validation at iteration 4 (not repeated either)."""
    opts = options(data_root, loop='iter', ckpt_interval=4)
    train(tmp_path, opts, crash=dict(at=6))
    runner, weights = train(tmp_path, opts, resume='auto')  # from iter_4
    assert runner.iter == 8
    assert_same_weights(uninterrupted('iter'), weights)


# --------------------------------------------------------------------- which file, and messages
def _fake_checkpoint(path, complete=True):
    torch.save({'meta': dict(seed=1), 'state_dict': {'w': torch.ones(3)}}, path)
    if not complete:
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])


def test_checkpoint_problem_names_the_defect(tmp_path):
    good, cut, empty = tmp_path / 'a.pth', tmp_path / 'b.pth', tmp_path / 'c.pth'
    _fake_checkpoint(good)
    _fake_checkpoint(cut, complete=False)
    empty.write_bytes(b'')
    assert checkpoint_problem(str(good)) is None
    assert 'incomplete' in checkpoint_problem(str(cut))
    assert checkpoint_problem(str(empty)) == 'empty file (0 bytes)'
    assert checkpoint_problem(str(tmp_path / 'none.pth')) == 'no such file'


@pytest.mark.parametrize('pointer', ['empty', 'missing file', 'truncated file', 'no pointer'])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, pointer):
    for i in (2, 4):
        _fake_checkpoint(tmp_path / f'iter_{i}.pth')
        os.utime(tmp_path / f'iter_{i}.pth', ns=(i * 10**9, i * 10**9))
    _fake_checkpoint(tmp_path / 'iter_6.pth', complete=False)  # newest, cut short
    text = {'empty': '', 'missing file': str(tmp_path / 'iter_9.pth'),
            'truncated file': str(tmp_path / 'iter_6.pth')}.get(pointer)
    if text is not None:
        (tmp_path / 'last_checkpoint').write_text(text)
    path, notes = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth')
    assert any('iter_6.pth passed over: incomplete' in n for n in notes)
    if pointer == 'empty':
        assert any('last_checkpoint is unusable: it is empty' in n for n in notes)
    elif pointer != 'no pointer':
        assert any(f'it names {text}' in n for n in notes)


def test_valid_pointer_wins_and_relative_pointer_is_found(tmp_path, monkeypatch):
    for i in (2, 4):
        _fake_checkpoint(tmp_path / f'iter_{i}.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == (str(tmp_path / 'iter_2.pth'), [])
    # written by a run started from another folder with a relative work dir
    (tmp_path / 'last_checkpoint').write_text('work_dirs/exp/iter_4.pth')
    assert find_resume_checkpoint(str(tmp_path))[0] == str(tmp_path / 'iter_4.pth')


def _logged(monkeypatch):
    import cascade_seg.engine.runner_utils as ru
    messages = []
    monkeypatch.setattr(ru, 'print_log', lambda msg, **kw: messages.append((msg, kw)))
    return messages


def test_resume_without_any_checkpoint_warns_and_starts_fresh(tmp_path, monkeypatch):
    messages = _logged(monkeypatch)
    cfg = apply_resume(load_config(CONFIG, {'work_dir': str(tmp_path)}), 'auto')
    assert cfg.resume is False and cfg.load_from is None
    (msg, kw), = [m for m in messages if '--resume' in m[0]]
    assert f'no checkpoint to resume from in {tmp_path}' in msg and 'from scratch' in msg
    assert kw['level'] >= 30


def test_resume_with_a_bad_explicit_path_is_an_error(tmp_path):
    cfg = load_config(CONFIG)
    with pytest.raises(FileNotFoundError, match=r'--resume .*nope\.pth: no such checkpoint'):
        apply_resume(cfg, str(tmp_path / 'nope.pth'))
    _fake_checkpoint(tmp_path / 'cut.pth', complete=False)
    with pytest.raises(ValueError, match=r'cut\.pth: not a complete checkpoint \(incomplete'):
        apply_resume(cfg, str(tmp_path / 'cut.pth'))


def test_fallback_is_announced(tmp_path, monkeypatch):
    _fake_checkpoint(tmp_path / 'iter_2.pth')
    (tmp_path / 'last_checkpoint').write_text('')
    messages = _logged(monkeypatch)
    cfg = apply_resume(load_config(CONFIG, {'work_dir': str(tmp_path)}), 'auto')
    assert cfg.resume is True and cfg.load_from == str(tmp_path / 'iter_2.pth')
    assert cfg.randomness.seed == 1  # taken from the checkpoint's meta
    msg = next(m for m, _ in messages if '--resume' in m)
    assert 'last_checkpoint is unusable: it is empty' in msg and 'iter_2.pth' in msg


# --------------------------------------------------------------------- pieces
def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / 'last_checkpoint'
    path.write_text('old')
    atomic_write_text(str(path), 'new')
    assert path.read_text() == 'new' and os.listdir(tmp_path) == ['last_checkpoint']


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # a cached gaussian is part of numpy's state
    state = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    path = tmp_path / 's.pth'
    torch.save({'s': state}, path)
    loaded = torch.load(path, weights_only=True)['s']
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]
    pickle.dumps(state)  # gathered across ranks with all_gather_object
