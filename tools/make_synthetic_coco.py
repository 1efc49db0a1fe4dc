"""Generate the embedded synthetic COCO dataset and print its statistics.

    python tools/make_synthetic_coco.py --out data/synthetic --num-train 300 --num-val 60 \
        --size 128 --seed 0 [--keypoints]
"""
import argparse
import sys

from cascade_seg.datasets.synthetic import DIFFICULTY, make_synthetic_coco, make_synthetic_keypoints


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/synthetic', help='output directory')
    p.add_argument('--num-train', type=int, default=300)
    p.add_argument('--num-val', type=int, default=60)
    p.add_argument('--size', type=int, nargs='+', default=[128],
                   help='image size: one value (square) or H W')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--difficulty', default='medium', choices=sorted(DIFFICULTY))
    p.add_argument('--p-empty', type=float, default=0.1, help='fraction of images with no objects')
    p.add_argument('--keypoints', action='store_true',
                   help='also write annotations/keypoints_{train,val}.json (extreme points)')
    p.add_argument('--force', action='store_true',
                   help='regenerate even if an identical set exists')
    return p.parse_args(argv)


def format_stats(name, s):
    lines = [f'[{name}] images {s["images"]} (empty {s["empty_images"]}), '
             f'instances {s["instances"]}, mean area {s["mean_area"]:.1f} px',
             '  per class: ' + ', '.join(f'{k} {v}' for k, v in s['instances_per_class'].items()),
             f'  masks: polygon {s["polygon_masks"]}, RLE {s["rle_masks"]}; '
             f'mean IoU(mask, filled box) {s["mean_mask_box_iou"]:.3f}']
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if len(args.size) not in (1, 2):
        sys.exit('--size takes one value or two (H W)')
    size = tuple(args.size) * (2 // len(args.size))
    res = make_synthetic_coco(args.out, num_train=args.num_train, num_val=args.num_val,
                              image_size=size, seed=args.seed, difficulty=args.difficulty,
                              p_empty=args.p_empty, force=args.force)
    print(('reused existing dataset in ' if res['skipped'] else 'wrote dataset to ') + args.out)
    for split, stats in res['stats'].items():
        print(format_stats(split, stats))
    if args.keypoints:
        paths = make_synthetic_keypoints(args.out, force=args.force)
        print('keypoints: ' + ', '.join(paths.values()))
    return res


if __name__ == '__main__':
    main()
