"""Render ablation results: python tools/make_table.py RESULTS... [--format md|csv|latex]
[--columns ...] [--delta ...] [--baseline NAME] [--bootstrap B] [--out FILE] [--plot FILE.png]

The intervals are recomputed from the per-image evaluation data stored next to each run
(no model runs): another baseline, more replicates or several results.json files together
(runs evaluated on the same validation images) are fine.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from cascade_seg.ablation import attach_statistics, load_results, plot, render  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('results', nargs='+', help='results.json files written by tools/ablate.py')
    p.add_argument('--format', choices=['md', 'csv', 'latex'], default='md')
    p.add_argument('--columns', nargs='+', help='metric keys, e.g. segm_mAP train.s_per_iter')
    p.add_argument('--delta', nargs='+',
                   help='metrics with a "Δ [95%% CI]" column (default: the spec\'s, else box '
                        'and mask AP)')
    p.add_argument('--baseline', help='variant the Δ columns compare against')
    p.add_argument('--bootstrap', type=int, default=None,
                   help='bootstrap replicates (default: as stored, else 1000)')
    p.add_argument('--ci-seed', type=int, default=None, help='RNG seed of the bootstrap')
    p.add_argument('--out', help='write the table here as well as to stdout')
    p.add_argument('--plot', help='PNG: speed vs accuracy and AP per IoU threshold, error bars')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results = load_results(args.results)
    attach_statistics(results, baseline=args.baseline, num_replicates=args.bootstrap,
                      seed=args.ci_seed)
    text = render(results, args.format, args.columns, args.baseline, args.delta)
    print(text, end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    if args.plot:
        plot(results, args.plot)
        print(f'plot: {args.plot}')
    return results


if __name__ == '__main__':
    main()
