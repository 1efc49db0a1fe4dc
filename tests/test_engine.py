"""Engine: safe checkpoint loading + exact resume, NaN guard, num_classes check, AMP, CPU DDP."""
import io
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from torch.utils.data import Dataset

import cascade_seg.engine  # noqa: F401  (registers the safe globals)
from cascade_seg.engine import build_runner
from cascade_seg.engine.checkpoint import (compare_state_dicts, format_report,
                                           history_buffer_getattr, load_checkpoint,
                                           safe_globals_list)
from cascade_seg.engine.hooks import non_finite_losses, num_classes_mismatches
from cascade_seg.registry import DATASETS, HOOKS, METRICS, MODELS

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@MODELS.register_module(name='EngineToyNet', force=True)
class ToyNet(BaseModel):
    """One conv and a linear layer regressing a scalar target; optional NaN at a given call."""

    def __init__(self, nan_at=None, num_classes=2, data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 1)
        self.bbox_head = nn.Module()
        self.bbox_head.num_classes = num_classes
        self.nan_at, self.calls, self.seen_dtypes = nan_at, 0, []

    def class_heads(self):
        """Declares its class-predicting head, as the RoI heads do."""
        return [('bbox_head', self.bbox_head)]

    def forward(self, inputs, data_samples=None, mode='tensor'):
        feat = self.conv(inputs)
        self.seen_dtypes.append(feat.dtype)
        out = self.fc(feat.float().mean((2, 3))).squeeze(1)
        if mode == 'loss':
            self.calls += 1
            loss = ((out - data_samples['target']) ** 2).mean()
            if self.calls == self.nan_at:
                loss = loss * float('nan')
            return dict(loss_reg=loss, loss_aux=0.1 * out.detach().abs().mean())
        if mode == 'predict':
            return [dict(idx=int(i), pred=float(o)) for i, o in zip(data_samples['idx'], out)]
        return out


@DATASETS.register_module(name='EngineToyDataset', force=True)
class ToyDataset(Dataset):
    def __init__(self, size=8, metainfo=None):
        self.size = size
        self.metainfo = dict(metainfo or dict(classes=('a', 'b')))

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(3, 8, 8, generator=g)
        return dict(inputs=x, data_samples=dict(target=x.mean() * 3 + 1, idx=i))


@METRICS.register_module(name='EngineCountMetric', force=True)
class CountMetric(BaseMetric):
    """Counts the evaluated samples (after mmengine gathers them from all ranks)."""
    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        self.results.extend(s['idx'] for s in data_samples)

    def compute_metrics(self, results):
        return dict(count=len(results), unique=len(set(results)))


class Crash(Exception):
    pass


@HOOKS.register_module(name='EngineCrashHook', force=True)
class CrashHook(Hook):
    """Simulates a killed job right after iteration ``at`` (after its checkpoint was written)."""
    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise Crash()


@HOOKS.register_module(name='EngineRecordStartHook', force=True)
class RecordStartHook(Hook):
    starts = []

    def before_train(self, runner):
        RecordStartHook.starts.append(runner.iter)


def toy_cfg(work_dir, name, max_iters=6, nan_at=None, custom_hooks=(), val=False, classes=2):
    from mmengine.config import Config
    loader = dict(dataset=dict(type='EngineToyDataset', size=8), batch_size=2, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=True),
                  collate_fn=dict(type='default_collate'))
    cfg = dict(
        default_scope='cascade_seg', work_dir=work_dir, experiment_name=name,
        model=dict(type='EngineToyNet', nan_at=nan_at, num_classes=classes),
        train_dataloader=loader,
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=1000),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-3)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.2, by_epoch=False, begin=0, end=3),
                         dict(type='MultiStepLR', milestones=[4], gamma=0.1, by_epoch=False)],
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', interval=3, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='CheckFiniteLossHook'), *custom_hooks],
        randomness=dict(seed=0), log_level='WARNING')
    if val:
        cfg.update(val_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=False)),
                   val_cfg=dict(type='ValLoop'), val_evaluator=dict(type='EngineCountMetric'))
    return Config(cfg)


def params_of(runner):
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- safe loading + resume
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    full = build_runner(toy_cfg(str(tmp_path / 'full'), 'full'))
    full.train()

    crashed = build_runner(toy_cfg(str(tmp_path / 'resumed'), 'crashed',
                                   custom_hooks=[dict(type='EngineCrashHook', at=3)]))
    with pytest.raises(Crash):
        crashed.train()
    assert osp.isfile(tmp_path / 'resumed' / 'iter_3.pth')

    RecordStartHook.starts.clear()
    resumed = build_runner(toy_cfg(str(tmp_path / 'resumed'), 'resumed',
                                   custom_hooks=[dict(type='EngineRecordStartHook')]),
                           resume='auto')
    resumed.train()
    assert RecordStartHook.starts == [3]  # continued from the checkpoint, not from scratch
    assert resumed.iter == full.iter == 6

    a, b = params_of(full), params_of(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # momentum buffers and the LR schedule (warm-up then step) continued too
    sa, sb = full.optim_wrapper.state_dict(), resumed.optim_wrapper.state_dict()
    for i, st in sa['state'].items():
        assert torch.allclose(st['momentum_buffer'], sb['state'][i]['momentum_buffer'], atol=1e-6)
    assert sa['param_groups'][0]['lr'] == pytest.approx(sb['param_groups'][0]['lr'], rel=1e-9)
    assert sb['param_groups'][0]['lr'] == pytest.approx(0.005)  # lr 0.05 after MultiStepLR at 4


def test_runners_built_in_one_second_keep_their_own_work_dirs(tmp_path, monkeypatch):
    # mmengine keys the logger, message hub and visualizer by experiment name + timestamp to
    # the second; two runners of one config in one second must not share them
    import time as time_module
    monkeypatch.setattr(time_module, 'time', lambda: 1.8e9)  # the same second for both
    runners = [build_runner(toy_cfg(str(tmp_path / d), 'same', max_iters=1)) for d in 'ab']
    names = [r.experiment_name for r in runners]
    assert len(set(names)) == 2
    for r, d in zip(runners, 'ab'):
        assert r.visualizer.instance_name == r.experiment_name
        assert r.logger.instance_name == r.experiment_name
        vis_dirs = [b._save_dir for b in r.visualizer._vis_backends.values()]
        assert vis_dirs and all(v.startswith(str(tmp_path / d)) for v in vis_dirs)
        log_files = [h.baseFilename for h in r.logger.handlers if hasattr(h, 'baseFilename')]
        assert log_files and all(f.startswith(str(tmp_path / d)) for f in log_files)


def test_checkpoint_loads_with_weights_only_and_minimal_allow_list(tmp_path):
    runner = build_runner(toy_cfg(str(tmp_path), 'wo', max_iters=3))
    runner.train()
    ckpt_path = str(tmp_path / 'iter_3.pth')
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert ckpt['message_hub']['log_scalars']['train/loss'].mean() > 0
    # the file does need non-default globals, and every one of them is allow-listed
    found = pickled_globals(ckpt_path)
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr'} <= found
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt_path) == []
    names = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
             for g in safe_globals_list()}
    assert 'numpy._core.multiarray._reconstruct' in found & names


def pickled_globals(path):
    """``module.name`` of every GLOBAL opcode in a torch zip checkpoint's pickle."""
    import pickletools
    import zipfile
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith('data.pkl')))
    out = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == 'GLOBAL':
            out.add(arg.replace(' ', '.').replace('__builtin__.', 'builtins.'))
    return out


class _Evil:
    """Pickles as ``getattr(os, 'system')('...')``: what a general getattr would allow."""

    def __reduce__(self):
        return (os.system, ('echo pwned',))


def _pickle_getattr(obj_global, attr):
    # a hand-written protocol-2 pickle: GLOBAL builtins.getattr, GLOBAL obj, attr, TUPLE2, REDUCE
    mod, name = obj_global
    return (b'\x80\x02cbuiltins\ngetattr\nc' + mod.encode() + b'\n' + name.encode() + b'\nX'
            + len(attr).to_bytes(4, 'little') + attr.encode() + b'\x86R.')


def test_allow_list_does_not_open_arbitrary_getattr(tmp_path):
    assert history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, attr in [(HistoryBuffer, '__init__'), (HistoryBuffer, '_set_default_statistics'),
                      (np, 'load'), (os, 'system')]:
        with pytest.raises(pickle.UnpicklingError):
            history_buffer_getattr(obj, attr)
    for payload in [_pickle_getattr(('mmengine.logging.history_buffer', 'HistoryBuffer'),
                                    '__init__'),
                    _pickle_getattr(('numpy', 'ndarray'), 'tofile')]:
        with pytest.raises(pickle.UnpicklingError):
            torch.serialization._weights_only_unpickler.load(io.BytesIO(payload))
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_load_checkpoint_reports_shape_mismatch(tmp_path):
    src, dst = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), nn.Sequential(nn.Linear(3, 4),
                                                                               nn.Linear(4, 5))
    path = str(tmp_path / 'w.pth')
    torch.save(dict(state_dict=src.state_dict(), meta=dict(dataset_meta=dict(classes=('a', )))),
               path)
    missing, unexpected, mismatched = compare_state_dicts(dst.state_dict(), src.state_dict())
    assert not missing and not unexpected
    assert mismatched == [('1.weight', (2, 4), (5, 4)), ('1.bias', (2, ), (5, ))]
    assert '1.weight: (2, 4) vs (5, 4)' in format_report(missing, unexpected, mismatched)
    with pytest.raises(RuntimeError, match=r'1\.weight: \(2, 4\) vs \(5, 4\)'):
        load_checkpoint(dst, path, strict=True)
    ckpt = load_checkpoint(dst, path, strict=False)  # loads what matches
    assert torch.equal(dst[0].weight, src[0].weight)
    assert ckpt['meta']['dataset_meta']['classes'] == ('a', )


# ---------------------------------------------------------------- hooks
def test_non_finite_losses():
    logs = dict(loss=torch.tensor(float('nan')), loss_cls=torch.tensor(1.0),
                loss_bbox=float('inf'), acc=torch.tensor([1.0, float('-inf')]), note='x')
    assert non_finite_losses(logs) == ['loss', 'loss_bbox', 'acc']
    assert non_finite_losses(dict(loss=torch.tensor(0.5))) == []


def test_check_finite_loss_hook_stops_training(tmp_path):
    runner = build_runner(toy_cfg(str(tmp_path), 'nan', nan_at=3))
    with pytest.raises(RuntimeError, match=r'iteration 3 \(epoch 1\): loss=nan, loss_reg=nan\.'):
        runner.train()
    assert runner.iter == 2  # the NaN iteration was never counted as done ...
    assert not osp.exists(tmp_path / 'iter_3.pth')  # ... nor checkpointed


def test_num_classes_check(tmp_path):
    model = ToyNet(num_classes=3)
    assert num_classes_mismatches(model, 2) == [('bbox_head', 3)]
    assert num_classes_mismatches(model, 3) == []
    runner = build_runner(toy_cfg(str(tmp_path), 'ncls', classes=5))
    with pytest.raises(ValueError, match=r"2 classes \('a', 'b'\) but bbox_head has num_classes=5"):
        runner.train()


def test_amp_on_cpu_autocasts_to_bfloat16(tmp_path):
    runner = build_runner(toy_cfg(str(tmp_path), 'amp', max_iters=2), amp=True)
    runner.train()
    assert type(runner.optim_wrapper).__name__ == 'AutocastOptimWrapper'
    assert runner.model.seen_dtypes[-1] == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())


# ---------------------------------------------------------------- distributed (2 CPU ranks)
DIST_SCRIPT = textwrap.dedent('''
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    import test_engine as t
    from cascade_seg.engine import build_runner, close_distributed
    cfg = t.toy_cfg({work_dir!r}, 'ddp', max_iters=4, val=True)
    cfg.val_dataloader.dataset.size = 7   # odd size: the sampler pads, the metric must trim
    runner = build_runner(cfg, launcher='pytorch')
    init = t.params_of(runner)
    runner.train()
    metrics = runner.val()
    rank = int(os.environ['RANK'])
    torch.save(dict(iter=runner.iter, init=init, params=t.params_of(runner), metrics=metrics,
                    world=torch.distributed.get_world_size()),
               os.path.join({work_dir!r}, f'rank{{rank}}.pt'))
    del runner
    close_distributed()  # else a gloo thread may abort the process at exit
    assert not torch.distributed.is_initialized()
''')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_process_cpu_training_in_lockstep(tmp_path):
    script = tmp_path / 'ddp.py'
    script.write_text(DIST_SCRIPT.format(tests=osp.join(REPO, 'tests'), work_dir=str(tmp_path)))
    # TMPDIR inside tmp_path: torchrun's per-run torchelastic_* folder goes away with the test.
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO, TMPDIR=str(tmp_path))
    env.pop('CUDA_VISIBLE_DEVICES', None)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc_per_node=2',
         f'--master_port={_free_port()}', str(script)],
        env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r0['world'] == r1['world'] == 2
    assert r0['iter'] == r1['iter'] == 4
    for k in r0['params']:
        assert torch.equal(r0['init'][k], r1['init'][k]), k  # DDP broadcast rank 0's init
        assert torch.equal(r0['params'][k], r1['params'][k]), k  # and they stayed identical
    assert not torch.equal(r0['params']['conv.weight'], r0['init']['conv.weight'])  # trained
    # the metric saw every validation sample exactly once, gathered from both ranks
    assert r0['metrics'] == r1['metrics'] == {'toy/count': 7, 'toy/unique': 7}
    # rank 0 wrote the checkpoint with the random state of both ranks, for an exact resume
    state = torch.load(tmp_path / 'iter_3.pth', weights_only=True)['resume_state']
    assert state['world_size'] == 2 and len(state['rng']) == 2
    assert all(r['torch'].dtype == torch.uint8 for r in state['rng'])
