"""Crash-safe checkpoint saving, with what an exact resume needs, and the checks made on load.

mmengine's ``CheckpointHook`` deletes the oldest kept checkpoint *before* it
writes the new one, writes with a plain ``open('wb')`` and then rewrites
``last_checkpoint`` in place: a process killed during a save can leave no
complete checkpoint at all. :class:`AtomicCheckpointHook` keeps its arguments
and behaviour but saves in this order:

1. the checkpoint is written to a temporary file in the same folder, flushed to
   disk (``fsync``) and renamed over its final name (a rename within one file
   system is atomic: the name holds the old content or the new one);
2. ``last_checkpoint`` is replaced the same way;
3. only then are checkpoints beyond ``max_keep_ckpts`` deleted.

A kill at any point leaves the previous checkpoint (or the new one) complete,
and ``--resume`` (:func:`~cascade_seg.engine.checkpoint.find_resume_checkpoint`)
falls back to the newest complete checkpoint when ``last_checkpoint`` is
missing, empty or names an incomplete file. Each checkpoint also carries what
an exact resume needs (see :mod:`cascade_seg.engine.resume`).
"""
import logging
import os
import os.path as osp
import re
import shutil

from mmengine.dist import get_world_size, is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop

from cascade_seg.registry import HOOKS
from .checkpoint import compare_state_dicts, format_report, state_dict_from_checkpoint
from .resume import RESUME_KEY, STATE_VERSION, capture_rng, gather_rng

__all__ = ['AtomicCheckpointHook', 'StrictLoadHook', 'atomic_write_text', 'publish_file']

_TEMP = re.compile(r'^\.(.+\.pth|last_checkpoint)\.\d+\.tmp$')  # what _temp_name makes


def _temp_name(name):
    return f'.{name}.{os.getpid()}.tmp'


def _fsync_dir(folder):
    try:
        fd = os.open(folder or '.', os.O_RDONLY)
    except OSError:
        return  # not possible on this platform: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_file(tmp_path, final_path):
    """Flush ``tmp_path`` to disk and rename it to ``final_path`` (atomic)."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp_path, final_path)
    _fsync_dir(osp.dirname(final_path))


def atomic_write_text(path, text):
    """Replace the text file ``path`` so that readers see the old or the new text."""
    tmp = osp.join(osp.dirname(path), _temp_name(osp.basename(path)))
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(osp.dirname(path))


def _remove(path):
    if osp.isfile(path):
        os.remove(path)
    elif osp.isdir(path):  # checkpoints saved by DeepSpeed are folders
        shutil.rmtree(path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with crash-safe saving and the
    random state and data position of every rank stored for an exact resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng_for_checkpoint = None  # every rank's states, gathered before a save
        self._loaded_resume_state = None

    # ------------------------------------------------------------------ resume
    def after_load_checkpoint(self, runner, checkpoint):
        self._loaded_resume_state = checkpoint.get(RESUME_KEY)

    def before_train(self, runner):
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            for folder in {self.out_dir, runner.work_dir}:
                for name in os.listdir(folder) if osp.isdir(folder) else ():
                    if _TEMP.match(name):  # left by a save that was killed
                        _remove(osp.join(folder, name))
        state, self._loaded_resume_state = self._loaded_resume_state, None
        if runner.iter == 0 and runner.epoch == 0:
            return  # a fresh run (or weights loaded with load_from): nothing to restore
        loop = runner.train_loop
        if state is None:
            runner.logger.warning(
                'the checkpoint resumed from holds no random state or data position '
                '(written by mmengine\'s CheckpointHook or an older cascade_seg): training '
                'continues, but not exactly as the interrupted run would have')
        elif not hasattr(loop, 'set_resume_state'):
            runner.logger.warning(
                f'{type(loop).__name__} cannot restore the random state and data position; '
                'use EpochBasedTrainLoop or IterBasedTrainLoop under default_scope '
                "'cascade_seg' for an exact resume")
        else:
            loop.set_resume_state(state)
            loader = getattr(loop, 'dataloader', None)
            if getattr(loader, 'num_workers', 0) and getattr(loader, 'persistent_workers', False):
                runner.logger.warning(
                    'train_dataloader has persistent_workers=True: the random state its worker '
                    'processes carried over from earlier epochs (random flips, scale choices) '
                    'cannot be restored, so those augmentations differ from the interrupted '
                    'run; set persistent_workers=False for a bit-exact resume')

    def before_save_checkpoint(self, runner, checkpoint):
        loop = getattr(runner, '_train_loop', None)  # only a loop that is built and running
        if not isinstance(loop, BaseLoop) or not hasattr(loop, 'resume_position'):
            return
        rng = self._rng_for_checkpoint
        if rng is None:  # a save not prepared by this hook: this process's state only
            rng = [loop.training_rng()] if get_world_size() == 1 else []
        checkpoint[RESUME_KEY] = dict(version=STATE_VERSION, world_size=get_world_size(),
                                      rng=rng,
                                      position=loop.resume_position(checkpoint['meta']))

    def _gather(self, runner):
        loop = runner.train_loop
        local = loop.training_rng() if hasattr(loop, 'training_rng') else capture_rng()
        return gather_rng(local)

    # ------------------------------------------------------------------ saving
    def _save_best_checkpoint(self, runner, metrics):
        if self.save_best is None:
            return
        self._rng_for_checkpoint = self._gather(runner)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self._rng_for_checkpoint = None

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            print_log(f'{self.out_dir} is not a local folder: checkpoints are saved the '
                      'non-atomic mmengine way', logger='current', level=logging.WARNING)
            self._rng_for_checkpoint = self._gather(runner)
            try:
                return super()._save_checkpoint_with_step(runner, step, meta)
            finally:
                self._rng_for_checkpoint = None

        self._rng_for_checkpoint = self._gather(runner)  # collective: every rank is here
        expired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                expired.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        name = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, name)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        tmp_name = _temp_name(name)
        try:
            runner.save_checkpoint(self.out_dir, tmp_name, self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler,
                                   meta=meta, by_epoch=self.by_epoch,
                                   backend_args=self.backend_args, **self.args)
        finally:
            self._rng_for_checkpoint = None
        if not is_main_process():
            return
        publish_file(osp.join(self.out_dir, tmp_name), self.last_ckpt)
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in expired:  # only now that the new checkpoint is complete
            _remove(osp.join(self.out_dir, self.filename_tmpl.format(old)))


def _unwrap(model):
    """The detector inside a DDP wrapper or a test-time-augmentation model."""
    from mmengine.model import BaseTTAModel
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Refuse a checkpoint whose weights do not fit the model (tools/test.py).

    mmengine loads what matches and only prints the rest, so evaluating another
    architecture's weights would silently report (near) zero AP.
    """
    priority = 'VERY_HIGH'

    def __init__(self, filename=None,
                 hint='pass --partial-load to load only the weights that fit'):
        self.filename = filename
        self.hint = hint

    def after_load_checkpoint(self, runner, checkpoint):
        state = state_dict_from_checkpoint(checkpoint)
        report = format_report(*compare_state_dicts(_unwrap(runner.model).state_dict(), state))
        if report:
            raise RuntimeError(f'checkpoint {self.filename or ""} does not fit the model '
                               f'({self.hint}):\n{report}')
