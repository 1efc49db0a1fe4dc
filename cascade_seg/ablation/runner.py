"""Run an ablation spec: every variant through the same Runner path as tools/train.py and
tools/test.py, one work dir per variant and seed, resumable, failures isolated per variant.

Each run is evaluated once (the test pass; the training loop's own validation is switched
off) and keeps the per-image COCO matching of that evaluation (``eval_{bbox,segm}.npz``) so
that tables can recompute bootstrap intervals later without running any model.
"""
import copy
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

from .progress import (PROGRESS_FILE, JobConsole, ProgressHook, fmt_duration, planned_length)
from .spec import TRUNK_NAME, build_variant_config, config_hash, load_spec

RESULT_FILE = 'result.json'
SUMMARY_FILE = 'results.json'
CONSOLE_LOG = 'console.log'
TRUNK_FILE = 'trunk.pth'
ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))


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


def _log(msg, stream=None):
    print(f'[ablate {time.strftime("%H:%M:%S")}] {msg}', file=stream or sys.stdout, flush=True)


def _is_main_process():
    from mmengine.dist import get_rank
    return get_rank() == 0


def last_line(text):
    """The last non-empty line of an error message or log (what a terminal shows last)."""
    lines = [ln.strip() for ln in str(text or '').splitlines() if ln.strip()]
    return lines[-1] if lines else ''


def is_trunk(variant):
    return variant.name == TRUNK_NAME


def run_settings(spec, variant):
    """What a run does: the trunk only trains (its weights are the result)."""
    if is_trunk(variant):
        return dict(train=True, test=False, speed=())
    return spec.run


def trunk_dir(work_dir, seed):
    return osp.join(work_dir, TRUNK_NAME, f'seed{seed}')


def prepare_run(spec, variant, seed, work_dir='.'):
    """The resolved config of one (variant, seed) and its hash; raises for a broken variant.

    With a shared trunk, every variant's config gets a ``SharedTrunkHook`` that loads the
    trunk of its seed from ``work_dir``, and its hash includes the trunk's hash (a changed
    trunk reruns the variants), not the trunk's path."""
    cfg = build_variant_config(spec, variant)
    extra = dict(run=run_settings(spec, variant), checkpoint=variant.checkpoint)
    if not is_trunk(variant):  # the trunk is not benchmarked: specs that differ only in their
        extra['speed'] = spec.speed  # speed settings share one trained trunk
    if spec.trunk is not None and not is_trunk(variant):
        extra['trunk'] = prepare_run(spec, spec.trunk.variant, seed, work_dir)[1]
        extra['trunk_modules'] = [list(spec.trunk.modules), spec.trunk.freeze]
    digest = config_hash(cfg, seed, extra=extra)
    if 'trunk' in extra:
        hooks = list(cfg.get('custom_hooks') or [])
        hooks.append(dict(type='SharedTrunkHook', modules=list(spec.trunk.modules),
                          freeze=spec.trunk.freeze,
                          checkpoint=osp.abspath(osp.join(trunk_dir(work_dir, seed), TRUNK_FILE))))
        cfg.custom_hooks = hooks
    return cfg, digest


def describe_schedule(cfg, variant=None):
    """One line: training length, batch, optimizer and LR, LR steps, autocast."""
    if variant is not None and variant.checkpoint is not None:
        return f'evaluated from {variant.checkpoint}'
    length, unit = planned_length(cfg)
    noun = dict(epochs='epoch', iters='iteration')[unit]
    parts = [f"{length} {noun}{'' if length == 1 else 's'}" if length else 'no training']
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    if batch:
        parts.append(f'batch {batch}')
    ow = cfg.get('optim_wrapper') or {}
    opt = ow.get('optimizer') or {}
    if opt.get('type'):
        lr = opt.get('lr')
        parts.append(f"{opt['type']} lr {lr:g}" if isinstance(lr, (int, float)) else opt['type'])
    scheds = cfg.get('param_scheduler') or []
    for sched in [scheds] if isinstance(scheds, dict) else scheds:
        if not isinstance(sched, dict) or not sched.get('milestones'):
            continue
        by_epoch = sched.get('by_epoch', True)
        steps = [m for m in sched['milestones']
                 if not length or by_epoch != (unit == 'epochs') or m < length]
        if steps:  # the LR steps that happen within the training
            parts.append(f"LR x{sched.get('gamma', 0.1):g} after "
                         f"{'epoch' if by_epoch else 'iteration'} "
                         f"{', '.join(str(m) for m in steps)}")
    from cascade_seg.engine.precision import normalize_precision, optim_wrapper_precision
    precision = normalize_precision(cfg.get('precision')) or optim_wrapper_precision(ow)
    if precision in ('bf16', 'fp16'):
        parts.append(f"{dict(bf16='bfloat16', fp16='float16')[precision]} autocast")
    return ', '.join(parts)


def _clean_stale(vdir):
    """Remove a run folder's contents of another config (its log of earlier attempts stays)."""
    if not osp.isdir(vdir):
        return
    for entry in os.listdir(vdir):
        if entry == CONSOLE_LOG:
            continue
        path = osp.join(vdir, entry)
        shutil.rmtree(path) if osp.isdir(path) and not osp.islink(path) else os.remove(path)


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
        cfg, digest = prepare_run(spec, variant, seed, work_dir)
    except Exception as e:  # a broken variant must not stop the others
        record.update(status='failed', error=f'{type(e).__name__}: {e}')
        _write_json(record_path, record)
        return record
    record.update(hash=digest, schedule=describe_schedule(cfg, variant))
    old = _read_json(record_path)
    if old and old.get('hash') == digest and old.get('status') == 'done':
        old['skipped'] = True
        return old
    if old and old.get('hash') != digest:
        _clean_stale(vdir)  # stale checkpoints of another config must not be resumed
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


def _without_val(cfg):
    """The config with the training loop's validation switched off.

    mmengine's train loops always validate after the last epoch / iteration whatever
    ``val_interval`` says; with a test pass afterwards the same model would be evaluated
    twice with identical numbers. The test pass is the one evaluation.
    """
    cfg = copy.deepcopy(cfg)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator'):
        cfg[key] = None
    return cfg


def _execute(spec, variant, cfg, seed, vdir, launcher):
    from cascade_seg.engine.benchmark import benchmark
    from cascade_seg.engine.runner_utils import build_runner

    cfg.work_dir = vdir
    cfg.randomness = dict(seed=seed, deterministic=False)
    progress = ProgressHook(osp.join(vdir, PROGRESS_FILE))
    out = dict(metrics={}, speed={}, eval={})
    runner = None
    settings = run_settings(spec, variant)
    test = settings.get('test', True)
    if spec.trunk is not None and not is_trunk(variant):
        trunk_file = osp.join(trunk_dir(osp.dirname(osp.dirname(vdir)), seed), TRUNK_FILE)
        if not osp.isfile(trunk_file):
            raise FileNotFoundError(f'the shared trunk of seed {seed} is missing ({trunk_file}): '
                                    'its run failed or has not run')
    if settings.get('train', True) and variant.checkpoint is None:
        resume = 'auto' if osp.exists(osp.join(vdir, 'last_checkpoint')) else None
        runner = build_runner(_without_val(cfg) if test else cfg, work_dir=vdir, resume=resume,
                              launcher=launcher)
        runner.register_hook(progress, priority='VERY_LOW')
        runner.train()
        out['train_time_s'] = _train_time(runner)
        if is_trunk(variant) and _is_main_process():
            _save_trunk(runner, osp.join(vdir, TRUNK_FILE))
    if test:
        if runner is None:
            if variant.checkpoint is None:
                raise ValueError('test without training needs the variant to name a checkpoint')
            cfg.load_from = variant.checkpoint
            runner = build_runner(cfg, work_dir=vdir, launcher=launcher)
            runner.register_hook(progress, priority='VERY_LOW')
        out['metrics'] = {k: _plain(v) for k, v in runner.test().items()}
        if _is_main_process():
            out['eval'], out['eval_exact'] = _save_eval_data(runner, vdir, out['metrics'])
    if runner is not None:
        out['params'] = sum(p.numel() for p in runner.model.parameters())
    # Peak resident memory of this process so far: per variant when each variant runs in
    # its own process (tools/ablate.py's default, run_spec(isolate=True), the demo).
    out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if _is_main_process():
        for task in settings.get('speed') or ():
            out['speed'][task] = benchmark(cfg, task=task, **spec.speed)
    return out


def _save_trunk(runner, path):
    """The trained weights (state dict only), written atomically: the variants load them."""
    import torch
    from mmengine.model import is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    tmp = path + '.tmp'
    torch.save(dict(state_dict=model.state_dict()), tmp)
    os.replace(tmp, path)


def _save_eval_data(runner, vdir, metrics):
    """Store the per-image COCO matching of the test evaluation (``eval_<type>.npz``).

    Returns ``({iou_type: file name}, {iou_type: exact})``; ``exact`` says that AP, AP50
    and AP75 recomputed from the stored data equal the reported metrics bit for bit.
    """
    from mmengine.logging import print_log

    from .stats import EVAL_METRICS, extract_eval, point_metrics, save_eval
    saved, exact = {}, {}
    for metric in getattr(runner.test_evaluator, 'metrics', None) or []:
        evals = getattr(metric, 'coco_evals', None) or {}
        prefix = getattr(metric, 'prefix', None) or getattr(metric, 'default_prefix', '')
        for iou_type, coco_eval in evals.items():
            if iou_type not in ('bbox', 'segm'):
                continue
            data = extract_eval(coco_eval)
            recomputed = point_metrics(data)
            reported = {m: metrics.get(f'{prefix}/{iou_type}_{m}' if prefix else
                                       f'{iou_type}_{m}') for m in EVAL_METRICS}
            exact[iou_type] = all(reported[m] == recomputed[m] for m in EVAL_METRICS)
            if not exact[iou_type]:
                print_log(f'per-image {iou_type} data recompute {recomputed}, the metric '
                          f'reported {reported}', logger='current', level=30)
            name = f'eval_{iou_type}.npz'
            save_eval(osp.join(vdir, name), data, iou_type=iou_type, reported=reported)
            saved[iou_type] = name
        if evals:
            metric.coco_evals = {}  # the COCOeval objects hold the whole GT: free them
    return saved, exact


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


def _metrics_text(rec):
    m = rec.get('metrics', {})
    parts = [f'{label} {100 * m[k]:.1f}' for k, label in
             (('coco/bbox_mAP', 'box AP'), ('coco/segm_mAP', 'mask AP')) if k in m]
    return ', '.join(parts)


def _finish_text(rec, seconds=None):
    took = f' after {fmt_duration(seconds)}' if seconds is not None else ''
    if rec.get('status') != 'done':
        return f'FAILED{took}: {last_line(rec.get("error"))}'
    if rec.get('skipped'):
        text = _metrics_text(rec)
        return 'unchanged since it finished, skipped' + (f': {text}' if text else '')
    took = f' in {fmt_duration(seconds)}' if seconds is not None else ''
    text = _metrics_text(rec)
    return f'done{took}' + (f': {text}' if text else '')


def _worker_threads(jobs):
    per_job = max(1, (os.cpu_count() or 1) // jobs)
    user = os.environ.get('OMP_NUM_THREADS')
    return min(per_job, int(user)) if user and user.isdigit() and int(user) > 0 else per_job


def _worker_cmd(spec_path, name, seed, work_dir, precision=None):
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'ablate.py'), spec_path, '--work-dir',
           work_dir, '--only', name, '--seeds', str(seed), '--no-summary', '--in-process']
    return cmd + (['--precision', precision] if precision else [])


def _run_isolated(spec, spec_path, todo, work_dir, jobs, stream=None):
    """Every (variant, seed) in its own process, ``jobs`` at once; their output goes to
    ``<run folder>/console.log``, the console shows start/finish lines and one bar."""
    runs = []
    for v, s in todo:
        vdir = osp.join(work_dir, v.name, f'seed{s}')
        label = f'shared trunk seed {s}' if is_trunk(v) else f'{v.name} seed {s}'
        info = dict(variant=v, seed=s, vdir=vdir, label=label, length=0,
                    unit='epochs', digest=None, error=None, after=None)
        try:
            cfg, info['digest'] = prepare_run(spec, v, s, work_dir)
            if run_settings(spec, v).get('train', True) and v.checkpoint is None:
                info['length'], info['unit'] = planned_length(cfg)
        except Exception as e:
            info['error'] = f'{type(e).__name__}: {e}'
        runs.append(info)
    # a variant starts after the shared trunk of its seed has finished
    trunk_run = {r['seed']: i for i, r in enumerate(runs) if is_trunk(r['variant'])}
    for r in runs:
        if not is_trunk(r['variant']):
            r['after'] = trunk_run.get(r['seed'])
    finished = set()
    console = JobConsole(runs, stream=stream)
    pending, running, n = list(range(len(runs))), {}, len(runs)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                ready = [j for j in pending if runs[j]['after'] is None
                         or runs[j]['after'] in finished]
                if not ready:
                    break
                # costliest first: the last runs to finish are then short ones, and no core
                # idles long while one long run finishes
                i = max(ready, key=lambda j: (runs[j]['variant'].cost, -j))
                pending.remove(i)
                info, tag = runs[i], f'[{i + 1}/{n}] {runs[i]["label"]}'
                record_path = osp.join(info['vdir'], RESULT_FILE)
                if info['error']:  # the config does not build: recorded without a process
                    rec = run_one(spec, info['variant'], info['seed'], work_dir)
                    console.finished(i, ok=False)
                    console.line(f'{tag}: {_finish_text(rec)}')
                    finished.add(i)
                    continue
                old = _read_json(record_path)
                if old and old.get('hash') == info['digest'] and old.get('status') == 'done':
                    console.finished(i, skipped=True)
                    console.line(f'{tag}: {_finish_text(dict(old, skipped=True))}')
                    finished.add(i)
                    continue
                if old and old.get('hash') != info['digest']:
                    _clean_stale(info['vdir'])
                os.makedirs(info['vdir'], exist_ok=True)
                log_path = osp.join(info['vdir'], CONSOLE_LOG)
                log = open(log_path, 'a')
                log.write(f'==== {time.strftime("%Y-%m-%d %H:%M:%S")} '
                          f'{info["label"]} (hash {info["digest"]})\n')
                log.flush()
                # the cores are shared by the runs that can run now (a shared trunk runs alone)
                ready_now = len([j for j in pending if runs[j]['after'] is None
                                 or runs[j]['after'] in finished])
                env = dict(os.environ, OMP_NUM_THREADS=str(
                    _worker_threads(min(jobs, len(running) + 1 + ready_now))))
                proc = subprocess.Popen(
                    _worker_cmd(spec_path, info['variant'].name, info['seed'], work_dir,
                                spec.force_precision),
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
                running[i] = (proc, log, time.time())
                console.started(i)
                console.line(f'{tag}: started (log: {log_path})')
            for i, (proc, log, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[i]
                finished.add(i)
                info, tag = runs[i], f'[{i + 1}/{n}] {runs[i]["label"]}'
                rec = _collect(info, proc.returncode)
                console.finished(i, ok=rec.get('status') == 'done')
                msg = f'{tag}: {_finish_text(rec, time.time() - t0)}'
                if rec.get('status') != 'done':
                    msg += f' (log: {osp.join(info["vdir"], CONSOLE_LOG)})'
                console.line(msg)
            console.draw()
            if running:
                time.sleep(0.5)
    finally:
        for proc, log, _ in running.values():  # interrupted: stop our own workers
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        console.close()


def _collect(info, returncode):
    """The record a worker left; a worker that died without one (killed, out of memory)
    is recorded as failed with the last line of its log."""
    record_path = osp.join(info['vdir'], RESULT_FILE)
    rec = _read_json(record_path) or {}
    if rec.get('hash') == info['digest'] and rec.get('status') in ('done', 'failed'):
        return rec
    try:
        with open(osp.join(info['vdir'], CONSOLE_LOG), errors='replace') as f:
            tail = last_line(f.read()[-4000:])
    except OSError:
        tail = ''
    rec = dict(rec, name=info['variant'].name, seed=info['seed'], hash=info['digest'],
               config=info['variant'].config, work_dir=info['vdir'], status='failed',
               error=f'worker process exited with status {returncode}'
               + (f': {tail}' if tail else ''))
    _write_json(record_path, rec)
    return rec


def run_spec(spec_path, work_dir, jobs=1, launcher='none', only=None, seeds=None,
             write_summary=True, isolate=False, bootstrap=1000, ci_seed=0, stream=None,
             precision=None):
    """Run every (variant, seed) of a spec; returns the summary (also ``results.json``).

    ``isolate`` (or ``jobs > 1``) runs each (variant, seed) in its own process with its
    output in its folder's ``console.log`` and a progress bar on the console; this also
    makes its recorded peak memory its own. In-process runs (the default of this function,
    and distributed launches) leave the Runner's logging on the console.

    With ``write_summary`` the summary gets bootstrap statistics (``bootstrap`` replicates,
    RNG ``ci_seed``; see :mod:`cascade_seg.ablation.stats`) and is written to
    ``work_dir/results.json``. ``summary['job']`` lists the runs of this call that failed.
    ``precision`` (``'fp32' | 'bf16' | 'fp16'``) overrides the spec's and its variants'
    precision for training, testing and the speed measurements.
    """
    spec = load_spec(spec_path)
    if seeds is not None:
        spec.seeds = list(seeds)
    if precision is not None:
        from cascade_seg.engine.precision import normalize_precision
        spec.force_precision = normalize_precision(precision)
    candidates = ([spec.trunk.variant] if spec.trunk is not None else []) + spec.variants
    variants = [v for v in candidates if only is None or v.name in only]
    if only is not None and not variants:
        raise ValueError(f'no variant named {only} in {spec_path}')
    if only is None and spec.trunk is not None and spec.trunk.variant in variants:
        # the shared trunk of every seed trains first (isolated runs wait for it)
        variants = [spec.trunk.variant] + [v for v in variants if not is_trunk(v)]
    todo = [(v, s) for v in variants for s in spec.seeds]
    if spec.trunk is not None:  # trunks first, seed by seed
        todo.sort(key=lambda vs: not is_trunk(vs[0]))
    os.makedirs(work_dir, exist_ok=True)
    if (jobs > 1 or isolate) and launcher == 'none':
        _run_isolated(spec, spec_path, todo, work_dir, jobs, stream)
    else:
        for i, (v, s) in enumerate(todo):
            tag = f'[{i + 1}/{len(todo)}] {v.name} seed {s}'
            _log(f'{tag}: started', stream)
            start = time.time()
            rec = run_one(spec, v, s, work_dir, launcher=launcher)
            _log(f'{tag}: {_finish_text(rec, None if rec.get("skipped") else time.time() - start)}',
                 stream)
    summary = summarize(spec, work_dir)
    failed = []
    for v, s in todo:
        rec = _read_json(osp.join(work_dir, v.name, f'seed{s}', RESULT_FILE)) or {}
        if rec.get('status') == 'failed':
            failed.append(dict(name=v.name, seed=s, error=last_line(rec.get('error'))))
    summary['job'] = dict(runs=[dict(name=v.name, seed=s) for v, s in todo], failed=failed)
    if spec.trunk is not None:
        summary['trunk'] = _trunk_summary(spec, work_dir)
    if write_summary and _is_main_process():
        write_summary_with_statistics(summary, work_dir, bootstrap, ci_seed, stream)
    return summary


def write_summary_with_statistics(summary, work_dir, bootstrap, ci_seed, stream=None):
    """Add the table's bootstrap statistics to ``summary``, say so on the console, and
    write it as ``work_dir/results.json``."""
    from .table import attach_statistics
    start = time.time()
    attach_statistics(summary, root=work_dir, num_replicates=bootstrap, seed=ci_seed)
    st = summary.get('statistics') or {}
    if st.get('variants'):
        _log(f"statistics: paired bootstrap over {st['settings'].get('num_images')} "
             f"validation images, B={st['settings']['replicates']} "
             f"({time.time() - start:.1f} s)", stream)
    _write_json(osp.join(work_dir, SUMMARY_FILE), summary)


def _trunk_summary(spec, work_dir):
    recs = [_read_json(osp.join(trunk_dir(work_dir, s), RESULT_FILE)) or {} for s in spec.seeds]
    return dict(config=spec.trunk.variant.config, overrides=spec.trunk.variant.overrides,
                modules=list(spec.trunk.modules), freeze=spec.trunk.freeze,
                schedule=next((r['schedule'] for r in recs if r.get('schedule')), None),
                seeds=[r.get('seed') for r in recs if r.get('status') == 'done'],
                train_time_s=[r.get('train_time_s') for r in recs if r.get('status') == 'done'])


def failed_variants(summary):
    """Names of the variants whose runs failed: those of the job that produced ``summary``
    when it says (``summary['job']``), else every row marked failed. Variants that have not
    run are not failures."""
    if 'job' in summary:
        return list(dict.fromkeys(f['name'] for f in summary['job']['failed']))
    return [r['name'] for r in summary['variants'] if r.get('status') == 'failed']


def failed_runs(summary):
    """``[{name, seed, error}]`` of the runs of this job that failed (error: its last line)."""
    if 'job' in summary:
        return list(summary['job']['failed'])
    return [dict(name=r['name'], seed=run.get('seed'), error=last_line(run.get('error')))
            for r in summary['variants'] for run in r.get('runs', [])
            if run.get('status') == 'failed']


def summarize(spec, work_dir):
    """Collect per-seed records into one entry per variant: mean and std over seeds, and
    where each seed's files are (paths relative to ``work_dir``)."""
    rows = []
    for v in spec.variants:
        recs = [_read_json(osp.join(work_dir, v.name, f'seed{s}', RESULT_FILE))
                for s in spec.seeds]
        recs = [r for r in recs if r]
        done = [r for r in recs if r.get('status') == 'done']
        row = dict(name=v.name, config=v.config, overrides=v.overrides,
                   seeds=[r['seed'] for r in done], hashes=sorted({r.get('hash') for r in recs}))
        if v.paper:
            row['paper'] = dict(v.paper)
        row['runs'] = [_run_entry(v, r) for r in recs]
        if not done:
            errors = [r.get('error') for r in recs if r.get('status') == 'failed']
            if errors:
                row.update(status='failed', error=last_line(errors[0]))
            else:
                row.update(status='missing', error='not run')
            rows.append(row)
            continue
        row['status'] = 'done'
        schedules = sorted({r.get('schedule') for r in done if r.get('schedule')})
        if schedules:
            row['schedule'] = '; '.join(schedules)
        flat = [_flatten(r) for r in done]
        keys = [k for k in flat[0] if all(k in f for f in flat)]
        row['mean'] = {k: _mean([f[k] for f in flat]) for k in keys}
        row['std'] = {k: _std([f[k] for f in flat]) for k in keys}
        curves = {}
        for k in done[0].get('metrics', {}):
            per_seed = [r.get('metrics', {}).get(k) for r in done]
            if all(isinstance(c, list) and len(c) == len(per_seed[0]) for c in per_seed):
                curves[k] = [_mean(vals) for vals in zip(*per_seed)]
        row['per_iou'] = curves
        rows.append(row)
    return dict(spec=spec.path, name=spec.name, seeds=spec.seeds, report=spec.report,
                protocol=spec.protocol, speed_settings=spec.speed, variants=rows)


def _run_entry(variant, rec):
    entry = dict(seed=rec.get('seed'), status=rec.get('status'),
                 dir=osp.join(variant.name, f"seed{rec.get('seed')}"))
    if rec.get('eval'):
        entry['eval'] = {t: osp.join(entry['dir'], f) for t, f in rec['eval'].items()}
    if rec.get('status') == 'failed':
        entry['error'] = last_line(rec.get('error'))
    return entry


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
