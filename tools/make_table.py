"""Render ablation results: python tools/make_table.py RESULTS... [--format md|csv|latex]
[--columns ...] [--baseline NAME] [--out FILE] [--plot FILE.png]"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from cascade_seg.ablation import load_results, plot, render  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('results', nargs='+', help='results.json files written by tools/ablate.py')
    p.add_argument('--format', choices=['md', 'csv', 'latex'], default='md')
    p.add_argument('--columns', nargs='+', help='metric keys, e.g. segm_mAP train.s_per_iter')
    p.add_argument('--baseline', help='variant the Δ columns compare against')
    p.add_argument('--out', help='write the table here as well as to stdout')
    p.add_argument('--plot', help='PNG: speed vs accuracy and AP per IoU threshold')
    args = p.parse_args()
    results = load_results(args.results)
    text = render(results, args.format, args.columns, args.baseline)
    print(text, end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    if args.plot:
        plot(results, args.plot)
        print(f'plot: {args.plot}')


if __name__ == '__main__':
    main()
