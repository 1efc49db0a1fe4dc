"""Run an ablation spec: python tools/ablate.py SPEC --work-dir DIR [--jobs N] [--launcher ...]"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from cascade_seg.ablation import failed_variants, render, run_spec  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('spec', help='ablation spec (an mmengine python config)')
    p.add_argument('--work-dir', required=True, help='one sub-folder per variant and seed')
    p.add_argument('--jobs', type=int, default=1, help='variants run at once (subprocesses)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--isolate', action='store_true',
                   help='run each variant in its own process (per-variant peak memory)')
    p.add_argument('--only', nargs='+', help='run only these variants')
    p.add_argument('--seeds', type=int, nargs='+', help='override the spec\'s seeds')
    p.add_argument('--no-summary', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    if args.launcher != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    summary = run_spec(args.spec, args.work_dir, jobs=args.jobs, launcher=args.launcher,
                       only=args.only, seeds=args.seeds, write_summary=not args.no_summary,
                       isolate=args.isolate)
    if not args.no_summary:
        print(render(summary, 'md'))
        print(f'results: {os.path.join(args.work_dir, "results.json")}')
    failed = failed_variants(summary)
    if failed:
        print(f'failed variants: {", ".join(failed)}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
