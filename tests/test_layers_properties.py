"""Property tests (hypothesis) for the shared layers: random shapes and sizes, fp32 and bf16, and degenerate maps
(constant, all-zero, one hot cell, many ties, large finite extremes). Each test checks that nothing crashes or
produces NaN and that the layer's documented invariant holds. Derandomized, so CI sees the same examples."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import nms as torchvision_nms

from timm_fgvc.layers import (SaliencySampler, anchor_boxes, box_iou, circulant_alignment, crop_regions, find_peaks,
                              nms_top_k, oriented_pooling, otsu_mask, otsu_threshold)

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
KINDS = ('random', 'constant', 'zeros', 'one_hot', 'ties', 'extreme')
kinds = st.sampled_from(KINDS)
dtypes = st.sampled_from([torch.float32, torch.bfloat16])
seeds = st.integers(0, 2 ** 16)


def make_maps(kind, shape, seed, dtype, nonnegative=False, big=None):
    """`shape[0]` maps of one degenerate (or random) kind, in `dtype`; 'extreme' reaches `big`, by default the
    dtype's largest finite value."""
    g = torch.Generator().manual_seed(seed)
    if kind == 'random':
        x = torch.randn(shape, generator=g)
    elif kind == 'constant':
        x = torch.full(shape, float(torch.randn(1, generator=g)) * 10)
    elif kind == 'zeros':
        x = torch.zeros(shape)
    elif kind == 'one_hot':  # one hot cell per map
        flat = torch.zeros(shape[0], int(torch.tensor(shape[1:]).prod()))
        hot = torch.randint(0, flat.shape[1], (shape[0],), generator=g)
        flat[torch.arange(shape[0]), hot] = 1 + torch.rand(shape[0], generator=g)
        x = flat.view(shape)
    elif kind == 'ties':  # few distinct values: plateaus everywhere
        x = torch.randint(0, 3, shape, generator=g).float()
    else:  # 'extreme'
        big = big or torch.finfo(dtype).max
        x = torch.randint(-1, 2, shape, generator=g).float() * big * (0.5 + 0.5 * torch.rand(shape, generator=g))
    if nonnegative:
        x = x.abs()
    return x.to(dtype)


# --- peaks ---------------------------------------------------------------------------------------------------
def _plateau_representatives(m, window, threshold):
    """Reference: the qualifying local maxima of a 2-D map grouped into plateaus (cells within each other's window),
    each plateau's first cell in raster order -> its value."""
    r = window // 2
    H, W = m.shape
    floor = m.min()
    cells = [(i, j) for i in range(H) for j in range(W)
             if m[i, j] == m[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].max()
             and m[i, j] >= threshold and m[i, j] > floor]
    parent = {c: c for c in cells}

    def root(c):
        while parent[c] != c:
            c = parent[c]
        return c
    for a, b in itertools.combinations(cells, 2):
        if max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= r:
            parent[max(root(a), root(b))] = min(root(a), root(b))
    return {c: float(m[c]) for c in cells if root(c) == c}


@PROPERTY
@given(kind=kinds, dtype=dtypes, seed=seeds, batch=st.integers(1, 3), height=st.integers(1, 10),
       width=st.integers(1, 10), window=st.sampled_from([1, 3, 5]), max_peaks=st.integers(1, 12))
def test_peaks_are_one_local_maximum_per_plateau_above_the_mean(kind, dtype, seed, batch, height, width, window,
                                                                max_peaks):
    maps = make_maps(kind, (batch, height, width), seed, dtype)
    peaks = find_peaks(maps, window=window, max_peaks=max_peaks)
    assert peaks.coords.shape == (batch, max_peaks, 2) and peaks.scores.dtype == torch.float32
    assert not peaks.scores.isnan().any()
    values = maps.float()
    for b in range(batch):
        mask = peaks.mask[b]
        count = int(mask.sum())
        assert mask[:count].all() and not mask[count:].any()  # real peaks first, then padding
        assert (peaks.scores[b, count:] == 0).all() and (peaks.coords[b, count:] == 0).all()
        real = [tuple(c) for c in peaks.coords[b, :count].tolist()]
        scores = peaks.scores[b, :count]
        assert (scores[:-1] >= scores[1:]).all()  # sorted, best first
        assert all(values[b][c] == s for c, s in zip(real, scores.tolist()))
        expected = _plateau_representatives(values[b], window, values[b].mean())
        assert set(real) <= set(expected)  # local max, >= mean, > min, the first cell of its plateau
        assert count == min(max_peaks, len(expected))
        dropped = [v for c, v in expected.items() if c not in real]
        assert not dropped or max(dropped) <= scores.min()  # the highest ones are kept
        if kind in ('constant', 'zeros'):
            assert count == 0
        if kind == 'one_hot' and height * width > 1:  # (a single cell is also the minimum: no peak)
            assert count == 1 and real[0] == tuple(divmod(int(values[b].argmax()), width))


# --- Otsu ----------------------------------------------------------------------------------------------------
@PROPERTY
@given(kind=kinds, dtype=dtypes, seed=seeds, batch=st.integers(1, 3), height=st.integers(1, 12),
       width=st.integers(2, 12), bins=st.sampled_from([2, 16, 256]))
def test_otsu_threshold_lies_in_the_range_and_the_mask_is_the_values_above_it(kind, dtype, seed, batch, height,
                                                                              width, bins):
    maps = make_maps(kind, (batch, height, width), seed, dtype)
    threshold = otsu_threshold(maps, bins)
    mask = otsu_mask(maps, bins)
    assert threshold.shape == (batch,) and threshold.dtype == dtype and mask.shape == maps.shape
    assert torch.isfinite(threshold).all()
    flat = maps.float().flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    assert (threshold.float() >= low).all() and (threshold.float() <= high).all()
    exact = otsu_threshold(maps.float(), bins).float()  # the same values' threshold, not rounded to bf16
    span = (high - low)
    above = flat >= exact[:, None]  # the mask is decided per bin: a value on the upper edge's bin is above it
    near = (flat - exact[:, None]).abs() <= 1e-5 * span[:, None]  # float rounding of the bin index
    assert ((mask.flatten(1) == above) | near).all()
    for b in range(batch):
        if high[b] > low[b]:  # two classes: the maximum is above the threshold, the minimum below
            assert mask.flatten(1)[b, flat[b].argmax()] and not mask.flatten(1)[b, flat[b].argmin()]
        else:  # a constant map: its value, an empty mask
            assert threshold[b].float() == low[b] and not mask[b].any()


# --- saliency sampler ----------------------------------------------------------------------------------------
@PROPERTY
@given(kind=kinds, dtype=dtypes, seed=seeds, batch=st.integers(1, 2), grid_size=st.integers(2, 9),
       padding=st.integers(1, 6), fwhm=st.floats(1.0, 8.0), map_h=st.integers(1, 9), map_w=st.integers(1, 9),
       out_h=st.integers(2, 12), out_w=st.integers(2, 12))
def test_saliency_sampler_grid_stays_in_the_image_without_fold_over_and_mirrors(kind, dtype, seed, batch, grid_size,
                                                                                padding, fwhm, map_h, map_w,
                                                                                out_h, out_w):
    sampler = SaliencySampler(grid_size=grid_size, padding=padding, fwhm=fwhm)
    # saliency up to 1e30: the kernel sums (G + 2P)^2 products of Q and coordinates in float32
    saliency = make_maps(kind, (batch, map_h, map_w), seed, dtype, nonnegative=True, big=1e30)
    value = 0.25 + seed % 7
    images = torch.full((batch, 2, 6, 5), value, dtype=dtype)
    resampled, grid = sampler(images, saliency, (out_h, out_w))
    assert grid.shape == (batch, out_h, out_w, 2) and grid.dtype == torch.float32
    assert torch.isfinite(grid).all() and grid.abs().max() <= 1
    assert resampled.dtype == dtype and torch.allclose(resampled.float(), torch.full_like(resampled.float(), value),
                                                       rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    # each cell moves to a weighted mean of coordinates under a shifted Gaussian: x grows along a row, y down a column
    assert (grid[:, :, 1:, 0] - grid[:, :, :-1, 0] >= -1e-5).all()
    assert (grid[:, 1:, :, 1] - grid[:, :-1, :, 1] >= -1e-5).all()
    # a mirrored saliency gives the mirrored grid
    mirrored = sampler.sampling_grid(saliency.flip(-1), (out_h, out_w))
    assert torch.allclose(mirrored, grid.flip(2) * torch.tensor([-1., 1.]), atol=1e-4)
    if kind in ('constant', 'zeros'):  # flat saliency: the identity grid
        y, x = torch.meshgrid(torch.linspace(-1, 1, out_h), torch.linspace(-1, 1, out_w), indexing='ij')
        assert torch.allclose(grid, torch.stack((x, y), -1).expand_as(grid), atol=1e-4)


# --- anchors -------------------------------------------------------------------------------------------------
@PROPERTY
@given(map_h=st.integers(1, 5), map_w=st.integers(1, 5), height=st.integers(16, 128), width=st.integers(16, 128),
       sizes=st.lists(st.floats(4.0, 160.0), min_size=1, max_size=3),
       ratios=st.lists(st.floats(0.25, 4.0), min_size=1, max_size=3), border=st.sampled_from(['pad', 'shift', 'clip']))
def test_anchors_are_centred_on_their_cells_with_the_requested_sizes_and_ratios(map_h, map_w, height, width, sizes,
                                                                                ratios, border):
    boxes = anchor_boxes((map_h, map_w), (height, width), sizes, ratios, border=border).double()
    num = len(sizes) * len(ratios)
    assert boxes.shape == (map_h * map_w * num, 4) and torch.isfinite(boxes).all()
    tol = 1e-3
    for cell, (s, size), (r, ratio) in itertools.product(range(map_h * map_w), enumerate(sizes), enumerate(ratios)):
        x1, y1, x2, y2 = boxes[cell * num + s * len(ratios) + r].tolist()  # index = cell * A + size * R + ratio
        cx, cy = (cell % map_w + 0.5) * width / map_w, (cell // map_w + 0.5) * height / map_h
        box_w, box_h = size * ratio ** 0.5, size / ratio ** 0.5
        if border == 'pad':  # as proposed: centred on the cell, the requested size and ratio
            assert abs((x1 + x2) / 2 - cx) < tol and abs((y1 + y2) / 2 - cy) < tol
            assert abs(x2 - x1 - box_w) < tol and abs(y2 - y1 - box_h) < tol
            continue
        assert -tol <= x1 <= x2 <= width + tol and -tol <= y1 <= y2 <= height + tol  # inside the image
        for lo, hi, centre, extent, limit in ((x1, x2, cx, box_w, width), (y1, y2, cy, box_h, height)):
            if border == 'clip':  # the proposed box cut at the border
                expected = (max(0., centre - extent / 2), min(limit, centre + extent / 2))
            elif extent <= limit:  # 'shift': same size, moved the least to fit
                start = min(max(0., centre - extent / 2), limit - extent)
                expected = (start, start + extent)
            else:  # larger than the image: the whole side
                expected = (0., float(limit))
            assert abs(lo - expected[0]) < tol and abs(hi - expected[1]) < tol


# --- NMS -----------------------------------------------------------------------------------------------------
@PROPERTY
@given(kind=kinds, dtype=dtypes, seed=seeds, batch=st.integers(1, 3), num=st.integers(1, 24), k=st.integers(1, 8),
       iou_threshold=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 1.0]), with_valid=st.booleans(),
       duplicates=st.booleans())
def test_nms_keeps_sorted_non_overlapping_boxes_and_suppresses_the_rest(kind, dtype, seed, batch, num, k,
                                                                        iou_threshold, with_valid, duplicates):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, num, 2, generator=g) * 40
    size = torch.rand(batch, num, 2, generator=g) * 30 * (torch.rand(batch, num, 1, generator=g) > 0.1)  # some empty
    boxes = torch.cat([corner, corner + size], -1)
    if duplicates:
        boxes[:, num // 2:] = boxes[:, :num - num // 2].clone()
    scores = make_maps(kind, (batch, num), seed, dtype)
    valid = torch.rand(batch, num, generator=g) > 0.3 if with_valid else None
    regions = nms_top_k(boxes, scores, k, iou_threshold, valid)
    assert regions.boxes.shape == (batch, k, 4) and not regions.scores.isnan().any()
    for b in range(batch):
        count = int(regions.mask[b].sum())
        assert regions.mask[b, :count].all() and not regions.mask[b, count:].any()  # real slots first
        kept = regions.indices[b, :count].tolist()
        assert len(set(kept)) == count
        candidates = [i for i in range(num) if valid is None or valid[b, i]]
        assert set(kept) <= set(candidates)
        score = scores[b].float()
        assert torch.equal(regions.scores[b, :count], score[kept]) and (regions.scores[b, count:] == 0).all()
        assert (regions.scores[b, :count][:-1] >= regions.scores[b, :count][1:]).all()  # sorted
        assert torch.equal(regions.boxes[b, :count], boxes[b, kept])
        assert (regions.boxes[b, count:] == boxes[b, regions.indices[b, 0]]).all()  # padding repeats the best box
        iou = box_iou(boxes[b, kept], boxes[b, kept])
        assert (iou[~torch.eye(count, dtype=torch.bool)] <= iou_threshold).all()  # pairwise IoU <= threshold
        # greedy: each box left out was suppressed by a kept box at least as good, or every slot was taken
        for i in set(candidates) - set(kept):
            suppressed = any(box_iou(boxes[b, j:j + 1], boxes[b, i:i + 1])[0, 0] > iou_threshold
                             and score[j] >= score[i] for j in kept)
            assert suppressed or (count == k and score[i] <= score[kept[-1]])
        reference = torchvision_nms(boxes[b, candidates], score[candidates], iou_threshold) if candidates else []
        assert count == min(k, len(reference))


# --- crop-and-zoom -------------------------------------------------------------------------------------------
@PROPERTY
@given(dtype=dtypes, seed=seeds, batch=st.integers(1, 2), channels=st.integers(1, 3), height=st.integers(4, 24),
       width=st.integers(4, 24), num=st.integers(1, 3), out_h=st.integers(1, 12), out_w=st.integers(1, 12),
       sampling_ratio=st.integers(1, 2), big=st.booleans())
def test_crops_of_a_constant_image_are_constant_and_the_full_box_is_a_resize(dtype, seed, batch, channels, height,
                                                                             width, num, out_h, out_w,
                                                                             sampling_ratio, big):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, num, 2, generator=g) * torch.tensor([width, height]) * 0.8
    far = corner + torch.rand(batch, num, 2, generator=g) * (torch.tensor([width, height]) - corner)
    boxes = torch.cat([corner, torch.maximum(far, corner + 0.25)], -1)  # inside the image
    value = 1e30 if big else float(torch.randn(1, generator=g)) * 5  # (roi_align sums its samples first)
    constant = torch.full((batch, channels, height, width), value, dtype=dtype)
    crops = crop_regions(constant, boxes, (out_h, out_w), sampling_ratio)
    assert crops.shape == (batch, num, channels, out_h, out_w) and crops.dtype == dtype
    assert torch.isfinite(crops).all()
    expected = torch.full_like(crops.float(), float(constant[0, 0, 0, 0]))
    assert torch.allclose(crops.float(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    # the whole image as its box: the bilinear resize (sampling_ratio 1)
    images = make_maps('random', (batch, channels, height, width), seed, dtype)
    whole = torch.tensor([0., 0., width, height]).expand(batch, 1, 4)
    resized = F.interpolate(images.float(), size=(out_h, out_w), mode='bilinear', align_corners=False).to(dtype)
    assert torch.allclose(crop_regions(images, whole, (out_h, out_w))[:, 0].float(), resized.float(),
                          atol=2e-2 if dtype == torch.bfloat16 else 1e-5)
    # a box more than a pixel outside the image reads zeros
    outside = torch.tensor([width + 2., 0., width + 6., height]).expand(batch, 1, 4)
    assert (crop_regions(images, outside, (out_h, out_w)) == 0).all()


# --- circulant alignment -------------------------------------------------------------------------------------
@PROPERTY
@given(kind=st.sampled_from(KINDS[:-1]), dtype=dtypes, seed=seeds, batch=st.integers(1, 2), parts=st.integers(1, 3),
       scales=st.integers(1, 6), dim=st.integers(1, 5), classes=st.integers(1, 4), shift=st.integers(0, 5))
def test_circulant_alignment_is_invariant_to_a_cyclic_shift_of_the_scales(kind, dtype, seed, batch, parts, scales, dim,
                                                                          classes, shift):
    candidates = make_maps(kind, (batch, parts, scales, dim), seed, dtype)
    weight = make_maps('random', (parts, classes, scales, dim), seed + 1, dtype)
    direct = circulant_alignment(candidates, weight, 'direct')
    assert direct.shape == (batch, parts, classes) and direct.dtype == torch.float32
    assert torch.isfinite(direct).all()
    tol = dict(atol=1e-4, rtol=1e-4)
    assert torch.allclose(circulant_alignment(candidates, weight, 'fft'), direct, **tol)  # the two forms agree
    rolled = torch.roll(candidates, shift, dims=2)
    for method in ('direct', 'fft'):  # Eq. 7's max over shifts: the candidates' scale order does not matter
        assert torch.allclose(circulant_alignment(rolled, weight, method), direct, **tol), method
    # and the response is at least the unshifted one (r = 0)
    unshifted = torch.einsum('bksd,kcsd->bkc', candidates.float(), weight.float())
    assert (direct >= unshifted - 1e-4 * (1 + unshifted.abs())).all()


# --- oriented pooling ----------------------------------------------------------------------------------------
@PROPERTY
@given(kind=kinds, dtype=dtypes, seed=seeds, batch=st.integers(1, 2), channels=st.integers(1, 3),
       grid=st.integers(2, 4), stride_h=st.integers(1, 3), stride_w=st.integers(1, 3), patch=st.integers(1, 3))
def test_oriented_pooling_is_the_row_and_column_maxima_in_four_orientations(kind, dtype, seed, batch, channels, grid,
                                                                            stride_h, stride_w, patch):
    height, width = (grid - 1) * stride_h + patch, (grid - 1) * stride_w + patch
    x = make_maps(kind, (batch, channels, height, width), seed, dtype)
    gamma = oriented_pooling(x, patch, grid)
    assert gamma.shape == (batch, 4, grid * channels * patch * patch) and gamma.dtype == dtype
    assert not gamma.isnan().any()
    patches = x.unfold(2, patch, stride_h).unfold(3, patch, stride_w)  # [B, D, G, G, p, p]
    vectors = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, grid, grid, -1)  # x_ij
    p, q = vectors.amax(2), vectors.amax(1)  # Eq. 9-10: max over each row, each column of the patch grid
    g4 = gamma.view(batch, 4, grid, -1)
    assert torch.equal(g4[:, 0], p) and torch.equal(g4[:, 1], q)
    assert torch.equal(g4[:, 2], p.flip(1)) and torch.equal(g4[:, 3], q.flip(1))  # Eq. 11-12: reversed
    if patch == 1 and stride_h == stride_w:  # a square map's 90-degree turns permute the four orientations
        counter = oriented_pooling(torch.rot90(x, 1, (2, 3)), 1, grid)
        assert torch.equal(counter, gamma[:, [3, 0, 1, 2]])
        clockwise = oriented_pooling(torch.rot90(x, -1, (2, 3)), 1, grid)
        assert torch.equal(clockwise, gamma[:, [1, 2, 3, 0]])
    if patch == 1:  # a left-right mirror keeps the rows and reverses the columns' order
        assert torch.equal(oriented_pooling(x.flip(-1), 1, grid), gamma[:, [0, 3, 2, 1]])


@PROPERTY
@given(size=st.integers(1, 20), patch=st.integers(1, 4), grid=st.integers(2, 5))
def test_oriented_pooling_refuses_a_map_without_evenly_spaced_sub_patches(size, patch, grid):
    stride, remainder = divmod(size - patch, grid - 1)
    x = torch.zeros(1, 1, size, size)
    if stride >= 1 and not remainder:
        assert oriented_pooling(x, patch, grid).shape == (1, 4, grid * patch * patch)
    else:
        with pytest.raises(ValueError, match='evenly spaced'):
            oriented_pooling(x, patch, grid)
