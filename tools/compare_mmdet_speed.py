#!/usr/bin/env python
"""Side-by-side CPU speed and memory of our R50-FPN models and MMDetection 3.3's:
python tools/compare_mmdet_speed.py [--models mask_rcnn htc ...] [--runs 5] [--rounds 1]

Every (model, task) cell runs both sides back to back, each in its own fresh subprocess
(ours: ``tools/benchmark.py``; MMDetection: ``../shared/mmdet_ref/mmdet_ref.py`` under the
reference python), alternating which side goes first, so drifting machine load hits both
alike. Both measure the same thing: a seeded random 512x512 uint8 image, score threshold 0
(100 detections, mask path running), ``test_step`` for inference, ``train_step`` (data
preprocessor + loss + backward + SGD step at lr 0) for training, the same warmup, runs and
threads, median time. Peak memory is each subprocess's peak RSS (``wait4`` ru_maxrss),
measured identically for both sides. Prints a Markdown table.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
OURS = dict(
    mask_rcnn=('Mask R-CNN', 'configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'),
    cascade_mask_rcnn=('Cascade Mask R-CNN',
                       'configs/cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py'),
    htc_wo_sem=('HTC without semantic', 'configs/htc/htc-without-semantic_r50_fpn_1x_coco.py'),
    htc=('HTC', 'configs/htc/htc_r50_fpn_1x_coco.py'),
)
DEFAULT_REF_PY = osp.expanduser('~/.cache/cascade_seg/mmdet-ref-venv/bin/python')
DEFAULT_REF_SCRIPT = osp.join(osp.dirname(ROOT), 'shared', 'mmdet_ref', 'mmdet_ref.py')


def run_measured(cmd, log):
    """Run ``cmd``; returns (returncode, peak RSS in MiB of that process tree's largest
    process, wall seconds). ``wait4`` gives this child's own rusage, unlike RUSAGE_CHILDREN."""
    t0 = time.perf_counter()
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - t0


def ours_cmd(model, task, args, out):
    return [sys.executable, osp.join(ROOT, 'tools', 'benchmark.py'), OURS[model][1],
            '--task', task, '--img-size', str(args.size), '--threads', str(args.threads),
            '--warmup', str(args.warmup), '--runs', str(args.runs), '--no-flops', '--json', out]


def mmdet_cmd(model, task, args, out):
    skip = '--skip-train' if task == 'inference' else '--skip-infer'
    return [args.ref_python, args.ref_script, model, skip, '--quiet', '--size', str(args.size),
            '--threads', str(args.threads), '--warmup', str(args.warmup), '--runs',
            str(args.runs), '--json', out]


def read_times(side, path):
    with open(path) as f:
        res = json.load(f)['results'][0]
    if side == 'ours':
        return res['times_s'], res['params'], res.get('num_dets')
    times = res.get('infer_all') or res.get('train_all')
    return times, res['params'], res.get('ndet')


def measure_cell(model, task, args, tmp, first):
    cell = {}
    sides = ['ours', 'mmdet'] if first == 'ours' else ['mmdet', 'ours']
    for side in sides:
        out = osp.join(tmp, f'{side}_{model}_{task}.json')
        log = osp.join(tmp, f'{side}_{model}_{task}.log')
        cmd = (ours_cmd if side == 'ours' else mmdet_cmd)(model, task, args, out)
        load0 = os.getloadavg()[0]
        rc, rss, wall = run_measured(cmd, log)
        if rc != 0:
            with open(log) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f'{side} {model} {task} failed (rc {rc}):\n{tail}')
        times, params, ndet = read_times(side, out)
        cell[side] = dict(times=times, params=params, ndet=ndet, rss_mb=rss, wall_s=wall,
                          load=(load0, os.getloadavg()[0]))
        print(f'  {side:5s} {model} {task}: median {statistics.median(times):.3f}s '
              f'runs={times} dets={ndet} peak RSS {rss:.0f} MiB '
              f'load {load0:.1f}->{os.getloadavg()[0]:.1f}', flush=True)
    return cell


def merge(cells):
    """Pool the per-run times (and max RSS) of several rounds of one side."""
    return dict(times=[t for c in cells for t in c['times']], params=cells[0]['params'],
                ndet=cells[0]['ndet'], rss_mb=max(c['rss_mb'] for c in cells),
                round_medians=[statistics.median(c['times']) for c in cells])


def paired_ratio(cell):
    """Median over rounds of ours/mmdet measured back to back: robust to load drifting
    between rounds, which pooling all runs is not."""
    return statistics.median(o / m for o, m in zip(cell['ours']['round_medians'],
                                                   cell['mmdet']['round_medians']))


def table(results, args, loads):
    lines = [
        f'CPU, {args.threads} threads, {args.size}x{args.size} random image, score_thr 0, '
        f'warmup {args.warmup}, median of {args.runs} runs x {args.rounds} round(s) (ratio: median '
        f'of the per-round ours/mmdet ratios); '
        f'load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f}',
        '',
        '| model | params ours / mmdet | infer s/img ours | mmdet | ratio | dets ours / mmdet '
        '| train s ours | mmdet | ratio | peak RSS train ours / mmdet (MiB) '
        '| peak RSS infer ours / mmdet (MiB) |',
        '|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|',
    ]
    for model, r in results.items():
        row = [OURS[model][0]]
        inf, tr = r.get('inference'), r.get('train')
        any_cell = inf or tr
        row.append(f'{any_cell["ours"]["params"] / 1e6:.1f} M / '
                   f'{any_cell["mmdet"]["params"] / 1e6:.1f} M')
        for cell in (inf, tr):
            if cell is None:
                row += ['-', '-', '-'] + (['-'] if cell is inf else [])
                continue
            o, m = (statistics.median(cell[s]['times']) for s in ('ours', 'mmdet'))
            row += [f'{o:.3f}', f'{m:.3f}', f'**{paired_ratio(cell):.2f}**']
            if cell is inf:
                row.append(f'{cell["ours"]["ndet"]} / {cell["mmdet"]["ndet"]}')
        for cell in (tr, inf):
            row.append('-' if cell is None else
                       f'{cell["ours"]["rss_mb"]:.0f} / {cell["mmdet"]["rss_mb"]:.0f}')
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(OURS), choices=list(OURS))
    p.add_argument('--tasks', nargs='+', default=['inference', 'train'],
                   choices=['inference', 'train'])
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--rounds', type=int, default=1, help='repeat every cell; times are pooled')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--ref-python', default=os.environ.get('MMDET_REF_PY', DEFAULT_REF_PY))
    p.add_argument('--ref-script', default=DEFAULT_REF_SCRIPT)
    p.add_argument('--json', default=None, help='write all raw measurements here')
    p.add_argument('--markdown', default=None, help='write the table here')
    args = p.parse_args(argv)

    results, loads, k = {}, [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            results[model] = {}
            for task in args.tasks:
                rounds = []
                for _ in range(args.rounds):
                    rounds.append(measure_cell(model, task, args, tmp,
                                               'ours' if k % 2 == 0 else 'mmdet'))
                    k += 1
                    loads += [x for s in ('ours', 'mmdet') for x in rounds[-1][s]['load']]
                results[model][task] = {s: merge([r[s] for r in rounds])
                                        for s in ('ours', 'mmdet')}
    text = table(results, args, loads)
    print('\n' + text)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(text + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), loads=loads, results=results), f, indent=1)
    return results


if __name__ == '__main__':
    main()
