"""Training logs: loss / mAP curves and iteration times from mmengine's
``<work_dir>/<timestamp>/vis_data/scalars.json`` (one JSON object per line: training lines
carry ``epoch``, ``iter`` and ``step`` = iteration; validation lines carry the metrics, e.g.
``coco/bbox_mAP``, and ``step`` = epoch for epoch-based loops)."""
import glob
import json
import os.path as osp

import numpy as np

__all__ = ['find_scalars', 'load_scalars', 'plot_curve', 'cal_train_time']


def find_scalars(path):
    """``scalars.json`` of a path: the file itself, a ``<timestamp>/`` folder, or a work dir
    (its newest run)."""
    if osp.isfile(path):
        return path
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json'):
        found = sorted(glob.glob(osp.join(path, pattern)))
        for candidate in reversed(found):  # the newest run that trained (not a test run)
            with open(candidate) as f:
                if '"iter"' in f.read():
                    return candidate
        if found:
            return found[-1]
    raise FileNotFoundError(f'{path}: no scalars.json (expected <work_dir>/<timestamp>/vis_data/'
                            'scalars.json, written by the LocalVisBackend of default_runtime.py)')


def load_scalars(path):
    """``dict(path, train=[records], val=[records])``. Validation records also get each metric
    under its short name (``coco/bbox_mAP`` -> ``bbox_mAP``, MMDetection's ``--keys``) and
    ``epoch`` (= their ``step`` when no ``iter`` is logged)."""
    path = find_scalars(path)
    train, val = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{number}: not a JSON line ({e.msg})') from None
            if 'iter' in rec or 'lr' in rec:
                train.append(rec)
            else:
                rec = dict(rec)
                for key in [k for k in rec if '/' in k]:
                    rec.setdefault(key.split('/', 1)[1], rec[key])
                rec.setdefault('epoch', rec.get('step'))
                val.append(rec)
    return dict(path=path, train=train, val=val)


def _series(run, key):
    """``(xs, ys, x label)`` of ``key`` in one run: metrics of validation over epochs, anything
    of training over iterations."""
    val = [r for r in run['val'] if key in r]
    if val:
        return [r['epoch'] for r in val], [r[key] for r in val], 'epoch'
    train = [r for r in run['train'] if key in r]
    if train:
        return [r.get('iter', r.get('step')) for r in train], [r[key] for r in train], 'iter'
    known = sorted({k for r in run['train'] + run['val'] for k in r})
    raise KeyError(f'{run["path"]} has no {key!r}; it logs {known}')


def plot_curve(runs, keys=('bbox_mAP', ), legend=None, title=None, out=None, backend=None,
               style=None, start_epoch=1):
    """One figure with every key of every run (``runs``: :func:`load_scalars` results, or
    paths). Validation metrics are plotted per epoch (markers), training values per
    iteration. ``legend`` names each (run, key) line (default ``<path>_<key>``). Saves to
    ``out``, else shows it where there is a display. Returns the figure."""
    import matplotlib
    if backend:
        matplotlib.use(backend)
    elif out or not _has_display():
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    runs = [r if isinstance(r, dict) else load_scalars(r) for r in runs]
    keys = list(keys)
    if legend is not None and len(legend) != len(runs) * len(keys):
        raise ValueError(f'{len(legend)} legend entries for {len(runs)} runs x {len(keys)} '
                         'keys')
    if style:
        try:
            plt.style.use(style)
        except (OSError, ValueError):
            pass  # MMDetection's default is a seaborn style; any matplotlib style works here
    series = []
    for i, run in enumerate(runs):
        for j, key in enumerate(keys):
            xs, ys, unit = _series(run, key)
            if unit == 'epoch':
                pairs = [(x, y) for x, y in zip(xs, ys) if x is None or x >= start_epoch]
                xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            name = legend[i * len(keys) + j] if legend else f'{run["path"]}_{key}'
            series.append((unit, xs, ys, name))
    # training values over iterations and metrics over epochs get a panel each
    units = [u for u in ('iter', 'epoch') if any(s[0] == u for s in series)]
    fig, axes = plt.subplots(1, len(units), figsize=(6.5 * len(units), 4.5), squeeze=False)
    for ax, unit in zip(axes[0], units):
        for _, xs, ys, name in (s for s in series if s[0] == unit):
            ax.plot(xs, ys, label=name, marker='o' if unit == 'epoch' else None,
                    linewidth=1 if unit == 'epoch' else 0.7)
        ax.set_xlabel(unit)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if out:
        fig.savefig(out)
        plt.close(fig)
    elif _has_display():
        plt.show()
    else:
        from mmengine.logging import print_log
        print_log('plot_curve: no display to show the figure on; pass --out FILE.png',
                  logger='current', level=30)
    return fig


def _has_display():
    from cascade_seg.visualization.show import display_available
    return display_available()[0]


def cal_train_time(runs, include_outliers=False):
    """Seconds per training iteration of each run: per epoch the mean of the logged ``time``
    (without each epoch's first logged value unless ``include_outliers``: it carries the data
    loader's start), the slowest and fastest epoch, the std over epochs and the overall mean.
    Returns a list of dicts; the tool prints them."""
    out = []
    for run in runs:
        run = run if isinstance(run, dict) else load_scalars(run)
        by_epoch = {}
        for rec in run['train']:
            if 'time' in rec:
                by_epoch.setdefault(rec.get('epoch', 1), []).append(rec['time'])
        if not include_outliers:
            by_epoch = {e: t[1:] for e, t in by_epoch.items() if len(t) > 1}
        if not by_epoch:
            raise ValueError(f'{run["path"]}: too few logged iterations per epoch to time; '
                             'lower default_hooks.logger.interval (or --include-outliers)')
        epochs = sorted(by_epoch)
        means = np.array([np.mean(by_epoch[e]) for e in epochs])
        out.append(dict(path=run['path'], epochs=epochs, epoch_mean_s=means.tolist(),
                        slowest_epoch=epochs[int(means.argmax())], slowest_s=float(means.max()),
                        fastest_epoch=epochs[int(means.argmin())], fastest_s=float(means.min()),
                        std_over_epochs_s=float(means.std()),
                        mean_s_per_iter=float(np.mean(np.concatenate(
                            [by_epoch[e] for e in epochs])))))
    return out
