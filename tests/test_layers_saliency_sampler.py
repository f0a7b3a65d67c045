"""Tests for timm_fgvc.layers.saliency_sampler (Learning to Zoom sampler, S3N Eq. 7-8)."""
import math

import pytest
import torch
import torch.nn.functional as F

from timm_fgvc.layers import SaliencySampler


@pytest.fixture(scope='module')
def sampler():
    return SaliencySampler()


def _identity_grid(h, w):
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
    return torch.stack((x, y), dim=-1)


def _smooth_image(h, w, b=2):
    grid = _identity_grid(h, w)
    x, y = grid[..., 0], grid[..., 1]
    return torch.stack([torch.sin(2 * x) + torch.cos(3 * y), x * y, x]).expand(b, -1, -1, -1).contiguous()


def _bump(n, cx, cy, sigma=0.12, base=0.05):
    """A Gaussian bump at (cx, cy) in [-1, 1] image coordinates on an n x n map covering the image."""
    t = (torch.arange(n) + 0.5) / n * 2 - 1
    y, x = torch.meshgrid(t, t, indexing='ij')
    return base + torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))


def _square(h, w, cx, cy, r=4):
    img = torch.zeros(1, 1, h, w)
    px, py = round((cx + 1) / 2 * (w - 1)), round((cy + 1) / 2 * (h - 1))
    img[..., py - r:py + r, px - r:px + r] = 1.0
    return img


PEAK = (0.3, -0.2)  # (x, y): right of and above the centre; the image is not square, so x/y swaps show


def test_flat_saliency_is_the_identity(sampler):
    img = _smooth_image(48, 64)
    for saliency in (torch.full((2, 14, 14), 0.3), torch.zeros(2, 7, 9)):
        out, grid = sampler(img, saliency)
        assert out.shape == img.shape
        assert (grid - _identity_grid(48, 64)).abs().max() < 1e-5
        assert (out - img).abs().max() < 1e-4


def test_flat_saliency_with_output_size_is_a_bilinear_resize(sampler):
    img = _smooth_image(48, 64)
    out, grid = sampler(img, torch.ones(2, 14, 14), output_size=(24, 40))
    assert grid.shape == (2, 24, 40, 2)
    expected = F.interpolate(img, size=(24, 40), mode='bilinear', align_corners=True)
    assert (out - expected).abs().max() < 1e-4


def test_peak_region_is_magnified_and_stays_in_place(sampler):
    h, w = 80, 96
    square = _square(h, w, *PEAK)
    out, _ = sampler(square, _bump(31, *PEAK)[None])
    ratio = (out > 0.5).sum() / (square > 0.5).sum()
    assert ratio > 1.5  # measured 5.0
    # magnified around the peak: the square's centre of mass barely moves
    ys, xs = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
    ys0, xs0 = torch.nonzero(square[0, 0] > 0.5, as_tuple=True)
    assert abs(xs.float().mean() - xs0.float().mean()) < 2 and abs(ys.float().mean() - ys0.float().mean()) < 2


def test_region_near_the_peak_shrinks(sampler):
    h, w = 80, 96
    square = _square(h, w, -0.3, 0.3)
    out, _ = sampler(square, _bump(31, *PEAK)[None])
    assert (out > 0.5).sum() / (square > 0.5).sum() < 0.95  # measured 0.81


def test_same_grid_from_any_saliency_resolution(sampler):
    ref = sampler.sampling_grid(_bump(224, *PEAK, sigma=0.15)[None], (64, 64))
    for n in (14, 31, 96):
        grid = sampler.sampling_grid(_bump(n, *PEAK, sigma=0.15)[None], (64, 64))
        assert (grid - ref).abs().max() < 0.01


def test_grid_is_monotonic_no_fold_over(sampler):
    torch.manual_seed(0)
    saliency = torch.cat([_bump(14, *PEAK)[None], torch.exp(3 * torch.randn(3, 14, 14))])  # up to 1e9 contrast
    grid = sampler.sampling_grid(saliency, (50, 70))
    x, y = grid[..., 0], grid[..., 1]
    assert grid.abs().max() <= 1
    assert (x.diff(dim=2) > -1e-6).all() and (y.diff(dim=1) > -1e-6).all()  # float rounding only
    # strictly increasing on the grid nodes, except where clamped at the border
    nodes = sampler.sampling_grid(saliency, (31, 31))
    for d, axis in ((2, 0), (1, 1)):
        c = nodes[..., axis]
        step, inside = c.diff(dim=d), (c.narrow(d, 1, 30).abs() < 1) & (c.narrow(d, 0, 30).abs() < 1)
        assert (step[inside] > 0).all()


def test_matches_explicit_eq7_eq8_on_the_grid(sampler):
    """The conv implementation equals the weighted average of Eq. 7-8 written out over all cells v'."""
    torch.manual_seed(1)
    saliency = torch.rand(1, 9, 11) + 0.1
    G, P = sampler.grid_size, sampler.padding
    q = sampler._padded_saliency(saliency)[0, 0]  # Q(v') on the padded grid
    assert torch.equal(q, F.pad(q[None, None, P:-P, P:-P], (P,) * 4, mode='replicate')[0, 0])
    t = torch.arange(G + 2 * P, dtype=torch.float64)
    coord = (t - P) * 2 / (G - 1) - 1
    i = torch.arange(G, dtype=torch.float64) + P  # grid cell v in padded index
    # separable Gaussian k(v', v) of FWHM 13 cells, truncated to the 61 x 61 window
    d = t[None, :] - i[:, None]
    k1 = torch.exp(-4 * math.log(2) * d ** 2 / 13.0 ** 2) * (d.abs() <= P)
    wq = torch.einsum('ya,xb,ab->yx', k1, k1, q.double())
    fx = torch.einsum('ya,xb,ab,b->yx', k1, k1, q.double(), coord) / wq  # Eq. 7
    gy = torch.einsum('ya,xb,ab,a->yx', k1, k1, q.double(), coord) / wq  # Eq. 8
    grid = sampler.sampling_grid(saliency, (G, G))[0]
    torch.testing.assert_close(grid[..., 0].double(), fx.clamp(-1, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(grid[..., 1].double(), gy.clamp(-1, 1), atol=1e-5, rtol=0)


def test_gradients_reach_the_saliency(sampler):
    beta = torch.tensor(0.12, requires_grad=True)  # a learnable width, as S3N's beta
    t = (torch.arange(14) + 0.5) / 14 * 2 - 1
    y, x = torch.meshgrid(t, t, indexing='ij')
    saliency = 0.05 + torch.exp(-((x - PEAK[0]) ** 2 + (y - PEAK[1]) ** 2) / (2 * beta ** 2))
    saliency.retain_grad()
    img = _smooth_image(32, 32, b=1)
    out, _ = sampler(img, saliency[None])
    out.square().mean().backward()
    assert saliency.grad is not None and saliency.grad.abs().sum() > 0
    assert torch.isfinite(beta.grad) and beta.grad != 0


def test_bf16_autocast_and_bf16_images_close_to_float32(sampler):
    img, saliency = _smooth_image(40, 48), torch.stack([_bump(14, *PEAK), _bump(14, -0.4, 0.1)])
    ref, ref_grid = sampler(img, saliency)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, grid = sampler(img, saliency.bfloat16())
    assert grid.dtype == torch.float32 and out.dtype == torch.float32
    assert (grid - ref_grid).abs().max() < 1e-2 and (out - ref).abs().max() < 2e-2
    out16, _ = sampler(img.bfloat16(), saliency)
    assert out16.dtype == torch.bfloat16 and (out16.float() - ref).abs().max() < 3e-2


def test_channels_last_and_module_cast(sampler):
    img, saliency = _smooth_image(40, 48), _bump(14, *PEAK)[None].expand(2, -1, -1)
    ref, _ = sampler(img, saliency)
    out, _ = sampler(img.to(memory_format=torch.channels_last), saliency)
    torch.testing.assert_close(out, ref)
    cast = SaliencySampler().to(torch.bfloat16)  # buffers are cast; the grid is still computed in float32
    assert len(cast.state_dict()) == 0 and not list(cast.parameters())
    out, _ = cast(img, saliency)
    assert (out - ref).abs().max() < 2e-2
