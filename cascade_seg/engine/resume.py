"""Exact resume: the random state and the data position travel with a checkpoint.

A resumed run continues exactly as if it had never stopped only if, besides the
weights, optimizer and schedulers (mmengine restores those), it also restores

* the random number generators of every rank (python ``random``, numpy's
  global generator, torch's CPU generator and, when CUDA is in use, every CUDA
  generator): the RPN/RoI samplers and the random flip draw from them;
* the position in the data: mmengine restarts an epoch-based run at the
  beginning of the epoch it was in, so a checkpoint written mid-epoch would
  train on that epoch's first batches twice.

:class:`~cascade_seg.engine.checkpoint_hook.AtomicCheckpointHook` writes both
into each checkpoint under ``'resume_state'``; the two train loops below,
registered under mmengine's names in our scope (every config whose
``default_scope`` is ``cascade_seg`` gets them), put them back at the moment
the interrupted run was at: after the already-trained batches of the epoch are
drawn again (the data pipeline runs for them, so worker processes advance as
they did) and before the next batch is drawn. Validation inside a training run
no longer moves the training random state either (it is saved before and
restored after), so a run resumed after a validation point draws the same
numbers as one that went on.
"""
import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop as _EpochBasedTrainLoop
from mmengine.runner import IterBasedTrainLoop as _IterBasedTrainLoop

from cascade_seg.registry import LOOPS

__all__ = ['RESUME_KEY', 'capture_rng', 'restore_rng', 'gather_rng', 'preserved_rng',
           'EpochBasedTrainLoop', 'IterBasedTrainLoop']

RESUME_KEY = 'resume_state'
STATE_VERSION = 1


# --------------------------------------------------------------------------- RNG states
def capture_rng():
    """This process's generator states, in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = dict(python=random.getstate(),
                 numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)),
                            pos=int(pos), has_gauss=int(has_gauss), gauss=float(gauss)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore_rng(state):
    """Put back what :func:`capture_rng` returned (tensors may come back on a GPU)."""
    random.setstate(_as_tuple(state['python']))
    np_state = state['numpy']
    np.random.set_state((np_state['kind'], np_state['keys'].cpu().numpy().astype(np.uint32),
                         np_state['pos'], np_state['has_gauss'], np_state['gauss']))
    torch.set_rng_state(state['torch'].cpu())
    cuda = state.get('cuda')
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            print_log(f'the checkpoint holds {len(cuda)} CUDA generator states but '
                      f'{torch.cuda.device_count()} devices are visible; CUDA generators '
                      'not restored', logger='current', level=logging.WARNING)


def gather_rng(local=None):
    """Every rank's generator states, indexed by rank (a collective call)."""
    local = capture_rng() if local is None else local
    return all_gather_object(local) if get_world_size() > 1 else [local]


@contextmanager
def preserved_rng():
    """Run a block without moving the generators of the code around it."""
    state = capture_rng()
    try:
        yield state
    finally:
        restore_rng(state)


# --------------------------------------------------------------------------- loops
class _ResumableLoop:
    """What both train loops add to mmengine's: resume state in and out."""

    def _init_resume(self):
        self._resume_state = None  # given by the checkpoint hook when resuming
        self._rng_outside_val = None

    def set_resume_state(self, state):
        """Called (before_train) with the ``resume_state`` of the checkpoint resumed from."""
        self._resume_state = state

    def training_rng(self):
        """The training generators now: during validation, those from before it."""
        return self._rng_outside_val if self._rng_outside_val is not None else capture_rng()

    def resume_position(self, meta):
        """The data position to store with a checkpoint whose ``meta`` is given."""
        return {}

    def _restore_rng(self, state):
        ranks = state.get('rng') or []
        if len(ranks) != get_world_size():
            print_log(f'the checkpoint holds the random state of {len(ranks)} processes but '
                      f'this run has {get_world_size()}: the resumed run starts from the '
                      'seed and will not repeat the interrupted one exactly',
                      logger='current', level=logging.WARNING)
            return
        restore_rng(ranks[get_rank()])

    def _run_val(self):
        with preserved_rng() as state:
            self._rng_outside_val = state
            try:
                self.runner.val_loop.run()
            finally:
                self._rng_outside_val = None


def _skip(iterator, count):
    """Draw ``count`` batches; returns how many there were."""
    for done in range(count):
        try:
            next(iterator)
        except StopIteration:
            return done
    return count


@LOOPS.register_module(name='EpochBasedTrainLoop')
class EpochBasedTrainLoop(_ResumableLoop, _EpochBasedTrainLoop):
    """mmengine's epoch loop that resumes mid-epoch at the batch it stopped after."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_resume()
        self._batches_done = 0  # batches of the current epoch drawn so far

    def resume_position(self, meta):
        # meta['epoch'] is the epoch a resumed run starts in: the current one for a
        # checkpoint written during it, the next one after it ended.
        mid_epoch = meta.get('epoch') == self._epoch
        return dict(batches_in_epoch=self._batches_done if mid_epoch else 0)

    def run(self):
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0
                         or self._epoch == self._max_epochs)):
                self._run_val()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self):
        state, self._resume_state = self._resume_state, None
        skip = int(((state or {}).get('position') or {}).get('batches_in_epoch', 0))
        if state is not None and not skip:
            self._restore_rng(state)  # the interrupted run was between two epochs
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        batches = iter(self.dataloader)
        if skip:
            print_log(f'resuming epoch {self._epoch + 1} after its first {skip} batches: '
                      'drawing them again without training', logger='current')
            drawn = _skip(batches, skip)
            if drawn < skip:
                print_log(f'the epoch has only {drawn} batches now (the checkpoint was '
                          f'written after {skip}); going on with the next epoch',
                          logger='current', level=logging.WARNING)
            self._batches_done = drawn
            if state is not None:
                self._restore_rng(state)
        for idx, data_batch in enumerate(batches, start=self._batches_done):
            self._batches_done = idx + 1
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
        self._batches_done = 0


@LOOPS.register_module(name='IterBasedTrainLoop')
class IterBasedTrainLoop(_ResumableLoop, _IterBasedTrainLoop):
    """mmengine's iteration loop with the random state restored after the data skip.

    mmengine's own resume already draws the trained batches again; the
    checkpoint's ``meta['iter']`` is their number.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_resume()

    def run(self):
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        state, self._resume_state = self._resume_state, None
        if self._iter > 0:
            print_log(f'resuming after iteration {self._iter}: drawing the trained batches '
                      'again without training', logger='current')
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        if state is not None:
            self._restore_rng(state)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                self._run_val()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model
