"""SharedTrunkHook: load, freeze or fine-tune, and what a resumed run keeps."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cascade_seg.engine.trunk import SharedTrunkHook


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.roi_head = nn.Linear(2, 2)


def _shared():
    return {'backbone.weight': torch.full((2, 2), 7.0), 'backbone.bias': torch.full((2, ), 7.0),
            'roi_head.weight': torch.full((2, 2), 9.0), 'roi_head.bias': torch.zeros(2)}


@pytest.mark.parametrize('freeze', [True, False])
def test_trunk_loads_only_its_modules_and_freezes_on_request(freeze):
    model = Tiny()
    head = model.roi_head.weight.detach().clone()
    SharedTrunkHook(_shared(), modules=('backbone', ), freeze=freeze).before_train(
        SimpleNamespace(model=model, iter=0))
    assert torch.equal(model.backbone.weight, torch.full((2, 2), 7.0))
    assert torch.equal(model.roi_head.weight, head)  # not a trunk module: its own init
    assert model.backbone.weight.requires_grad is not freeze
    assert model.roi_head.weight.requires_grad


def test_resumed_fine_tuning_keeps_its_trunk():
    model = Tiny()
    with torch.no_grad():
        model.backbone.weight.fill_(3.0)  # as fine-tuned up to the resumed checkpoint
    SharedTrunkHook(_shared(), modules=('backbone', ), freeze=False).before_train(
        SimpleNamespace(model=model, iter=40))
    assert torch.equal(model.backbone.weight, torch.full((2, 2), 3.0))
    # a frozen trunk is the shared one whenever the run resumes
    SharedTrunkHook(_shared(), modules=('backbone', ), freeze=True).before_train(
        SimpleNamespace(model=model, iter=40))
    assert torch.equal(model.backbone.weight, torch.full((2, 2), 7.0))
    assert not model.backbone.weight.requires_grad
