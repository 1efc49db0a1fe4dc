"""The console of an ablation job: one line when a run starts, one when it ends, and one
progress bar with an ETA over the whole job.

Every run's process writes how far it is to ``progress.json`` in its folder
(:class:`ProgressHook`, registered by the ablation runner); the job's process reads those
files and draws the bar. The runs' own logs (environment, config, hooks, losses) stay in
their folders.
"""
import json
import os
import os.path as osp
import sys
import time

from mmengine.hooks import Hook

__all__ = ['PROGRESS_FILE', 'ProgressHook', 'read_progress', 'JobConsole', 'fmt_duration',
           'planned_length']

PROGRESS_FILE = 'progress.json'


def _atomic_write(path, obj):
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_progress(vdir):
    try:
        with open(osp.join(vdir, PROGRESS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class ProgressHook(Hook):
    """Write ``{phase, iter, max_iters, epoch, max_epochs, by_epoch, test_iter, test_total}``
    to ``path`` (at most every ``min_interval`` seconds, and at every phase change)."""
    priority = 'VERY_LOW'

    def __init__(self, path, min_interval=1.0):
        self.path = path
        self.min_interval = min_interval
        self.state = {}
        self._last = 0.0

    def _write(self, force=False, **state):
        self.state.update(state, time=time.time())
        if force or time.time() - self._last >= self.min_interval:
            try:
                _atomic_write(self.path, self.state)
            except OSError:
                pass  # progress is cosmetic: never fail a run over it
            self._last = time.time()

    def before_train(self, runner):
        loop = runner.train_loop
        try:
            iters_per_epoch = len(loop.dataloader)
        except (AttributeError, TypeError):
            iters_per_epoch = None
        self._write(force=True, phase='train', iter=runner.iter, max_iters=runner.max_iters,
                    epoch=runner.epoch, max_epochs=runner.max_epochs,
                    by_epoch='Epoch' in type(loop).__name__, iters_per_epoch=iters_per_epoch)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._write(iter=runner.iter + 1, epoch=runner.epoch)

    def after_train_epoch(self, runner):
        self._write(force=True, iter=runner.iter, epoch=runner.epoch)

    def after_train(self, runner):
        self._write(force=True, phase='trained', iter=runner.iter)

    def before_test(self, runner):
        self._write(force=True, phase='test', test_iter=0,
                    test_total=len(runner.test_dataloader))

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._write(test_iter=batch_idx + 1)

    def after_test(self, runner):
        self._write(force=True, phase='tested')


def planned_length(cfg):
    """``(length, unit)`` of a config's training: ``(12, 'epochs')``, ``(1500, 'iters')``."""
    tc = cfg.get('train_cfg') or {}
    if 'max_iters' in tc or 'IterBased' in str(tc.get('type', '')):
        return int(tc.get('max_iters', 0)), 'iters'
    return int(tc.get('max_epochs', 0)), 'epochs'


def fmt_duration(seconds):
    if seconds is None:
        return '--'
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class JobConsole:
    """Start/finish lines and one progress bar over every (variant, seed) of a job.

    ``runs``: list of dicts with ``label`` (e.g. ``'htc seed 0'``), ``vdir`` and
    ``length, unit`` (:func:`planned_length`; 0 for evaluate-only runs). The bar counts
    training epochs (or iterations) over all runs; a running run's share is read from its
    ``progress.json``. The ETA extrapolates the time per unit measured so far in this job,
    so it is approximate when later variants are slower. On a terminal the bar is redrawn
    in place every second; otherwise a bar line is printed every ``interval`` seconds.
    """

    def __init__(self, runs, stream=None, interval=None, width=24):
        self.runs = runs
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.interval = interval if interval is not None else (1.0 if self.tty else 60.0)
        self.width = width
        self.state = ['pending'] * len(runs)
        self.done_before = [0.0] * len(runs)  # units finished before this job (resumed runs)
        self.start_time = time.time()
        self._last_draw = 0.0
        self._bar_shown = False
        self._last_text = None
        units = {r['unit'] for r in runs if r['length']}
        self.unit = units.pop() if len(units) == 1 else None

    # ------------------------------------------------------------------ lines
    def line(self, msg, stream=None):
        self._clear()
        print(f'[ablate {time.strftime("%H:%M:%S")}] {msg}', file=stream or self.stream,
              flush=True)
        if self.tty and self._bar_shown:
            self.draw(force=True)

    def _clear(self):
        if self.tty and self._bar_shown:
            self.stream.write('\r\x1b[K')
            self.stream.flush()

    def started(self, i):
        self.state[i] = 'running'
        prog = read_progress(self.runs[i]['vdir'])
        # a resumed run: what it trained before does not count towards this job's speed
        self.done_before[i] = self._run_units(i, prog) if prog else 0.0

    def finished(self, i, ok=True, skipped=False):
        self.state[i] = 'skipped' if skipped else ('done' if ok else 'failed')
        if skipped:
            self.done_before[i] = self.runs[i]['length']

    # ------------------------------------------------------------------ progress
    def _run_units(self, i, prog):
        run = self.runs[i]
        if not prog or not prog.get('max_iters'):
            return 0.0
        if prog.get('phase') in ('trained', 'test', 'tested'):
            return float(run['length'])
        return run['length'] * min(1.0, prog.get('iter', 0) / prog['max_iters'])

    def progress(self):
        """``(units done, units total, units done in this job, running detail)``."""
        total = done = 0.0
        now_done = 0.0
        detail = []
        for i, run in enumerate(self.runs):
            total += run['length']
            st = self.state[i]
            if st in ('done', 'skipped', 'failed'):
                units = float(run['length'])
            elif st == 'running':
                prog = read_progress(run['vdir'])
                units = self._run_units(i, prog)
                detail.append(self._detail(run, prog))
            else:
                units = 0.0
            done += units
            if st != 'skipped':
                now_done += max(0.0, units - self.done_before[i])
        return done, total, now_done, detail

    @staticmethod
    def _detail(run, prog):
        label = run['label']
        if not prog:
            return f'{label}: starting'
        phase = prog.get('phase')
        if phase == 'train':
            if prog.get('by_epoch') and prog.get('iters_per_epoch'):
                ipe = prog['iters_per_epoch']
                it = prog.get('iter', 0)
                ep = min(it // ipe + 1, prog.get('max_epochs') or 1)
                return (f'{label}: epoch {ep}/{prog.get("max_epochs")} '
                        f'iter {it - (ep - 1) * ipe}/{ipe}')
            return f'{label}: iter {prog.get("iter", 0)}/{prog.get("max_iters")}'
        if phase == 'test':
            return f'{label}: testing {prog.get("test_iter", 0)}/{prog.get("test_total")}'
        if phase == 'tested':
            return f'{label}: benchmarking'
        return f'{label}: {phase}'

    def render(self):
        done, total, now_done, detail = self.progress()
        finished = sum(s in ('done', 'skipped', 'failed') for s in self.state)
        if total > 0:
            frac = min(1.0, done / total)
            amount = (f'{done:.1f}/{total:g} {self.unit}' if self.unit == 'epochs' else
                      f'{done:.0f}/{total:g} {self.unit}' if self.unit else '')
        else:  # evaluate-only job: count runs
            frac = finished / max(1, len(self.runs))
            amount = ''
        elapsed = time.time() - self.start_time
        remaining = (total - done) if total > 0 else None
        eta = (elapsed * remaining / now_done) if remaining is not None and now_done > 0 else None
        if finished == len(self.runs):
            eta = 0.0
        filled = int(round(frac * self.width))
        bar = '#' * filled + '-' * (self.width - filled)
        parts = [f'[{bar}] {100 * frac:3.0f}%', amount, f'runs {finished}/{len(self.runs)}']
        parts += detail[:2]
        parts.append(f'{fmt_duration(elapsed)} elapsed, ETA {fmt_duration(eta)}')
        return ' | '.join(p for p in parts if p)

    def draw(self, force=False):
        now = time.time()
        if not force and now - self._last_draw < self.interval:
            return
        text = self.render()
        self._last_draw = now
        if self.tty:
            self.stream.write('\r\x1b[K' + text)
            self.stream.flush()
            self._bar_shown = True
        elif force or text != self._last_text:
            print(f'[ablate {time.strftime("%H:%M:%S")}] {text}', file=self.stream, flush=True)
        self._last_text = text

    def close(self):
        """The final state of the bar, on its own line."""
        if self.tty:
            self.stream.write('\r\x1b[K' + self.render() + '\n')
            self.stream.flush()
            self._bar_shown = False
        else:
            self.draw(force=True)
