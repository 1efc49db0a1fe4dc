"""Memory options give the same numbers: activation checkpointing of the mask heads
(``with_cp``) and of the backbone."""
import copy

import pytest
import torch

import cascade_seg.models  # noqa: F401  (registers the modules)
from cascade_seg.registry import MODELS

torch.set_num_threads(1)


@pytest.mark.parametrize('head', [
    dict(type='HTCMaskHead', num_convs=2, in_channels=8, conv_out_channels=8, num_classes=3),
    dict(type='SAGMaskHead', num_convs=2, in_channels=8, conv_out_channels=8, num_classes=3),
    dict(type='FFMaskHead', num_convs=3, in_channels=8, conv_out_channels=8, num_classes=3,
         num_levels=2)])
def test_mask_head_checkpointing_gives_the_same_gradients(head):
    torch.manual_seed(0)
    plain = MODELS.build(head).train()
    ckpt = MODELS.build(dict(head, with_cp=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    shape = (5, 2, 8, 14, 14) if head.get('num_levels') else (5, 8, 14, 14)
    x = torch.randn(*shape, requires_grad=True)
    res = torch.randn(5, 8, 14, 14) if head['type'] == 'HTCMaskHead' else None
    grads = []
    for model in (plain, ckpt):
        x.grad = None
        model.zero_grad()
        kwargs = dict(res_feat=res) if res is not None else {}
        logits, feat = model(x, return_feat=True, **kwargs)
        (logits.square().sum() + feat.sum()).backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # no checkpointing without gradients
        torch.testing.assert_close(ckpt.eval()(x), plain.eval()(x))


def test_htc_with_checkpointed_mask_heads_and_backbone_trains_the_same():
    from cascade_seg.engine.benchmark import build_benchmark_model, synthetic_batch
    from mmengine.config import Config
    cfg = Config.fromfile('configs/htc/htc_r18_fpn_synthetic.py')
    data = synthetic_batch((96, 96), 0, with_gt=True, num_boxes=2, num_classes=2, sem_classes=3)
    results = []
    for with_cp in (False, True):
        c = copy.deepcopy(cfg)
        c.model.backbone.with_cp = with_cp
        c.model.roi_head.mask_head.with_cp = with_cp
        model, _ = build_benchmark_model(c)
        model.train()
        torch.manual_seed(0)  # the samplers draw the same RoIs
        losses = model._run_forward(model.data_preprocessor(copy.deepcopy(data), True), 'loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()
                                        if p.grad is not None]))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l0, l1)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
