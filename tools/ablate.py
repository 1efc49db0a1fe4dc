"""Run an ablation spec: python tools/ablate.py SPEC --work-dir DIR [--jobs N] [--seeds ...]

Each (variant, seed) runs in its own process; the console shows one line when a run starts,
one when it ends (time, box / mask AP or the error's last line) and a progress bar with an
ETA over the whole job. Each run's full output (environment, config, training log) is in
DIR/<variant>/seed<k>/ (console.log and the Runner's timestamped log). At the end: the table
with bootstrap intervals (see docs/ablations.md) and DIR/results.json.

On a cluster, --executor slurm submits every (variant, seed) as its own SLURM job (submitit):
python tools/ablate.py SPEC --work-dir DIR --executor slurm --partition P --gpus-per-job N
Same folders and table; rerunning the command waits for the jobs still queued or running and
resubmits the rest. --executor local runs the jobs as subprocesses on this machine.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from cascade_seg.ablation import failed_runs, render, run_spec  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('spec', help='ablation spec (an mmengine python config)')
    p.add_argument('--work-dir', required=True, help='one sub-folder per variant and seed')
    p.add_argument('--jobs', type=int, default=1, help='runs at once (each in its own process)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--in-process', action='store_true',
                   help='run the variants in this process, with the Runner\'s logs on the '
                        'console (debugging; distributed launches always do)')
    p.add_argument('--isolate', action='store_true',
                   help='(default) each run in its own process; kept for compatibility')
    p.add_argument('--only', nargs='+', help='run only these variants')
    p.add_argument('--seeds', type=int, nargs='+', help='override the spec\'s seeds')
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help="every variant's precision (training, test, speed), over the spec's "
                        '`precision` and its variants\' (default: theirs, else fp32)')
    p.add_argument('--bootstrap', type=int, default=1000,
                   help='bootstrap replicates for the intervals (default 1000)')
    p.add_argument('--ci-seed', type=int, default=0, help='RNG seed of the bootstrap')
    p.add_argument('--executor', choices=['slurm', 'local'], default=None,
                   help='submit every (variant, seed) as its own job with submitit: on SLURM, '
                        'or as subprocess jobs on this machine (local)')
    p.add_argument('--partition', help='--executor slurm: the SLURM partition')
    p.add_argument('--gpus-per-job', type=int, default=1,
                   help='--executor slurm: GPUs (and processes) per job; >1 trains each run '
                        'distributed (default 1)')
    p.add_argument('--cpus-per-job', type=int, default=None,
                   help='--executor slurm: CPUs per task (default 4)')
    p.add_argument('--mem-gb', type=int, default=None, help='--executor slurm: memory per job')
    p.add_argument('--timeout-min', type=int, default=24 * 60,
                   help='--executor: time limit of a job in minutes (default 1440)')
    p.add_argument('--slurm-args', nargs='+', action=DictAction, default=None,
                   help='--executor slurm: more sbatch options, e.g. account=abc qos=high')
    p.add_argument('--no-wait', action='store_true',
                   help='--executor slurm: submit and return; run the command again later to '
                        'wait for the jobs and write the table')
    p.add_argument('--no-summary', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--console-log', help=argparse.SUPPRESS)  # a job's output file
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return p.parse_args(argv)


def _redirect_output(path):
    """A submitit job's output (fds 1 and 2, subprocesses included) appended to ``path``
    (rank 0's; other ranks of a multi-GPU job beside it)."""
    rank = os.environ.get('SLURM_PROCID', os.environ.get('RANK', '0'))
    if rank != '0':
        path = f'{os.path.splitext(path)[0]}.rank{rank}.log'
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv=None):
    args = parse_args(argv)
    if args.console_log:
        _redirect_output(args.console_log)
    if args.launcher != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.executor:
        from cascade_seg.ablation.cluster import run_spec_submitit
        if args.no_wait and args.executor != 'slurm':
            raise SystemExit('--no-wait needs --executor slurm (local jobs end with this '
                             'process)')
        summary = run_spec_submitit(
            args.spec, args.work_dir, executor=args.executor, partition=args.partition,
            gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
            timeout_min=args.timeout_min, mem_gb=args.mem_gb, slurm_args=args.slurm_args,
            only=args.only, seeds=args.seeds, wait=not args.no_wait,
            max_running=args.jobs if args.executor == 'local' else None,
            bootstrap=args.bootstrap, ci_seed=args.ci_seed, precision=args.precision)
        if summary is None:
            return None
    else:
        summary = run_spec(args.spec, args.work_dir, jobs=args.jobs, launcher=args.launcher,
                           only=args.only, seeds=args.seeds, write_summary=not args.no_summary,
                           isolate=not args.in_process, bootstrap=args.bootstrap,
                           ci_seed=args.ci_seed, precision=args.precision)
    if not args.no_summary:
        print()
        print(render(summary, 'md'))
        print(f'results: {os.path.join(args.work_dir, "results.json")}')
    failed = failed_runs(summary)
    for f in failed:
        print(f"FAILED: {f['name']} seed {f['seed']}: {f['error']}", file=sys.stderr)
    if failed:
        sys.exit(1)
    return summary


if __name__ == '__main__':
    main()
