import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

from cascade_seg.models.task_utils import mask_targets, paste_masks


def rect_masks(h, w, rects):
    m = torch.zeros(len(rects), h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        m[i, y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------- mask targets
def test_target_of_gt_box_is_all_ones():
    gt = rect_masks(40, 50, [(10, 5, 30, 25), (0, 0, 8, 8)])
    t = mask_targets(torch.tensor([[10., 5., 30., 25.]]), torch.tensor([0]), gt, 14)
    assert t.shape == (1, 14, 14) and t.dtype == torch.float32
    assert torch.equal(t, torch.ones(1, 14, 14))


def test_target_half_box_crop():
    gt = rect_masks(40, 50, [(10, 5, 30, 25)])
    # box twice as wide as the object, object on its right half
    t = mask_targets(torch.tensor([[-10., 5., 30., 25.]]), torch.tensor([0]), gt, 8, clip=False)
    assert torch.equal(t[0, :, 4:], torch.ones(8, 4)) and torch.equal(t[0, :, :4], torch.zeros(
        8, 4))
    # MMDetection clips the box to the mask frame first
    clipped = mask_targets(torch.tensor([[-10., 5., 30., 25.]]), torch.tensor([0]), gt, 8)
    assert torch.equal(clipped,
                       mask_targets(torch.tensor([[0., 5., 30., 25.]]), torch.tensor([0]), gt, 8))
    assert clipped[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]


def test_targets_pick_the_assigned_gt_and_chunking_is_equal():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(5, 30, 40, generator=g) > 0.5
    xy = torch.rand(9, 2, generator=g) * 25
    boxes = torch.cat([xy, xy + torch.rand(9, 2, generator=g) * 15 + 1], 1)
    inds = torch.tensor([4, 0, 4, 2, 2, 2, 0, 1, 4])
    full = mask_targets(boxes, inds, gt, (7, 9), binarize=False)
    assert full.shape == (9, 7, 9)
    chunked = mask_targets(boxes, inds, gt, (7, 9), binarize=False,
                           chunk_elems=1)  # one GT at a time
    assert torch.equal(full, chunked)
    for i in range(9):  # each target only depends on its own GT
        single = mask_targets(boxes[i:i + 1],
                              torch.tensor([0]),
                              gt[inds[i]:inds[i] + 1], (7, 9),
                              binarize=False)
        torch.testing.assert_close(full[i:i + 1], single)
    assert torch.equal(mask_targets(boxes, inds, gt, (7, 9)), (full >= 0.5).float())


def test_targets_torchvision_mode():
    g = torch.Generator().manual_seed(1)
    gt = (torch.rand(3, 30, 40, generator=g) > 0.5)
    xy = torch.rand(6, 2, generator=g) * 25
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 15 + 1], 1)
    inds = torch.tensor([0, 1, 2, 2, 1, 0])
    ours = mask_targets(boxes,
                        inds,
                        gt,
                        14,
                        aligned=False,
                        binarize=False,
                        clip=False,
                        sampling_ratio=-1)
    torch.testing.assert_close(ours, project_masks_on_boxes(gt, boxes, inds, 14))


def test_targets_empty():
    gt = rect_masks(10, 10, [(0, 0, 5, 5)])
    assert mask_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), gt,
                        28).shape == (0, 28, 28)
    assert mask_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, 10, 10, dtype=torch.bool), 28).shape == (0, 28, 28)


# ---------------------------------------------------------------- pasting
def reference_grid_sample_paste(probs, boxes, h, w):
    """Straightforward full-image version of MMDetection's _do_paste_mask."""
    n = probs.shape[0]
    x0, y0, x1, y1 = boxes.split(1, dim=1)
    img_y = torch.arange(h).float() + 0.5
    img_x = torch.arange(w).float() + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_x[torch.isinf(img_x)] = 0
    img_y[torch.isinf(img_y)] = 0
    grid = torch.stack([img_x[:, None, :].expand(n, h, w), img_y[:, :, None].expand(n, h, w)],
                       dim=3)
    return F.grid_sample(probs[:, None], grid, align_corners=False)[:, 0]


def paste_case(seed=0, n=10, h=60, w=80):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 5
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 0.5], 1)
    boxes[0] = torch.tensor([-15., -3., w + 10., 30.])  # larger than the image
    boxes[1] = torch.tensor([20., 10., 20., 40.])  # zero width
    return probs, boxes, h, w


@pytest.mark.parametrize('threshold', [0.5, 0.3, None])
def test_paste_grid_sample_equals_full_image_reference(threshold):
    probs, boxes, h, w = paste_case()
    ref = reference_grid_sample_paste(probs, boxes, h, w)
    if threshold is not None:
        ref = ref >= threshold
    for chunk in (1 << 24, 500, 1):  # chunking / memory path must not change anything
        out = paste_masks(probs, boxes, (h, w), threshold=threshold, chunk_elems=chunk)
        assert out.shape == (10, h, w)
        assert out.dtype == (torch.float32 if threshold is None else torch.bool)
        torch.testing.assert_close(out, ref, atol=0, rtol=0, equal_nan=True)


def test_paste_4d_input_and_empty():
    probs, boxes, h, w = paste_case(seed=2)
    assert torch.equal(paste_masks(probs[:, None], boxes, (h, w)),
                       paste_masks(probs, boxes, (h, w)))
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (h, w))
    assert out.shape == (0, h, w) and out.dtype == torch.bool


def test_paste_torchvision_mode_equals_torchvision():
    probs, boxes, h, w = paste_case(seed=1)
    boxes = boxes.clamp(min=0)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(max=w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=h)
    ref = paste_masks_in_image(probs[:, None], boxes, (h, w))[:, 0]
    out = paste_masks(probs, boxes, (h, w), threshold=None, mode='torchvision')
    assert torch.equal(out, ref)
    assert torch.equal(paste_masks(probs, boxes, (h, w), mode='torchvision'), ref >= 0.5)


def test_paste_full_box_mask_is_box():
    probs = torch.ones(1, 28, 28)
    out = paste_masks(probs, torch.tensor([[10., 20., 30., 25.]]), (40, 50))
    expected = torch.zeros(40, 50, dtype=torch.bool)
    expected[20:25, 10:30] = True
    assert torch.equal(out[0], expected)
