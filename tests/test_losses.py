import pytest
import torch
import torch.nn.functional as F

from cascade_seg.models.losses import (CrossEntropyLoss, L1Loss, SmoothL1Loss, accuracy,
                                       binary_cross_entropy, cross_entropy, l1_loss, mask_bce_loss,
                                       mask_softmax_loss, smooth_l1_loss)
from cascade_seg.registry import MODELS

g = torch.Generator().manual_seed(0)
LOGITS = torch.randn(12, 5, generator=g)
LABELS = torch.randint(0, 5, (12, ), generator=g)


def test_cross_entropy_matches_torch():
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))
    w = torch.tensor([1., 0.] * 6)
    per = F.cross_entropy(LOGITS, LABELS, reduction='none')
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS, w), (per * w).mean())
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS, w, avg_factor=6), (per * w).sum() / 6)
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS, reduction='sum'), per.sum())
    cw = torch.tensor([1., 2., 1., 1., 3.])
    torch.testing.assert_close(cross_entropy(LOGITS, LABELS, class_weight=cw),
                               F.cross_entropy(LOGITS, LABELS, weight=cw, reduction='none').mean())
    lab = LABELS.clone()
    lab[:4] = -1
    torch.testing.assert_close(cross_entropy(LOGITS, lab, ignore_index=-1, avg_non_ignore=True),
                               F.cross_entropy(LOGITS, lab, ignore_index=-1))


def test_binary_cross_entropy_dense_and_label_forms():
    t = (torch.rand(12, 5, generator=g) > 0.5).float()
    torch.testing.assert_close(binary_cross_entropy(LOGITS, t),
                               F.binary_cross_entropy_with_logits(LOGITS, t))
    # RPN form: (N, 1) logits, labels 0 = foreground, 1 = background, avg over sampled anchors
    s = torch.randn(10, 1, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    lw = torch.tensor([1., 1., 1., 1., 0., 0., 0., 0., 0., 0.])
    per = F.binary_cross_entropy_with_logits(s[:, 0], (labels == 0).float(), reduction='none')
    torch.testing.assert_close(binary_cross_entropy(s, labels, lw, avg_factor=4),
                               (per * lw).sum() / 4)
    # negative targets are ignored
    t2 = t.clone()
    t2[0] = -1
    full = F.binary_cross_entropy_with_logits(LOGITS, t2.clamp(min=0), reduction='none')
    torch.testing.assert_close(binary_cross_entropy(LOGITS, t2, reduction='sum'), full[1:].sum())


def test_regression_losses():
    p, t = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    for beta in (1.0, 1 / 9):
        torch.testing.assert_close(smooth_l1_loss(p, t, beta), F.smooth_l1_loss(p, t, beta=beta))
    torch.testing.assert_close(l1_loss(p, t), F.l1_loss(p, t))
    w = torch.zeros(8, 4)
    w[:2] = 1
    torch.testing.assert_close(l1_loss(p, t, w, avg_factor=2), (p - t)[:2].abs().sum() / 2)
    torch.testing.assert_close(
        SmoothL1Loss(beta=0.5, loss_weight=2.)(p, t, w, avg_factor=3),
        2 * F.smooth_l1_loss(p[:2], t[:2], beta=0.5, reduction='sum') / 3)
    # all-zero weights: exactly 0 but still connected to the graph
    p.requires_grad_(True)
    z = L1Loss()(p, t, torch.zeros(8, 4))
    z.backward()
    assert z.item() == 0 and p.grad is not None
    assert smooth_l1_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0


def test_mask_bce_uses_only_gt_channel():
    logits = torch.randn(3, 4, 6, 6, generator=g, requires_grad=True)
    targets = (torch.rand(3, 6, 6, generator=g) > 0.5).float()
    labels = torch.tensor([2, 0, 2])
    loss = mask_bce_loss(logits, targets, labels)
    expected = F.binary_cross_entropy_with_logits(logits[torch.arange(3), labels], targets)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grad_norm = logits.grad.abs().sum(dim=(2, 3))  # (P, C)
    for p, c in enumerate(labels.tolist()):
        assert grad_norm[p, c] > 0
        assert (grad_norm[p, torch.arange(4) != c] == 0).all()
    # class-agnostic head and the registered wrapper (labels as third positional)
    agn = torch.randn(3, 1, 6, 6, generator=g)
    torch.testing.assert_close(mask_bce_loss(agn, targets, labels),
                               F.binary_cross_entropy_with_logits(agn[:, 0], targets))
    crit = MODELS.build(dict(type='CrossEntropyLoss', use_mask=True, loss_weight=2.0))
    torch.testing.assert_close(crit(logits, targets, labels), 2 * expected)
    torch.testing.assert_close(crit(logits, targets, labels=labels), 2 * expected)
    empty = torch.zeros(0, 4, 6, 6, requires_grad=True)
    assert mask_bce_loss(empty, torch.zeros(0, 6, 6), torch.zeros(0, dtype=torch.long)).item() == 0


def test_mask_softmax_loss_couples_classes():
    logits = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)  # 3 classes + background
    targets = (torch.rand(2, 5, 5, generator=g) > 0.5).float()
    labels = torch.tensor([1, 2])
    loss = mask_softmax_loss(logits, targets, labels)
    pix = torch.where(targets > 0, labels.view(-1, 1, 1), torch.full_like(labels.view(-1, 1, 1), 3))
    torch.testing.assert_close(loss, F.cross_entropy(logits, pix))
    loss.backward()
    assert (logits.grad.abs().sum(dim=(2, 3)) > 0).all()  # every class channel gets gradient


def test_accuracy():
    logits = torch.tensor([[2., 1., 0.], [0., 1., 2.], [1., 2., 0.], [0., 2., 1.]])
    labels = torch.tensor([0, 2, 0, 2])
    torch.testing.assert_close(accuracy(logits, labels), torch.tensor([50.]))
    assert [a.item() for a in accuracy(logits, labels, topk=(1, 2))] == [50., 100.]
    assert accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0


@pytest.mark.parametrize('use_sigmoid', [False, True])
def test_cross_entropy_wrapper(use_sigmoid):
    crit = MODELS.build(dict(type='CrossEntropyLoss', use_sigmoid=use_sigmoid, loss_weight=0.5))
    w = torch.rand(12, generator=g)
    fn = binary_cross_entropy if use_sigmoid else cross_entropy
    torch.testing.assert_close(crit(LOGITS, LABELS, w, avg_factor=7),
                               0.5 * fn(LOGITS, LABELS, w, avg_factor=7))
    assert crit(LOGITS, LABELS, reduction_override='none').shape[0] == 12


def test_losses_under_autocast_are_fp32():
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = cross_entropy(LOGITS.bfloat16(), LABELS)
        reg = smooth_l1_loss(LOGITS.bfloat16(), LOGITS.bfloat16() + 1)
    assert loss.dtype == torch.float32 and reg.dtype == torch.float32
    torch.testing.assert_close(loss, cross_entropy(LOGITS, LABELS), atol=0.05, rtol=0.05)
