"""Shared-trunk training: some top-level modules of a detector (by default backbone, neck and
proposal generator) loaded from another run's checkpoint, then either kept frozen (the other
parts, the RoI head, train on exactly the same features in every run that uses it) or trained
on (the trunk is a shared initialisation and each run fine-tunes it end to end).

This is how an ablation of RoI-head designs can be run on a small compute budget: the trunk is
trained once, every variant starts from it. It is a protocol of its own and tables made with
it say which (docs/ablations.md, "A shared trunk").
"""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from cascade_seg.registry import HOOKS

from .checkpoint import compare_state_dicts, load_checkpoint_file, state_dict_from_checkpoint

DEFAULT_TRUNK = ('backbone', 'neck', 'proposal_generator')


def trunk_state(state_dict, modules):
    """The entries of ``state_dict`` that belong to the top-level ``modules``."""
    return {k: v for k, v in state_dict.items() if k.split('.', 1)[0] in modules}


def load_trunk(model, checkpoint, modules=DEFAULT_TRUNK, freeze=True):
    """Load ``modules`` of ``model`` from ``checkpoint`` (a path or a state dict); every
    parameter and buffer of those modules must be there with its shape. With ``freeze`` their
    parameters stop requiring gradients and the modules are put in eval mode (BN statistics
    and any train-only behaviour frozen too). Returns the number of tensors loaded."""
    modules = tuple(m for m in modules if getattr(model, m, None) is not None)
    if isinstance(checkpoint, str):
        checkpoint = state_dict_from_checkpoint(load_checkpoint_file(checkpoint))
    own = trunk_state(model.state_dict(), modules)
    given = trunk_state(checkpoint, modules)
    missing, unexpected, mismatched = compare_state_dicts(own, given)
    if missing or unexpected or mismatched:
        raise ValueError(f'the trunk checkpoint does not fit the modules {list(modules)}: '
                         f'{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} '
                         f'unexpected (e.g. {unexpected[:3]}), mismatched shapes '
                         f'{mismatched[:3]}')
    model.load_state_dict(given, strict=False)
    if freeze:
        for name in modules:
            module = getattr(model, name)
            module.requires_grad_(False)
            module.eval()
    return len(given)


@HOOKS.register_module()
class SharedTrunkHook(Hook):
    """Before training, load ``modules`` from ``checkpoint`` and (with ``freeze``) keep them
    frozen: no gradients, eval mode at every iteration (mmengine's loop calls
    ``model.train()`` at each epoch)."""
    priority = 'VERY_HIGH'

    def __init__(self, checkpoint, modules=DEFAULT_TRUNK, freeze=True):
        self.checkpoint = checkpoint
        self.modules = tuple(modules)
        self.freeze = freeze

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner):
        model = self._model(runner)
        if runner.iter > 0 and not self.freeze:
            # resumed: the checkpoint holds the trunk as this run has fine-tuned it; loading
            # the shared one again would undo that
            print_log(f'shared trunk: resumed at iteration {runner.iter}, the fine-tuned trunk '
                      'comes from the resumed checkpoint', logger='current')
            return
        n = load_trunk(model, self.checkpoint, self.modules, self.freeze)
        print_log(f'shared trunk: {n} tensors of {list(self.modules)} from {self.checkpoint}'
                  + (', frozen' if self.freeze else ''), logger='current')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.freeze:
            model = self._model(runner)
            for name in self.modules:
                module = getattr(model, name, None)
                if module is not None and module.training:
                    module.eval()
