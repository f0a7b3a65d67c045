"""Tests for timm_fgvc.layers.peaks (S3N class peak responses)."""
import torch

from timm_fgvc.layers import find_peaks, peaks_to_image_coords, peaks_to_normalized_coords

PLANTED = [((3, 4), 1.0), ((9, 10), 0.8), ((10, 3), 0.6)]


def _gaussians(centres, size=14, sigma=1.0):
    r = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(r, r, indexing='ij')
    out = torch.zeros(size, size)
    for (cy, cx), h in centres:
        out += h * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))
    return out


def _planted_map():
    """Three peaks above the mean plus a small one at (2, 11) below the mean."""
    m = _gaussians(PLANTED) + _gaussians([((2, 11), 0.05)], sigma=0.7)
    assert m[2, 11] < m.mean()
    return m


def test_finds_exactly_the_planted_peaks_sorted():
    m = _planted_map()
    peaks = find_peaks(m[None], window=3, max_peaks=6)
    assert peaks.mask[0].tolist() == [True] * 3 + [False] * 3
    assert peaks.coords[0, :3].tolist() == [list(c) for c, _ in PLANTED]
    torch.testing.assert_close(peaks.scores[0, :3], torch.stack([m[c] for c, _ in PLANTED]))
    assert peaks.coords[0, 3:].abs().sum() == 0 and peaks.scores[0, 3:].abs().sum() == 0
    assert peaks.coords.dtype == torch.long and peaks.mask.dtype == torch.bool
    # the small peak is a local maximum: a lower threshold returns it
    low = find_peaks(m[None], max_peaks=6, min_value=0.01)
    assert low.mask[0].sum() == 4 and low.coords[0, 3].tolist() == [2, 11]


def test_batch_with_different_peak_counts():
    planted = _planted_map()
    single = _gaussians([((7, 7), 0.9)])
    constant = torch.full((14, 14), 0.5)
    maps = torch.stack([planted, constant, single, single])
    peaks = find_peaks(maps, max_peaks=4)
    assert peaks.mask.sum(1).tolist() == [3, 0, 1, 1]
    assert peaks.coords[2, 0].tolist() == [7, 7]
    assert peaks.scores[1].abs().sum() == 0
    # per-map thresholds: the last map's maximum is below its threshold, so it has no peak
    peaks = find_peaks(maps, max_peaks=4, min_value=torch.tensor([0.7, 0.0, 0.5, 0.95]))
    assert peaks.mask.sum(1).tolist() == [2, 0, 1, 0]


def test_max_peaks_keeps_the_highest_and_counts_those_cut():
    peaks = find_peaks(_planted_map()[None], max_peaks=2)
    assert peaks.mask.all()
    assert peaks.coords[0].tolist() == [[3, 4], [9, 10]]
    every = find_peaks(_planted_map()[None], max_peaks=16)
    assert peaks.found.tolist() == every.found.tolist() == [int(every.mask.sum())] and every.found.item() > 2


def test_window_suppresses_close_lower_peaks():
    m = _gaussians([((5, 5), 1.0), ((5, 7), 0.7)], size=12, sigma=0.5)
    assert find_peaks(m[None], window=3).mask.sum() == 2
    peaks = find_peaks(m[None], window=5)
    assert peaks.mask.sum() == 1 and peaks.coords[0, 0].tolist() == [5, 5]


def test_more_slots_than_cells_is_padded():
    m = torch.zeros(1, 3, 3)
    m[0, 1, 2] = 1.0
    peaks = find_peaks(m, max_peaks=16)
    assert peaks.coords.shape == (1, 16, 2) and peaks.mask.sum() == 1
    assert peaks.coords[0, 0].tolist() == [1, 2] and peaks.scores[0, 0] == 1.0


def test_peak_coordinates_in_image_pixels_and_normalized():
    peaks = find_peaks(_planted_map()[None], max_peaks=4)
    xy = peaks_to_image_coords(peaks, map_size=(14, 14), image_size=(448, 224))
    expected = [[(c + 0.5) * 16, (r + 0.5) * 32] for (r, c), _ in PLANTED] + [[0.0, 0.0]]
    torch.testing.assert_close(xy[0], torch.tensor(expected))
    norm = peaks_to_normalized_coords(peaks, map_size=(14, 14))
    torch.testing.assert_close(norm[0, 0], torch.tensor([9 / 14 - 1, 7 / 14 - 1]))


def test_bf16_maps():
    m = _planted_map()[None]
    peaks = find_peaks(m.bfloat16())
    assert peaks.coords[0, :3].tolist() == [list(c) for c, _ in PLANTED] and peaks.mask[0].sum() == 3


def test_a_plateau_of_equal_maxima_gives_one_peak():
    """Two neighbouring cells tied at the maximum (what a bf16 response map often gives) are one peak, not an
    adjacent duplicate pair; a separate plateau elsewhere is still its own peak."""
    m = _gaussians([((4, 4), 1.0), ((10, 10), 0.9)], size=14)
    m[4, 5] = m[4, 4]  # a 2-cell plateau of equal maxima
    m[10, 11] = m[11, 10] = m[10, 10]  # an L-shaped 3-cell plateau (cells connected through the window)
    peaks = find_peaks(m[None], max_peaks=6)
    assert peaks.mask[0].sum() == 2
    assert peaks.coords[0, :2].tolist() == [[4, 4], [10, 10]]  # the first cell in raster order


def test_a_long_plateau_is_one_peak_and_distant_equal_maxima_are_two():
    m = torch.zeros(1, 9, 9)
    m[0, 1, 1:8] = 1.0  # a row of 7 equal maxima: one peak whatever its length
    m[0, 2:8, 7] = 1.0  # continuing down the right edge: a hook-shaped plateau, still one peak
    m[0, 7, 1] = 1.0  # equal height but not connected: a second peak
    peaks = find_peaks(m, max_peaks=4, min_value=0.5)
    assert peaks.mask[0].sum() == 2
    assert peaks.coords[0, :2].tolist() == [[1, 1], [7, 1]]


def test_bf16_ties_are_resolved_in_float32():
    """bf16 rounds two close values to the same number: the peak finder works on what it is given (one plateau,
    one peak), and on the float32 map it finds the true maximum."""
    m = _gaussians([((6, 6), 1.0)], size=12, sigma=3.0)
    m[6, 7] = m[6, 6] - 1e-4  # distinct in float32, equal in bf16
    assert m.bfloat16()[6, 6] == m.bfloat16()[6, 7]
    assert find_peaks(m[None].bfloat16()).mask.sum() == 1
    peaks = find_peaks(m[None])
    assert peaks.mask.sum() == 1 and peaks.coords[0, 0].tolist() == [6, 6]
    assert peaks.scores.dtype == torch.float32 and find_peaks(m[None].bfloat16()).scores.dtype == torch.float32
