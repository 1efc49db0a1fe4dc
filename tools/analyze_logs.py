#!/usr/bin/env python
"""Loss / mAP curves and training speed from mmengine's vis_data/scalars.json:
python tools/analyze_logs.py plot_curve LOG [LOG ...] --keys loss bbox_mAP [--out curves.png]
python tools/analyze_logs.py cal_train_time LOG [LOG ...] [--include-outliers]
LOG is a scalars.json, a <timestamp>/ folder or a work dir (its newest run)."""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.analysis import cal_train_time, load_scalars, plot_curve  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Analyze training logs (vis_data/scalars.json)')
    sub = p.add_subparsers(dest='task', required=True)
    plt = sub.add_parser('plot_curve', help='plot loss / metric curves of one or more runs')
    plt.add_argument('json_logs', nargs='+', help='scalars.json files (or run folders)')
    plt.add_argument('--keys', nargs='+', default=['bbox_mAP'],
                     help='what to plot: training keys (loss, s0.loss_mask, lr, ...) per '
                          'iteration, metrics (bbox_mAP or coco/bbox_mAP, ...) per epoch')
    plt.add_argument('--start-epoch', type=int, default=1, help='first epoch of metric curves')
    plt.add_argument('--eval-interval', type=int, default=1,
                     help='(MMDetection\'s; metrics are read at the epochs they were logged)')
    plt.add_argument('--title', help='figure title')
    plt.add_argument('--legend', nargs='+', default=None,
                     help='one name per (log, key), in that order')
    plt.add_argument('--backend', default=None, help='matplotlib backend')
    plt.add_argument('--style', default=None, help='matplotlib style (e.g. ggplot)')
    plt.add_argument('--out', default=None, help='save the figure here instead of showing it')
    tim = sub.add_parser('cal_train_time', help='seconds per training iteration')
    tim.add_argument('json_logs', nargs='+', help='scalars.json files (or run folders)')
    tim.add_argument('--include-outliers', action='store_true',
                     help='count the first logged iteration of every epoch too')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    runs = [load_scalars(path) for path in args.json_logs]
    if args.task == 'plot_curve':
        for run in runs:
            print(f'plot curve of {run["path"]}, keys: {", ".join(args.keys)}')
        plot_curve(runs, args.keys, legend=args.legend, title=args.title, out=args.out,
                   backend=args.backend, style=args.style, start_epoch=args.start_epoch)
        if args.out:
            print(f'save curve to: {args.out}')
        return runs
    times = cal_train_time(runs, include_outliers=args.include_outliers)
    for t in times:
        print(f'-----Analyze train time of {t["path"]}-----')
        print(f'slowest epoch {t["slowest_epoch"]}, average time is {t["slowest_s"]:.4f}')
        print(f'fastest epoch {t["fastest_epoch"]}, average time is {t["fastest_s"]:.4f}')
        print(f'time std over epochs is {t["std_over_epochs_s"]:.4f}')
        print(f'average iter time: {t["mean_s_per_iter"]:.4f} s/iter\n')
    return times


if __name__ == '__main__':
    main()
