"""Otsu's threshold, batched (timm_fgvc/layers/otsu.py; CAA's object mask M_b)."""
import numpy as np
import torch

from timm_fgvc.layers import mask_bounding_box, otsu_mask, otsu_threshold


def reference_otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu (1979) written out per threshold: the split of the histogram with the largest between-class
    variance; returns the upper edge of the lower class's last bin."""
    hist, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_t = -1.0, None
    for t in range(1, bins):  # lower class = bins [0, t)
        w0, w1 = hist[:t].sum(), hist[t:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (hist[:t] * centers[:t]).sum() / w0
        m1 = (hist[t:] * centers[t:]).sum() / w1
        between = w0 * w1 * (m0 - m1) ** 2
        if between > best * (1 + 1e-9):
            best, best_t = between, edges[t]
    return best_t


def test_otsu_threshold_matches_the_reference_per_image():
    g = torch.Generator().manual_seed(0)
    maps = torch.cat([torch.rand(3, 400, generator=g) * 0.6,
                      0.5 + torch.rand(3, 200, generator=g) * torch.tensor([[0.5], [0.3], [0.9]])], 1)
    maps = maps * torch.tensor([[1.], [3.], [0.2]]) - torch.tensor([[0.], [1.], [5.]])  # per-image range
    thresholds = otsu_threshold(maps)
    for b in range(3):
        expected = reference_otsu(maps[b].double().numpy())
        scale = max(1.0, float(maps[b].abs().max()))
        assert abs(float(thresholds[b]) - expected) <= 1e-5 * scale, (b, float(thresholds[b]), expected)


def test_otsu_mask_recovers_a_planted_object_in_every_image():
    """Maps with a bright object on a noisy background, different contrast and offset per image: the mask and
    its bounding box recover each object."""
    torch.manual_seed(0)
    maps = torch.rand(4, 28, 28) * 0.3
    truth = torch.zeros(4, 28, 28, dtype=torch.bool)
    for b, (y, x, h, w) in enumerate([(2, 3, 10, 12), (10, 10, 14, 6), (0, 20, 28, 8), (15, 1, 9, 20)]):
        truth[b, y:y + h, x:x + w] = True
    maps = torch.where(truth, maps + 0.6, maps) * torch.tensor([1., 5., 0.1, 2.])[:, None, None]
    maps = maps + torch.tensor([0., -3., 10., 0.5])[:, None, None]
    mask = otsu_mask(maps)
    assert torch.equal(mask, truth)
    assert torch.equal(mask_bounding_box(mask), mask_bounding_box(truth))


def test_constant_map_gives_an_empty_mask():
    maps = torch.stack([torch.full((6, 6), 0.3), torch.rand(6, 6)])
    mask = otsu_mask(maps)
    assert not mask[0].any() and mask[1].any() and not mask[1].all()
    assert otsu_threshold(maps)[0] == torch.tensor(0.3)
