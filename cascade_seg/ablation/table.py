"""Render ablation summaries (results.json) as paper-style tables and plots."""
import json

DEFAULT_COLUMNS = ('bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                   'train.s_per_iter', 'inference.s_per_img', 'train.peak_mem_mb', 'params')

# How a column is shown: AP as percent with one decimal, times with 3 decimals, etc.
HEADERS = {
    'bbox_mAP': 'box AP', 'bbox_mAP_50': 'box AP50', 'bbox_mAP_75': 'box AP75',
    'bbox_mAP_s': 'box APs', 'bbox_mAP_m': 'box APm', 'bbox_mAP_l': 'box APl',
    'segm_mAP': 'mask AP', 'segm_mAP_50': 'mask AP50', 'segm_mAP_75': 'mask AP75',
    'segm_mAP_s': 'mask APs', 'segm_mAP_m': 'mask APm', 'segm_mAP_l': 'mask APl',
    'train.s_per_iter': 'train s/iter', 'inference.s_per_img': 'infer s/img',
    'inference.img_per_s': 'img/s', 'train.peak_mem_mb': 'train mem MB',
    'inference.peak_mem_mb': 'infer mem MB', 'params': 'params (M)',
    'inference.gflops': 'GFLOPs', 'train_time_s': 'train s/iter', 'peak_rss_mb': 'peak RSS MB',
    'wall_time_s': 'wall s',
}


def load_results(paths):
    """Merge one or more results.json files; later files append their variants."""
    merged = None
    for p in paths:
        with open(p) as f:
            res = json.load(f)
        if merged is None:
            merged = res
        else:
            merged['variants'] = merged['variants'] + res['variants']
    return merged


def _fmt(key, value, signed=False):
    """AP as percent with one decimal, params in millions, memory/FLOPs whole, times 3 places;
    ``signed`` for Δ cells."""
    if value is None:
        return '-'
    sign = '+' if signed else ''
    if 'mAP' in key:
        return f'{100 * value:{sign}.1f}'
    if key == 'params':
        return f'{value / 1e6:{sign}.1f}'
    if 'mem' in key or 'gflops' in key or 'rss' in key:
        return f'{value:{sign}.0f}'
    return f'{value:{sign}.3f}'


def table_rows(results, columns=None, baseline=None):
    """Header and string cells: one row per variant, Δ vs the baseline in parentheses."""
    columns = list(columns or results.get('report', {}).get('columns') or DEFAULT_COLUMNS)
    baseline = baseline or results.get('report', {}).get('baseline')
    rows = {r['name']: r for r in results['variants']}
    if baseline is not None and baseline not in rows:
        raise ValueError(f'baseline {baseline!r} is not a variant '
                         f'(variants: {", ".join(rows)})')
    base = rows.get(baseline) if baseline else None
    header = ['variant'] + [HEADERS.get(c, c) for c in columns]
    body = []
    for r in results['variants']:
        if r.get('status') != 'done':
            body.append([r['name']] + [f"FAILED: {r.get('error', '')}"] + [''] * (len(columns) - 1))
            continue
        cells = [r['name'] + (' (baseline)' if r is base else '')]
        multi = len(r.get('seeds', [])) > 1
        for c in columns:
            v = r['mean'].get(c)
            cell = _fmt(c, v)
            if multi and v is not None:
                cell += f" ± {_fmt(c, r['std'][c]).lstrip('+')}"
            if (base is not None and r is not base and v is not None
                    and base.get('status') == 'done' and base['mean'].get(c) is not None):
                cell += f' ({_fmt(c, v - base["mean"][c], signed=True)})'
            cells.append(cell)
        body.append(cells)
    return header, body


def render(results, fmt='md', columns=None, baseline=None):
    header, body = table_rows(results, columns, baseline)
    if fmt == 'md':
        lines = ['| ' + ' | '.join(header) + ' |',
                 '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
        lines += ['| ' + ' | '.join(row) + ' |' for row in body]
        return '\n'.join(lines) + '\n'
    if fmt == 'csv':
        import csv
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator='\n')
        writer.writerow(header)
        writer.writerows(body)
        return buf.getvalue()
    if fmt == 'latex':
        esc = lambda s: s.replace('_', r'\_').replace('%', r'\%').replace('±', r'$\pm$')  # noqa: E731
        lines = [r'\begin{tabular}{l' + 'r' * (len(header) - 1) + '}', r'\toprule',
                 ' & '.join(esc(h) for h in header) + r' \\', r'\midrule']
        lines += [' & '.join(esc(c) for c in row) + r' \\' for row in body]
        lines += [r'\bottomrule', r'\end{tabular}']
        return '\n'.join(lines) + '\n'
    raise ValueError(f'unknown table format {fmt!r} (md, csv, latex)')


def plot(results, out_png, accuracy='segm_mAP', speed='inference.s_per_img'):
    """Two panels: speed vs accuracy, and AP at IoU 0.50..0.95 per variant."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    done = [r for r in results['variants'] if r.get('status') == 'done']
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in done:
        x, y = r['mean'].get(speed), r['mean'].get(accuracy)
        if x is not None and y is not None:
            ax1.scatter(x, 100 * y)
            ax1.annotate(r['name'], (x, 100 * y), textcoords='offset points', xytext=(4, 4))
    ax1.set_xlabel(HEADERS.get(speed, speed))
    ax1.set_ylabel(HEADERS.get(accuracy, accuracy))
    ax1.set_title('speed vs accuracy')
    ax1.grid(alpha=0.3)
    ious = [0.5 + 0.05 * i for i in range(10)]
    kind = accuracy.split('_')[0]
    for r in done:
        curve = r.get('per_iou', {}).get(f'coco/{kind}_precision_per_iou') or \
            r.get('per_iou', {}).get(f'{kind}_precision_per_iou')
        if curve:
            ax2.plot(ious, [100 * max(v, 0) for v in curve], marker='o', label=r['name'])
    ax2.set_xlabel('IoU threshold')
    ax2.set_ylabel(f'{kind} AP')
    ax2.set_title('AP per IoU threshold')
    ax2.grid(alpha=0.3)
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
