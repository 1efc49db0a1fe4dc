"""Render ablation summaries (results.json) as paper-style tables and plots, with the
uncertainty of every row and a 95% interval for every difference to the baseline.

Numbers come from :func:`table_numbers` (one record per variant and metric); the Markdown /
LaTeX cells, the CSV columns and the plot's error bars are views of it. The intervals are
recomputed from the per-image evaluation data each run stored (:func:`attach_statistics`,
:mod:`cascade_seg.ablation.stats`), so a table can use another baseline or more bootstrap
replicates without running a model.
"""
import json
import os.path as osp

DEFAULT_COLUMNS = ('bbox_mAP', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75',
                   'train.s_per_iter', 'inference.s_per_img', 'train.peak_mem_mb', 'params')
DEFAULT_REPLICATES = 1000
DEFAULT_CI_SEED = 0

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
    """Merge one or more results.json files; later files append their variants. Each
    variant remembers the folder its files are relative to."""
    merged = None
    for p in paths:
        with open(p) as f:
            res = json.load(f)
        root = osp.dirname(osp.abspath(p))
        for row in res['variants']:
            row['_root'] = root
        if merged is None:
            merged = res
        else:
            merged['variants'] = merged['variants'] + res['variants']
            merged.pop('statistics', None)  # rows of several jobs: recompute together
    return merged


# ------------------------------------------------------------------------------ statistics
def _eval_sources(results, root=None):
    runs, missing = {}, []
    for row in results['variants']:
        if row.get('status') != 'done':
            continue
        base = row.get('_root') or root or results.get('_root') or '.'
        sources = []
        for run in row.get('runs', []):
            if run.get('status') != 'done' or not run.get('eval'):
                continue
            src = dict(seed=run.get('seed'))
            for iou_type, rel in run['eval'].items():
                path = rel if osp.isabs(rel) else osp.join(base, rel)
                src[iou_type] = path
                if not osp.exists(path):
                    missing.append(path)
            sources.append(src)
        if sources:
            runs[row['name']] = sources
    return runs, missing


def default_baseline(results):
    base = (results.get('report') or {}).get('baseline')
    if base:
        return base
    done = [r['name'] for r in results['variants'] if r.get('status') == 'done']
    return done[0] if done else None


def attach_statistics(results, root=None, baseline=None, num_replicates=None, seed=None):
    """Compute ``results['statistics']`` (bootstrap over validation images, see
    :func:`cascade_seg.ablation.stats.compare_runs`) from the runs' stored per-image data.

    Paths in ``results`` are relative to ``root`` (or to each results.json's folder). When
    the data are not reachable, statistics already stored with the same baseline, B and
    seed are kept. Returns ``results``.
    """
    from .stats import compare_runs
    baseline = baseline or default_baseline(results)
    old = results.get('statistics') or {}
    old_settings = old.get('settings') or {}
    num_replicates = num_replicates or old_settings.get('replicates') or DEFAULT_REPLICATES
    seed = seed if seed is not None else old_settings.get('seed', DEFAULT_CI_SEED)
    runs, missing = _eval_sources(results, root)
    if missing and old and (old_settings.get('baseline'), old_settings.get('replicates'),
                            old_settings.get('seed')) == (baseline, num_replicates, seed):
        return results
    runs = {name: [{k: v for k, v in src.items() if k == 'seed' or osp.exists(v)}
                   for src in sources] for name, sources in runs.items()}
    results['statistics'] = compare_runs(runs, baseline=baseline, num_replicates=num_replicates,
                                         seed=seed)
    return results


# ------------------------------------------------------------------------------ numbers
def _is_ap(key):
    return 'mAP' in key


def _scale(key, value):
    """Display scale: AP in %, params in millions, everything else as stored."""
    if value is None:
        return None
    if _is_ap(key):
        return 100 * value
    if key == 'params':
        return value / 1e6
    return value


def default_delta(results, columns):
    """The metrics that get a Δ [95% CI] column: the spec's ``report['delta']``, else box and
    mask AP when shown, else the first AP column."""
    delta = (results.get('report') or {}).get('delta')
    if delta:
        return list(delta)
    chosen = [c for c in ('bbox_mAP', 'segm_mAP') if c in columns]
    return chosen or [c for c in columns if _is_ap(c)][:1]


def table_numbers(results, columns=None, baseline=None):
    """One record per (variant, metric), in display units (AP in %, params in M).

    Keys: ``variant, metric, status, mean, std (over seeds, None with one seed), n (seeds),
    se (bootstrap SE over validation images, None without per-image data), unc (what ±
    shows: std with >= 2 seeds, else se), delta, ci_low, ci_high, significant``.
    """
    columns = list(columns or (results.get('report') or {}).get('columns') or DEFAULT_COLUMNS)
    baseline = baseline or default_baseline(results)
    rows = {r['name']: r for r in results['variants']}
    if baseline is not None and baseline not in rows:
        raise ValueError(f'baseline {baseline!r} is not a variant '
                         f'(variants: {", ".join(rows)})')
    stats = results.get('statistics') or {}
    if (stats.get('settings') or {}).get('baseline') != baseline:
        stats = dict(stats, variants={k: {m: {x: y for x, y in s.items() if x in
                                              ('values', 'n', 'mean', 'std', 'se')}
                                          for m, s in v.items()}
                                      for k, v in (stats.get('variants') or {}).items()})
    base = rows.get(baseline)
    out = []
    for r in results['variants']:
        for c in columns:
            rec = dict(variant=r['name'], metric=c, status=r.get('status'), mean=None,
                       std=None, n=len(r.get('seeds', [])), se=None, unc=None, delta=None,
                       ci_low=None, ci_high=None, significant=None,
                       baseline=r['name'] == baseline)
            if r.get('status') == 'done' and r['mean'].get(c) is not None:
                st = (stats.get('variants') or {}).get(r['name'], {}).get(c)
                rec['mean'] = _scale(c, r['mean'][c])
                if rec['n'] > 1:
                    rec['std'] = _scale(c, r['std'].get(c))
                if st:
                    rec['se'] = _scale(c, st.get('se'))
                    if st.get('delta') is not None:
                        rec.update(delta=_scale(c, st['delta']),
                                   ci_low=_scale(c, st['ci_low']),
                                   ci_high=_scale(c, st['ci_high']),
                                   significant=st['significant'])
                rec['unc'] = rec['std'] if rec['n'] > 1 else rec['se']
                if (rec['delta'] is None and base is not None and r is not base
                        and base.get('status') == 'done' and base['mean'].get(c) is not None):
                    rec['delta'] = rec['mean'] - _scale(c, base['mean'][c])
            out.append(rec)
    return out


# ------------------------------------------------------------------------------ cells
def _fmt(key, value, signed=False):
    """Display units: AP one decimal, params (M) one decimal, memory/FLOPs whole numbers,
    times three decimals; ``signed`` for Δ cells."""
    if value is None:
        return '-'
    sign = '+' if signed else ''
    if _is_ap(key) or key == 'params':
        return f'{value:{sign}.1f}'
    if 'mem' in key or 'gflops' in key or 'rss' in key:
        return f'{value:{sign}.0f}'
    return f'{value:{sign}.3f}'


def _value_cell(rec):
    cell = _fmt(rec['metric'], rec['mean'])
    if rec['unc'] is not None:
        cell += f" ± {_fmt(rec['metric'], rec['unc'])}"
    return cell


def _delta_cell(rec):
    if rec['baseline']:
        return '-'
    if rec['delta'] is None:
        return ''
    cell = _fmt(rec['metric'], rec['delta'], signed=True)
    if rec['ci_low'] is None:
        return cell + ' [no CI]'
    cell += (f" [{_fmt(rec['metric'], rec['ci_low'], signed=True)}, "
             f"{_fmt(rec['metric'], rec['ci_high'], signed=True)}]")
    return cell + ('*' if rec['significant'] else '')


def table_rows(results, columns=None, baseline=None, delta=None):
    """Header and string cells: ``value ± uncertainty`` per metric, then one
    ``Δ [95% CI]`` column per ``delta`` metric (``*``: the interval excludes 0)."""
    columns = list(columns or (results.get('report') or {}).get('columns') or DEFAULT_COLUMNS)
    baseline = baseline or default_baseline(results)
    delta = list(delta) if delta is not None else default_delta(results, columns)
    numbers = table_numbers(results, list(dict.fromkeys(columns + delta)), baseline)
    by_key = {(n['variant'], n['metric']): n for n in numbers}
    level = int(round(100 * ((results.get('statistics') or {}).get('settings') or {})
                      .get('level', 0.95)))
    paper = paper_columns(results)
    header = (['variant'] + [HEADERS.get(c, c) for c in columns]
              + [f'Δ {HEADERS.get(c, c)} [{level}% CI]' for c in delta if baseline]
              + [f'paper {HEADERS.get(c, c)}' for c in paper])
    width = len(header) - 1
    body = []
    for r in results['variants']:
        if r.get('status') == 'failed':
            body.append([r['name'], f"FAILED: {r.get('error', '')}"] + [''] * (width - 1))
            continue
        if r.get('status') != 'done':
            body.append([r['name'], 'not run'] + [''] * (width - 1))
            continue
        marked = r['name'] == baseline and 'baseline' not in r['name'].lower()
        cells = [r['name'] + (' (baseline)' if marked else '')]
        cells += [_value_cell(by_key[(r['name'], c)]) for c in columns]
        if baseline:
            cells += [_delta_cell(by_key[(r['name'], c)]) for c in delta]
        cells += [_paper_cell(r, c) for c in paper]
        body.append(cells)
    return header, body


def paper_columns(results):
    """Metrics for which some variant carries a published number (``paper`` in the spec)."""
    return list(dict.fromkeys(k for r in results['variants'] for k in (r.get('paper') or {})))


def _paper_cell(row, metric):
    value = (row.get('paper') or {}).get(metric)
    return '' if value is None else f'{value:.1f}'


def _plural(n, word):
    return f'{n} {word}' + ('' if n == 1 else 's')


def footnote(results, baseline=None):
    """One line under the table: the protocol, the schedule, the seeds, and what ± and the
    intervals mean (and do not cover)."""
    baseline = baseline or default_baseline(results)
    done = [r for r in results['variants'] if r.get('status') == 'done']
    parts = []
    if results.get('protocol'):
        parts.append(results['protocol'].rstrip('.') + '.')
    trunk = results.get('trunk')
    if trunk:
        what = (', '.join(trunk.get('modules') or []),
                trunk.get('schedule') or 'its own schedule')
        if trunk.get('freeze', True):
            parts.append('Shared trunk (%s): trained once per seed (%s), then loaded and frozen '
                         'in every row, which trains the rest.' % what)
        else:
            parts.append('Shared trunk (%s): trained once per seed (%s), then loaded as the '
                         'initialisation of those modules in every row, which trains its whole '
                         'model (the rest from scratch).' % what)
    schedules = list(dict.fromkeys(r['schedule'] for r in done if r.get('schedule')))
    if len(schedules) == 1:
        parts.append(f'Schedule (every row): {schedules[0]}.')
    elif schedules:
        parts.append('Schedules differ: ' + '; '.join(
            f"{r['name']}: {r['schedule']}" for r in done if r.get('schedule')) + '.')
    seed_lists = list(dict.fromkeys(tuple(r.get('seeds', [])) for r in done))
    counts = sorted({len(s) for s in seed_lists})
    if len(seed_lists) == 1:
        parts.append(f"Seeds: {', '.join(map(str, seed_lists[0]))} (every row).")
    elif seed_lists:
        parts.append(f"Seeds per row: {'-'.join(map(str, counts))}.")
    stats = results.get('statistics') or {}
    settings = stats.get('settings') or {}
    multi = any(c > 1 for c in counts)
    if stats.get('variants') and (settings.get('baseline') == baseline):
        n_img = settings.get('num_images')
        level = int(round(100 * settings.get('level', 0.95)))
        unc = ('± = std over seeds' if multi else
               f'± = bootstrap standard error over the {n_img} validation images')
        if multi and 1 in counts:
            unc += f' (single-seed rows: bootstrap standard error over the {n_img} images)'
        if multi:
            ci = (f'Δ vs {baseline}: {level}% percentile interval of a hierarchical bootstrap '
                  f'(seeds, then the {n_img} validation images, the same image resamples for '
                  f"every row, B={settings.get('replicates')}), covering seed-to-seed training "
                  f'noise (coarsely with {_plural(max(counts), "seed")}) and validation-image '
                  'sampling')
        else:
            ci = (f'Δ vs {baseline}: {level}% paired-bootstrap percentile interval over the '
                  f"validation images (B={settings.get('replicates')}, the same resamples for "
                  'every row); with one seed the intervals cover validation-image sampling '
                  'only, not training noise')
        parts.append(f'AP in %; {unc}; {ci}; * = interval excludes 0.')
    elif stats.get('variants'):
        parts.append('AP in %; ± = ' + ('std over seeds' if multi else 'bootstrap SE over '
                                         'validation images') + '; Δ without intervals.')
    else:
        parts.append('AP in %; ' + ('± = std over seeds; ' if multi else '')
                     + 'no per-image evaluation data stored: no intervals (rerun the spec '
                       'with this version of tools/ablate.py).')
    if paper_columns(results):
        parts.append("paper: the publication's own number (COCO, its backbone and schedule), "
                     'shown for the ordering of the rows, not for their values.')
    if stats.get('notes'):
        parts.append('Not paired: ' + '; '.join(f'{k}: {v}' for k, v in stats['notes'].items())
                     + '.')
    return ' '.join(parts)


def render(results, fmt='md', columns=None, baseline=None, delta=None, with_footnote=True):
    if fmt == 'csv':
        return render_csv(results, columns, baseline, delta)
    header, body = table_rows(results, columns, baseline, delta)
    note = footnote(results, baseline) if with_footnote else ''
    if fmt == 'md':
        lines = ['| ' + ' | '.join(header) + ' |',
                 '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
        lines += ['| ' + ' | '.join(row) + ' |' for row in body]
        if note:
            lines += ['', note]
        return '\n'.join(lines) + '\n'
    if fmt == 'latex':
        def esc(s):
            s = s.replace('_', r'\_').replace('%', r'\%').replace('#', r'\#')
            return s.replace('±', r'$\pm$').replace('Δ', r'$\Delta$')
        lines = [r'\begin{tabular}{l' + 'r' * (len(header) - 1) + '}', r'\toprule',
                 ' & '.join(esc(h) for h in header) + r' \\', r'\midrule']
        lines += [' & '.join(esc(c) for c in row) + r' \\' for row in body]
        lines += [r'\bottomrule', r'\end{tabular}']
        if note:
            lines += ['', r'{\footnotesize ' + esc(note) + '}']
        return '\n'.join(lines) + '\n'
    raise ValueError(f'unknown table format {fmt!r} (md, csv, latex)')


CSV_FIELDS = ('variant', 'metric', 'mean', 'std', 'n', 'se', 'delta', 'ci_low', 'ci_high',
              'significant')


def render_csv(results, columns=None, baseline=None, delta=None):
    """Numbers only, one row per (variant, metric), in the table's units (AP in %, params in
    M): mean, std over seeds, n seeds, bootstrap SE, Δ vs the baseline and its interval,
    significant (1/0). Empty where a number does not exist; failed variants have no rows."""
    import csv
    import io
    columns = list(columns or (results.get('report') or {}).get('columns') or DEFAULT_COLUMNS)
    if delta is not None:
        columns = list(dict.fromkeys(columns + list(delta)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(CSV_FIELDS)
    for rec in table_numbers(results, columns, baseline):
        if rec['status'] != 'done' or rec['mean'] is None:
            continue
        cells = []
        for k in CSV_FIELDS:
            v = 0.0 if (k == 'delta' and rec['baseline']) else rec[k]
            if v is None:
                cells.append('')
            elif k == 'significant':
                cells.append(int(bool(v)))
            elif k in ('variant', 'metric', 'n'):
                cells.append(v)
            else:
                cells.append(repr(float(v)))
        writer.writerow(cells)
    return buf.getvalue()


# ------------------------------------------------------------------------------ plot
def plot(results, out_png, accuracy='segm_mAP', speed='inference.s_per_img'):
    """Two panels with error bars: speed vs accuracy, and AP at IoU 0.50..0.95 per variant.

    Left, the error bars are the table's ±: the std over seeds with two or more seeds, else
    the bootstrap standard error over validation images; right, the bootstrap standard
    error of each IoU threshold's AP. None without per-image data.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    numbers = {(n['variant'], n['metric']): n
               for n in table_numbers(results, [accuracy, speed], default_baseline(results))}
    done = [r for r in results['variants'] if r.get('status') == 'done']
    stats = results.get('statistics') or {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    for r in done:
        acc, spd = numbers[(r['name'], accuracy)], numbers[(r['name'], speed)]
        if acc['mean'] is None or spd['mean'] is None:
            continue
        ax1.errorbar(spd['mean'], acc['mean'], yerr=acc['unc'], xerr=spd['std'], fmt='o',
                     capsize=3)
        ax1.annotate(r['name'], (spd['mean'], acc['mean']), textcoords='offset points',
                     xytext=(4, 4))
    ax1.set_xlabel(HEADERS.get(speed, speed))
    ax1.set_ylabel(HEADERS.get(accuracy, accuracy))
    ax1.set_title('speed vs accuracy')
    ax1.grid(alpha=0.3)
    ious = [0.5 + 0.05 * i for i in range(10)]
    kind = accuracy.split('_')[0]
    for r in done:
        curve = r.get('per_iou', {}).get(f'coco/{kind}_precision_per_iou') or \
            r.get('per_iou', {}).get(f'{kind}_precision_per_iou')
        if not curve:
            continue
        err = ((stats.get('per_iou') or {}).get(f"{r['name']}|{kind}") or {}).get('se')
        ax2.errorbar(ious[:len(curve)], [100 * max(v, 0) for v in curve],
                     yerr=[100 * e for e in err] if err else None, marker='o', capsize=2,
                     label=r['name'])
    ax2.set_xlabel('IoU threshold')
    ax2.set_ylabel(f'{kind} AP')
    ax2.set_title('AP per IoU threshold')
    ax2.grid(alpha=0.3)
    if ax2.lines or ax2.containers:
        ax2.legend(fontsize=8)
    multi = any(len(r.get('seeds', [])) > 1 for r in done)
    fig.text(0.01, 0.01, 'error bars: left, the table\'s ± (' + (
        'std over seeds' if multi else '1 bootstrap SE over validation images') + '); right, '
        '1 bootstrap SE over validation images' + (' of the seed mean' if multi else ''),
        fontsize=8, alpha=0.7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
