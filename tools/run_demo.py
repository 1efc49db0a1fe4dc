"""The main job: generate the embedded synthetic dataset (if missing), run the cascade-strategy
ablation (Mask R-CNN, Cascade Mask R-CNN, HTC without and with semantic) with the small CPU
configs, print the Markdown table, and write table, plot and visualized predictions to a results
folder.

    python tools/run_demo.py [--out results/demo] [--gpu] [--spec SPEC]
"""
import argparse
import glob
import os
import os.path as osp
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))
sys.path.insert(0, ROOT)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--out', default='results/demo', help='results folder')
    p.add_argument('--data', default='data/synthetic', help='where the synthetic dataset lives')
    p.add_argument('--spec', default=None, help='ablation spec (default: the demo spec)')
    p.add_argument('--gpu', action='store_true',
                   help='full-size (R50-FPN) configs on a CUDA device instead of the CPU configs')
    p.add_argument('--num-vis', type=int, default=3, help='validation images to visualize')
    p.add_argument('--vis-score-thr', type=float, default=0.1,
                   help='score threshold of the drawn detections (at most 8 per image)')
    return p.parse_args()


def ensure_dataset(data_dir, gpu):
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    # The GPU demo trains full-size models: more and larger images.
    kwargs = dict(num_train=1000, num_val=200, image_size=(384, 384)) if gpu else {}
    info = make_synthetic_coco(data_dir, **kwargs)
    print(f'synthetic dataset: {data_dir} ({info})' if info else f'synthetic dataset: {data_dir}')


def visualize(summary, data_dir, out_dir, num_vis, device, score_thr=0.1, max_dets=8):
    from cascade_seg.apis import inference_detector, init_detector
    from cascade_seg.visualization import draw_instances
    import cv2

    images = sorted(glob.glob(osp.join(data_dir, 'val', '*.*')))[:num_vis]
    vis_dir = osp.join(out_dir, 'vis')
    os.makedirs(vis_dir, exist_ok=True)
    written = []
    for row in summary['variants']:
        if row.get('status') != 'done':
            continue
        ckpt_dir = osp.join(out_dir, row['name'], f"seed{row['seeds'][0]}")
        ckpts = sorted(glob.glob(osp.join(ckpt_dir, 'epoch_*.pth')),
                       key=lambda p: int(osp.basename(p)[6:-4]))
        if not ckpts:
            continue
        model = init_detector(row['config'], ckpts[-1], device=device)
        classes = model.dataset_meta.get('classes') if model.dataset_meta else None
        for img_path in images:
            pred = inference_detector(model, img_path).pred_instances
            # The demo's short schedule leaves scores low: draw the most confident few.
            pred = pred[pred.scores.argsort(descending=True)[:max_dets]]
            canvas = draw_instances(cv2.imread(img_path), pred, classes, score_thr=score_thr)
            # Upscale the small synthetic images so the drawing is legible.
            canvas = cv2.resize(canvas, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
            path = osp.join(vis_dir, f"{row['name']}_{osp.splitext(osp.basename(img_path))[0]}.png")
            cv2.imwrite(path, canvas)
            written.append(path)
    return written


def main():
    args = parse_args()
    os.chdir(ROOT)
    start = time.time()
    from cascade_seg.ablation import failed_variants, plot, render, run_spec

    ensure_dataset(args.data, args.gpu)
    spec = args.spec or osp.join('configs', 'ablations', 'specs',
                                 'demo_gpu.py' if args.gpu else 'demo.py')
    summary = run_spec(spec, args.out, isolate=True)
    table = render(summary, 'md')
    with open(osp.join(args.out, 'table.md'), 'w') as f:
        f.write(table)
    png = plot(summary, osp.join(args.out, 'ablation.png'))
    vis = visualize(summary, args.data, args.out, args.num_vis, 'cuda' if args.gpu else 'cpu',
                    args.vis_score_thr)
    wall = time.time() - start
    print()
    print(table)
    print(f'table: {osp.join(args.out, "table.md")}  plot: {png}  '
          f'visualizations: {len(vis)} in {osp.join(args.out, "vis")}')
    print(f'wall time: {wall / 60:.1f} min')
    failed = failed_variants(summary)
    if failed:
        print(f'failed variants: {", ".join(failed)}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
