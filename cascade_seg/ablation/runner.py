"""Run an ablation spec: every variant through the same Runner path as tools/train.py and
tools/test.py, one work dir per variant and seed, resumable, failures isolated per variant."""
import json
import math
import os
import os.path as osp
import resource
import shutil
import subprocess
import sys
import time
import traceback

from .spec import build_variant_config, config_hash, load_spec

RESULT_FILE = 'result.json'
SUMMARY_FILE = 'results.json'


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path, obj):
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, 'tolist'):
        return x.tolist()
    if hasattr(x, 'item'):
        return x.item()
    return str(x)


def _log(msg):
    print(f'[ablate {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def _is_main_process():
    from mmengine.dist import get_rank
    return get_rank() == 0


def run_one(spec, variant, seed, work_dir, launcher='none'):
    """Train/test/benchmark one (variant, seed); returns its result record.

    A finished run whose config hash is unchanged is skipped; an unfinished one with the
    same hash resumes from its last checkpoint; a changed hash starts over.
    """
    vdir = osp.join(work_dir, variant.name, f'seed{seed}')
    record_path = osp.join(vdir, RESULT_FILE)
    record = dict(name=variant.name, seed=seed, config=variant.config,
                  overrides=variant.overrides, work_dir=vdir, status='running')
    try:
        cfg = build_variant_config(spec, variant)
        digest = config_hash(cfg, seed, extra=dict(run=spec.run, speed=spec.speed,
                                                   checkpoint=variant.checkpoint))
    except Exception as e:  # a broken variant must not stop the others
        record.update(status='failed', error=f'{type(e).__name__}: {e}')
        _write_json(record_path, record)
        return record
    record['hash'] = digest
    old = _read_json(record_path)
    if old and old.get('hash') == digest and old.get('status') == 'done':
        old['skipped'] = True
        return old
    if old and old.get('hash') != digest and osp.isdir(vdir):
        shutil.rmtree(vdir)  # stale checkpoints of another config must not be resumed
    os.makedirs(vdir, exist_ok=True)
    _write_json(record_path, record)

    start = time.time()
    try:
        record.update(_execute(spec, variant, cfg, seed, vdir, launcher))
        record['status'] = 'done'
    except Exception as e:
        record.update(status='failed', error=f'{type(e).__name__}: {e}',
                      traceback=traceback.format_exc(limit=8))
    record['wall_time_s'] = round(time.time() - start, 1)
    if _is_main_process():
        _write_json(record_path, record)
    return record


def _execute(spec, variant, cfg, seed, vdir, launcher):
    from cascade_seg.engine.benchmark import benchmark
    from cascade_seg.engine.runner_utils import build_runner

    cfg.work_dir = vdir
    cfg.randomness = dict(seed=seed, deterministic=False)
    out = dict(metrics={}, speed={})
    runner = None
    if spec.run.get('train', True) and variant.checkpoint is None:
        resume = 'auto' if osp.exists(osp.join(vdir, 'last_checkpoint')) else None
        runner = build_runner(cfg, work_dir=vdir, resume=resume, launcher=launcher)
        runner.train()
        out['train_time_s'] = _train_time(runner)
    if spec.run.get('test', True):
        if runner is None:
            if variant.checkpoint is None:
                raise ValueError('test without training needs the variant to name a checkpoint')
            cfg.load_from = variant.checkpoint
            runner = build_runner(cfg, work_dir=vdir, launcher=launcher)
        out['metrics'] = {k: _plain(v) for k, v in runner.test().items()}
    if runner is not None:
        out['params'] = sum(p.numel() for p in runner.model.parameters())
    # Peak resident memory of this process so far: per variant when each variant runs in
    # its own process (run_spec(isolate=True), tools/ablate.py --isolate, the demo).
    out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if _is_main_process():
        for task in spec.run.get('speed') or ():
            out['speed'][task] = benchmark(cfg, task=task, **spec.speed)
    return out


def _train_time(runner):
    """Mean seconds per training iteration from the runner's message hub."""
    try:
        buf = runner.message_hub.get_scalar('train/time')
        return float(buf.mean())
    except (KeyError, AttributeError):
        return None


def _plain(v):
    if hasattr(v, 'tolist'):
        return v.tolist()
    return v


def _subprocess_one(spec_path, name, seed, work_dir, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, osp.join(osp.dirname(__file__), '..', '..', 'tools', 'ablate.py'),
           spec_path, '--work-dir', work_dir, '--only', name, '--seeds', str(seed), '--no-summary']
    return subprocess.Popen(cmd, env=env)


def run_spec(spec_path, work_dir, jobs=1, launcher='none', only=None, seeds=None,
             write_summary=True, isolate=False):
    """Run every (variant, seed) of a spec; returns the summary (also ``results.json``).

    ``jobs > 1`` or ``isolate`` runs each (variant, seed) in its own subprocess (``jobs`` at
    once), which also makes its recorded peak memory its own.
    """
    spec = load_spec(spec_path)
    if seeds is not None:
        spec.seeds = list(seeds)
    variants = [v for v in spec.variants if only is None or v.name in only]
    if only is not None and not variants:
        raise ValueError(f'no variant named {only} in {spec_path}')
    todo = [(v, s) for v in variants for s in spec.seeds]
    os.makedirs(work_dir, exist_ok=True)
    if (jobs > 1 or isolate) and launcher == 'none':
        threads = max(1, (os.cpu_count() or 1) // jobs)
        running = []
        for i, (v, s) in enumerate(todo):
            _log(f'[{i + 1}/{len(todo)}] {v.name} seed {s}: started in a subprocess')
            running.append(_subprocess_one(spec_path, v.name, s, work_dir, threads))
            while len(running) >= jobs:
                running = [p for p in running if p.poll() is None]
                time.sleep(1)
        for p in running:
            p.wait()
    else:
        for i, (v, s) in enumerate(todo):
            _log(f'[{i + 1}/{len(todo)}] {v.name} seed {s}: running')
            rec = run_one(spec, v, s, work_dir, launcher=launcher)
            _log(f'[{i + 1}/{len(todo)}] {v.name} seed {s}: {_one_line(rec)}')
    summary = summarize(spec, work_dir)
    if write_summary and _is_main_process():
        _write_json(osp.join(work_dir, SUMMARY_FILE), summary)
    return summary


def failed_variants(summary):
    """Names of the variants in a summary that did not finish."""
    return [r['name'] for r in summary['variants'] if r.get('status') != 'done']


def _one_line(rec):
    if rec.get('status') != 'done':
        return f"FAILED ({rec.get('error')})"
    m = rec.get('metrics', {})
    parts = [f'{k}={m[k]:.3f}' for k in ('coco/bbox_mAP', 'coco/segm_mAP') if k in m]
    if rec.get('skipped'):
        parts.append('(unchanged, skipped)')
    return 'done ' + ' '.join(parts)


def summarize(spec, work_dir):
    """Collect per-seed records into one entry per variant: mean and std over seeds."""
    rows = []
    for v in spec.variants:
        recs = [_read_json(osp.join(work_dir, v.name, f'seed{s}', RESULT_FILE))
                for s in spec.seeds]
        recs = [r for r in recs if r]
        done = [r for r in recs if r.get('status') == 'done']
        row = dict(name=v.name, config=v.config, overrides=v.overrides,
                   seeds=[r['seed'] for r in done], hashes=sorted({r.get('hash') for r in recs}))
        if not done:
            errors = [r.get('error') for r in recs if r.get('error')]
            row.update(status='failed' if errors else 'missing',
                       error=errors[0] if errors else 'not run')
            rows.append(row)
            continue
        row['status'] = 'done'
        flat = [_flatten(r) for r in done]
        keys = [k for k in flat[0] if all(k in f for f in flat)]
        row['mean'] = {k: _mean([f[k] for f in flat]) for k in keys}
        row['std'] = {k: _std([f[k] for f in flat]) for k in keys}
        row['per_iou'] = {k: v for k, v in done[0].get('metrics', {}).items()
                          if isinstance(v, list)}
        rows.append(row)
    return dict(spec=spec.path, name=spec.name, seeds=spec.seeds, report=spec.report,
                speed_settings=spec.speed, variants=rows)


def _flatten(rec):
    """Numeric fields of one record as flat keys: metric names without the 'coco/' prefix,
    speed as '<task>.<field>'."""
    flat = {}
    for k, v in rec.get('metrics', {}).items():
        if isinstance(v, (int, float)):
            flat[k.split('/', 1)[-1]] = float(v)
    for task, res in rec.get('speed', {}).items():
        for k, v in (res or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[f'{task}.{k}'] = float(v)
    for k in ('params', 'train_time_s', 'wall_time_s', 'peak_rss_mb'):
        if isinstance(rec.get(k), (int, float)):
            flat[k] = float(rec[k])
    return flat


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs):
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
