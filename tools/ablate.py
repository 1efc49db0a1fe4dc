"""Run an ablation spec: python tools/ablate.py SPEC --work-dir DIR [--jobs N] [--seeds ...]

Each (variant, seed) runs in its own process; the console shows one line when a run starts,
one when it ends (time, box / mask AP or the error's last line) and a progress bar with an
ETA over the whole job. Each run's full output (environment, config, training log) is in
DIR/<variant>/seed<k>/ (console.log and the Runner's timestamped log). At the end: the table
with bootstrap intervals (see docs/ablations.md) and DIR/results.json.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from cascade_seg.ablation import failed_runs, render, run_spec  # noqa: E402


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
    p.add_argument('--no-summary', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.launcher != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
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
