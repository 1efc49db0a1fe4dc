"""Ablation sweeps beyond one machine: every (variant, seed) submitted as its own job with
submitit (SLURM, or submitit's local executor: subprocess jobs on this machine), the table
assembled when they finish.

A job runs the same worker as ``run_spec(isolate=True)``: ``tools/ablate.py SPEC --only NAME
--seeds S --no-summary --in-process`` (``--launcher slurm`` when a job has several GPUs), which
writes ``DIR/<variant>/seed<k>/`` exactly as a local sweep does, its output going to that
folder's ``console.log``. Submission is resumable: a rerun skips the finished (variant, seed)
pairs with an unchanged config, waits for jobs of an earlier call that are still queued or
running (``job.json`` in the run folder names them), and resubmits the others, which resume
from their last checkpoint.
"""
import os
import os.path as osp
import subprocess
import sys
import time

from .progress import JobConsole, planned_length
from .runner import (CONSOLE_LOG, RESULT_FILE, _clean_stale, _collect, _finish_text,
                     _read_json, _trunk_summary, _worker_cmd, _worker_threads,
                     _write_json, is_trunk, last_line, prepare_run, run_one, summarize,
                     write_summary_with_statistics)
from .spec import load_spec

__all__ = ['EXECUTORS', 'run_spec_submitit', 'JOB_FILE']

EXECUTORS = ('slurm', 'local')
JOB_FILE = 'job.json'
SUBMITIT_DIR = '.submitit'


def _make_executor(kind, folder, partition=None, gpus_per_job=0, cpus_per_job=None,
                   timeout_min=None, mem_gb=None, slurm_args=None, name='ablate'):
    import submitit
    if kind not in EXECUTORS:
        raise ValueError(f'executor must be one of {EXECUTORS}, got {kind!r}')
    executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    params = dict(timeout_min=int(timeout_min or 24 * 60), name=name)
    if kind == 'slurm':
        gpus = int(gpus_per_job or 0)
        params.update(nodes=1, tasks_per_node=max(gpus, 1), gpus_per_node=gpus,
                      cpus_per_task=int(cpus_per_job or 4))
        if partition:
            params['slurm_partition'] = partition
        if mem_gb:
            params['mem_gb'] = mem_gb
        if slurm_args:
            params['slurm_additional_parameters'] = dict(slurm_args)
    else:
        if gpus_per_job:
            params['gpus_per_node'] = int(gpus_per_job)
    executor.update_parameters(**params)
    return executor


def _job_command(spec_path, info, work_dir, gpus_per_job, kind, precision=None):
    cmd = _worker_cmd(osp.abspath(spec_path), info['variant'].name, info['seed'],
                      osp.abspath(work_dir), precision)
    if kind == 'slurm' and int(gpus_per_job or 0) > 1:
        cmd += ['--launcher', 'slurm']  # one task per GPU, the Runner's distributed launch
    return cmd + ['--console-log', osp.abspath(osp.join(info['vdir'], CONSOLE_LOG))]


class _Attached:
    """A job submitted by an earlier call (its id in ``job.json``): done once SLURM no longer
    lists it as queued or running (``squeue``), or once its local process has exited."""

    def __init__(self, kind, job_id):
        self.kind, self.job_id = kind, str(job_id)

    def done(self):
        if self.kind == 'local':
            try:
                os.kill(int(self.job_id.split('_')[0]), 0)
            except (OSError, ValueError):
                return True
            return False
        try:
            out = subprocess.run(['squeue', '-h', '-j', self.job_id, '-o', '%T'],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False  # cannot tell: keep waiting
        return out.returncode == 0 and not out.stdout.strip()

    def state(self):
        return 'finished' if self.done() else 'running'


def _job_state(job):
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - sacct / squeue unavailable for a moment
        return 'UNKNOWN'


def run_spec_submitit(spec_path, work_dir, executor='slurm', partition=None, gpus_per_job=1,
                      cpus_per_job=None, timeout_min=None, mem_gb=None, slurm_args=None,
                      only=None, seeds=None, wait=True, max_running=None, bootstrap=1000,
                      ci_seed=0, poll_s=None, stream=None, precision=None):
    """Submit every (variant, seed) of a spec as its own job and, with ``wait``, collect them
    and write ``work_dir/results.json`` with the table statistics (as ``run_spec``).
    ``precision`` overrides the spec's and its variants' (as ``run_spec``'s).

    ``max_running`` limits the jobs in flight at once (default: all for SLURM, which queues
    them, 1 for the local executor). Returns the summary, or ``None`` when not waiting.
    """
    spec = load_spec(spec_path)
    if seeds is not None:
        spec.seeds = list(seeds)
    if precision is not None:
        from cascade_seg.engine.precision import normalize_precision
        spec.force_precision = normalize_precision(precision)
    variants = [v for v in spec.variants if only is None or v.name in only]
    if only is not None and not variants:
        raise ValueError(f'no variant named {only} in {spec_path}')
    os.makedirs(work_dir, exist_ok=True)
    folder = osp.join(work_dir, SUBMITIT_DIR, '%j')
    ex = _make_executor(executor, folder, partition, gpus_per_job, cpus_per_job, timeout_min,
                        mem_gb, slurm_args, name=f'ablate_{spec.name}')
    if max_running is None:
        max_running = 10 ** 9 if executor == 'slurm' else 1
    if poll_s is None:  # squeue / sacct calls every few seconds at most on a cluster
        poll_s = 10.0 if executor == 'slurm' else 0.5
    # a shared trunk trains first, one job per seed; the variants of a seed wait for it
    trunk = [spec.trunk.variant] if spec.trunk is not None and only is None else []
    runs, trunk_run = [], {}
    for v in trunk + variants:
        for s in spec.seeds:
            vdir = osp.join(work_dir, v.name, f'seed{s}')
            label = f'shared trunk seed {s}' if is_trunk(v) else f'{v.name} seed {s}'
            info = dict(variant=v, seed=s, vdir=vdir, label=label, length=0, unit='epochs',
                        digest=None, error=None, status=None,
                        after=None if is_trunk(v) else trunk_run.get(s))
            if is_trunk(v):
                trunk_run[s] = len(runs)
            try:
                cfg, info['digest'] = prepare_run(spec, v, s, work_dir)
                if spec.run.get('train', True) and v.checkpoint is None:
                    info['length'], info['unit'] = planned_length(cfg)
            except Exception as e:  # noqa: BLE001 - recorded as this run's failure
                info['error'] = f'{type(e).__name__}: {e}'
            runs.append(info)
    console = JobConsole(runs, stream=stream)
    threads = _worker_threads(max(1, min(max_running, len(runs)))) if executor == 'local' else 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    pending, active, n = list(range(len(runs))), {}, len(runs)

    def tag(i):
        return f'[{i + 1}/{n}] {runs[i]["label"]}'

    def ready(i):  # its shared trunk (if any) has ended
        after = runs[i]['after']
        return after is None or runs[after]['status'] is not None

    try:
        while pending or active:
            while len(active) < max_running and any(ready(i) for i in pending):
                i = next(i for i in pending if ready(i))
                pending.remove(i)
                after = runs[i]['after']
                if after is not None and runs[after]['status'] != 'done':
                    _trunk_failed(runs[i], runs[after], console, i, tag(i))
                    continue
                job = _start(spec, spec_path, runs[i], work_dir, ex, executor, gpus_per_job, env,
                             console, i, tag(i))
                if job is not None:
                    active[i] = (job, time.time())
            if not wait and not any(ready(i) for i in pending):
                break
            _collect_finished(runs, active, console, tag)
            console.draw()
            if active:
                time.sleep(poll_s)
    finally:
        console.close()
    if active or pending:
        print(f'{len(active)} job(s) queued or running'
              + (f', {len(pending)} waiting for their shared trunk' if pending else '')
              + '; rerun the same command to wait for them and write the table',
              file=stream or sys.stdout)
        return None
    return _summary(spec, work_dir, runs, bootstrap, ci_seed, stream)


def _start(spec, spec_path, info, work_dir, ex, executor, gpus_per_job, env, console, i, tag):
    """Skip, re-attach or submit one (variant, seed); returns the job to wait for, or None."""
    if info['error']:  # the config does not build: recorded without a job
        rec = run_one(spec, info['variant'], info['seed'], work_dir)
        info['status'] = 'failed'
        console.finished(i, ok=False)
        console.line(f'{tag}: {_finish_text(rec)}')
        return None
    old = _read_json(osp.join(info['vdir'], RESULT_FILE))
    if old and old.get('hash') == info['digest'] and old.get('status') == 'done':
        info['status'] = 'done'
        console.finished(i, skipped=True)
        console.line(f'{tag}: {_finish_text(dict(old, skipped=True))}')
        return None
    known = _read_json(osp.join(info['vdir'], JOB_FILE)) or {}
    if known.get('hash') == info['digest'] and known.get('executor') == executor:
        attached = _Attached(executor, known['job_id'])
        if not attached.done():
            console.started(i)
            console.line(f'{tag}: job {known["job_id"]} of an earlier call is still queued or '
                         'running; waiting for it')
            return attached
    if old and old.get('hash') != info['digest']:
        _clean_stale(info['vdir'])  # stale checkpoints of another config
    os.makedirs(info['vdir'], exist_ok=True)
    with open(osp.join(info['vdir'], CONSOLE_LOG), 'a') as log:
        log.write(f'==== {time.strftime("%Y-%m-%d %H:%M:%S")} {info["label"]} '
                  f'(hash {info["digest"]}, submitit {executor})\n')
    import submitit
    job = ex.submit(submitit.helpers.CommandFunction(
        _job_command(spec_path, info, work_dir, gpus_per_job, executor, spec.force_precision),
        verbose=False,
        cwd=os.getcwd(), env=env))
    _write_json(osp.join(info['vdir'], JOB_FILE),
                dict(executor=executor, job_id=str(job.job_id), hash=info['digest'],
                     submitted=time.strftime('%Y-%m-%d %H:%M:%S')))
    console.started(i)
    console.line(f'{tag}: submitted as job {job.job_id} '
                 f'(log: {osp.join(info["vdir"], CONSOLE_LOG)})')
    return job


def _trunk_failed(info, trunk, console, i, tag):
    """A variant whose shared trunk failed: recorded as failed without a job."""
    os.makedirs(info['vdir'], exist_ok=True)
    rec = dict(name=info['variant'].name, seed=info['seed'], hash=info['digest'],
               config=info['variant'].config, work_dir=info['vdir'], status='failed',
               error=f"its shared trunk failed (see {osp.join(trunk['vdir'], CONSOLE_LOG)})")
    _write_json(osp.join(info['vdir'], RESULT_FILE), rec)
    info['status'] = 'failed'
    console.finished(i, ok=False)
    console.line(f'{tag}: {_finish_text(rec)}')


def _collect_finished(runs, active, console, tag):
    """Record the jobs that ended: the result their worker wrote, or a failure naming the
    job's state, its error and the last line of its log."""
    for i, (job, t0) in list(active.items()):
        if not job.done():
            continue
        del active[i]
        info = runs[i]
        rec = _read_json(osp.join(info['vdir'], RESULT_FILE)) or {}
        if not (rec.get('hash') == info['digest'] and rec.get('status') in ('done', 'failed')):
            why = _job_state(job)
            if hasattr(job, 'exception'):
                try:
                    exc = job.exception()
                except Exception as e:  # noqa: BLE001 - e.g. its result pickle is missing
                    exc = e
                if exc is not None:
                    why += f': {last_line(str(exc)) or type(exc).__name__}'
            rec = _collect(info, f'{why} (job {job.job_id})')
        info['status'] = rec.get('status') or 'failed'
        console.finished(i, ok=rec.get('status') == 'done')
        msg = f'{tag(i)}: {_finish_text(rec, time.time() - t0)}'
        if rec.get('status') != 'done':
            msg += f' (log: {osp.join(info["vdir"], CONSOLE_LOG)})'
        console.line(msg)


def _summary(spec, work_dir, runs, bootstrap, ci_seed, stream):
    summary = summarize(spec, work_dir)
    failed = []
    runs = [info for info in runs if not is_trunk(info['variant'])]
    if spec.trunk is not None:
        summary['trunk'] = _trunk_summary(spec, work_dir)
    for info in runs:
        rec = _read_json(osp.join(info['vdir'], RESULT_FILE)) or {}
        if rec.get('status') == 'failed':
            failed.append(dict(name=info['variant'].name, seed=info['seed'],
                               error=last_line(rec.get('error'))))
    summary['job'] = dict(runs=[dict(name=r['variant'].name, seed=r['seed']) for r in runs],
                          failed=failed)
    write_summary_with_statistics(summary, work_dir, bootstrap, ci_seed, stream)
    return summary
