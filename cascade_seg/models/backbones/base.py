"""What every backbone here shares: loading a local pretrained checkpoint (no downloads),
frozen stages and frozen BatchNorm statistics (``norm_eval``), as MMDetection's backbones."""
import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)


def load_local_state_dict(path, prefix='backbone.'):
    """Read a local checkpoint (raw state dict or ``{'state_dict'|'model': ...}``).

    If any key starts with ``prefix``, only those keys are kept, with the prefix removed;
    a DataParallel ``module.`` prefix is dropped too.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pretrained checkpoint not found: {path} (no downloads here)')
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    state = {k[7:] if k.startswith('module.') else k: v for k, v in ckpt.items()}
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


class StagedBackbone(nn.Module):
    """Base of a backbone with a stem and stages. A subclass sets ``frozen_stages``,
    ``norm_eval`` and ``init_cfg`` and says which modules ``frozen_stages`` freezes
    (:meth:`frozen_modules`); ``ignored_keys`` are checkpoint keys it has no use for (a
    classifier)."""
    ignored_keys = ()

    def frozen_modules(self):
        raise NotImplementedError

    def init_weights(self):
        """Load ``init_cfg``'s local pretrained checkpoint, if one is configured."""
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            return
        state = load_local_state_dict(cfg['checkpoint'], cfg.get('prefix') or 'backbone.')
        missing, unexpected = self.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(self.ignored_keys)]
        if missing or unexpected:
            logger.warning('%s pretrained load from %s: missing keys %s, unexpected keys %s',
                           type(self).__name__, cfg['checkpoint'], missing, unexpected)
        self._freeze_stages()

    def _freeze_stages(self):
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
