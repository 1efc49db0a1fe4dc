"""The main job: generate the embedded synthetic dataset (if missing), run the cascade-strategy
ablation (Mask R-CNN, Cascade Mask R-CNN, HTC without and with semantic) with the small CPU
configs, print the table with its uncertainties, and write table, plot and the trained models'
predictions on a few validation images to a results folder.

    python tools/run_demo.py [--out results/demo] [--gpu] [--spec SPEC]

The console shows one line per model start and finish and a progress bar over the job; each
model's full logs are in <out>/<model>/seed<k>/.
"""
import argparse
import contextlib
import glob
import io
import os
import os.path as osp
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--out', default='results/demo', help='results folder')
    p.add_argument('--data', default='data/synthetic', help='where the synthetic dataset lives')
    p.add_argument('--spec', default=None, help='ablation spec (default: the demo spec)')
    p.add_argument('--gpu', action='store_true',
                   help='full-size (R50-FPN) configs on a CUDA device instead of the CPU configs')
    p.add_argument('--jobs', type=int, default=2,
                   help='runs at a time, the cores shared between them (default 2: two 1-thread '
                        'runs use 2 cores better than one 2-thread run on these small models)')
    p.add_argument('--bootstrap', type=int, default=1000,
                   help='bootstrap replicates of the intervals (default 1000)')
    p.add_argument('--num-vis', type=int, default=3, help='validation images to visualize')
    p.add_argument('--vis-score-thr', type=float, default=0.3,
                   help='draw the detections scoring at least this (default 0.3)')
    p.add_argument('--vis-top-k', type=int, default=None,
                   help='instead, draw the K most confident detections whatever their score')
    p.add_argument('--vis-scale', type=float, default=3.0,
                   help='enlarge the small synthetic images by this before drawing')
    return p.parse_args(argv)


def ensure_dataset(data_dir, gpu):
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    # The GPU demo trains full-size models: more and larger images.
    kwargs = dict(num_train=1000, num_val=200, image_size=(384, 384)) if gpu else {}
    info = make_synthetic_coco(data_dir, **kwargs)
    skipped = isinstance(info, dict) and info.get('skipped')
    print(f'synthetic dataset: {data_dir}' + (' (reused)' if skipped else ' (generated)'))


def visualize_images(predict, image_paths, out_dir, prefix, class_names=None, score_thr=0.3,
                     top_k=None, scale=3.0):
    """Draw ``predict(image_path)`` (an InstanceData: bboxes, labels, scores, masks) on each
    image; returns ``[(png path, detections drawn)]``."""
    import cv2

    from cascade_seg.visualization import draw_prediction
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for img_path in image_paths:
        canvas, n = draw_prediction(cv2.imread(img_path), predict(img_path), class_names,
                                    score_thr=score_thr, top_k=top_k, scale=scale)
        path = osp.join(out_dir, f'{prefix}_{osp.splitext(osp.basename(img_path))[0]}.png')
        cv2.imwrite(path, canvas)
        written.append((path, n))
    return written


def _last_checkpoint(run_dir):
    try:
        with open(osp.join(run_dir, 'last_checkpoint')) as f:
            path = f.read().strip()
        if osp.isfile(path):
            return path
    except OSError:
        pass
    ckpts = glob.glob(osp.join(run_dir, 'epoch_*.pth')) + glob.glob(osp.join(run_dir, 'iter_*.pth'))
    return max(ckpts, key=osp.getmtime) if ckpts else None


def visualize(summary, data_dir, out_dir, num_vis, device, score_thr=0.3, top_k=None, scale=3.0):
    """Each trained variant's predictions on the first ``num_vis`` validation images, with
    the model built from the variant's resolved config (spec overrides included)."""
    from cascade_seg.ablation.spec import build_variant_config, load_spec
    from cascade_seg.apis import inference_detector, init_detector

    spec = load_spec(summary['spec'])
    variants = {v.name: v for v in spec.variants}
    images = sorted(glob.glob(osp.join(data_dir, 'val', '*.*')))[:num_vis]
    vis_dir = osp.join(out_dir, 'vis')
    written = []
    rule = f'top {top_k} by score' if top_k is not None else f'score >= {score_thr:g}'
    for row in summary['variants']:
        if row.get('status') != 'done' or row['name'] not in variants:
            continue
        ckpt = _last_checkpoint(osp.join(out_dir, row['name'], f"seed{row['seeds'][0]}"))
        if ckpt is None:
            continue
        cfg = build_variant_config(spec, variants[row['name']])
        with contextlib.redirect_stdout(io.StringIO()):  # mmengine's 'Loads checkpoint by ...'
            model = init_detector(cfg, ckpt, device=device, strict=True, fuse=True)
        classes = (model.dataset_meta or {}).get('classes')
        out = visualize_images(lambda p: inference_detector(model, p).pred_instances, images,
                               vis_dir, row['name'], classes, score_thr, top_k, scale)
        drawn = sum(n for _, n in out)
        hint = ' (--vis-top-k K draws the K most confident)' if not drawn and top_k is None else ''
        print(f"visualized {row['name']}: {drawn} detections ({rule}) on {len(out)} validation "
              f'images{hint}')
        written += [p for p, _ in out]
    return written


def main(argv=None):
    args = parse_args(argv)
    os.chdir(ROOT)
    start = time.time()
    from cascade_seg.ablation import failed_runs, plot, render, run_spec

    ensure_dataset(args.data, args.gpu)
    spec = args.spec or osp.join('configs', 'ablations', 'specs',
                                 'demo_gpu.py' if args.gpu else 'demo.py')
    summary = run_spec(spec, args.out, jobs=args.jobs, isolate=True, bootstrap=args.bootstrap)
    table = render(summary, 'md')
    with open(osp.join(args.out, 'table.md'), 'w') as f:
        f.write(table)
    png = plot(summary, osp.join(args.out, 'ablation.png'))
    vis = visualize(summary, args.data, args.out, args.num_vis, 'cuda' if args.gpu else 'cpu',
                    args.vis_score_thr, args.vis_top_k, args.vis_scale)
    wall = time.time() - start
    print()
    print(table)
    print(f'table: {osp.join(args.out, "table.md")}  plot: {png}  '
          f'visualizations: {len(vis)} in {osp.join(args.out, "vis")}')
    print(f'wall time: {wall / 60:.1f} min')
    failed = failed_runs(summary)
    for f in failed:
        print(f"FAILED: {f['name']} seed {f['seed']}: {f['error']}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
