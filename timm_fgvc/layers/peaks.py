""" Class Peak Responses: local maxima of response maps, batched and padded

Peaks as in "Weakly Supervised Instance Segmentation using Class Peak Response" (Zhou et al.,
CVPR 2018, https://arxiv.org/abs/1804.00880) and "Selective Sparse Sampling for Fine-grained Image
Recognition" (Ding et al., ICCV 2019), Sec. 3.1-3.2: the local maxima of R within an r x r window
(r = 3) that are at least the map's mean.

A batch has a different number of peaks per map, so peaks are returned sorted, truncated or padded
to a fixed `max_peaks`, with a mask.

Peaks are found in float32 and a plateau (equal neighbouring maxima) gives one peak, its first cell in raster
order: the authors' `peak_stimulation` (https://github.com/Yao-DD/S3N, `sss_net.py`) keeps a cell when the
window's `max_pool2d` index is the cell itself, which also keeps one cell of a 2-cell plateau. A map computed in
bf16 ties neighbouring cells often; without this, each tie is a pair of adjacent duplicate peaks.
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['Peaks', 'local_maxima', 'one_per_plateau', 'find_peaks', 'peaks_to_image_coords',
           'peaks_to_normalized_coords']


class Peaks(NamedTuple):
    """Fixed-size peaks of a batch of maps."""
    coords: Tensor  # [B, K, 2] long, (row, col) in map cells; padded entries are 0
    scores: Tensor  # [B, K] map value at the peak; padded entries are 0
    mask: Tensor  # [B, K] bool, True for a real peak
    found: Optional[Tensor] = None  # [B] peaks found before the `max_peaks` cap (more than K: the lowest were cut)


def local_maxima(maps: Tensor, window: int = 3) -> Tensor:
    """Cells of maps [B, H, W] equal to the max of their window x window neighbourhood, [B, H, W] bool.

    Plateaus (equal neighbouring maxima) give one True per cell of the plateau.
    """
    assert window % 2 == 1, 'window must be odd'
    pooled = F.max_pool2d(maps.unsqueeze(1), window, stride=1, padding=window // 2).squeeze(1)
    return maps == pooled


def one_per_plateau(is_peak: Tensor, window: int = 3) -> Tensor:
    """Keep one cell of each plateau of local maxima `is_peak` [B, H, W] bool: the first in raster order.

    Two local maxima within each other's window are equal (each is >= the other), so a plateau is a connected
    component of `is_peak` under the window's neighbourhood. Components are labelled by propagating the smallest
    cell index through the window (a min-pool) until nothing changes: one pass when there is no plateau, and
    never more passes than the longest plateau has cells (traced for torch.compile / torch.export: all H * W).
    """
    B, H, W = is_peak.shape
    index = torch.arange(H * W, device=is_peak.device, dtype=torch.float32).view(1, H, W).expand(B, H, W)
    none = float(H * W)
    label = torch.where(is_peak, index, torch.full_like(index, none))
    # traced (torch.compile / torch.export) code cannot branch on values: there every one of the H * W passes runs
    traced = torch.compiler.is_compiling() or getattr(torch.compiler, 'is_exporting', lambda: False)()
    for _ in range(H * W):
        smallest = -F.max_pool2d(-label.unsqueeze(1), window, stride=1, padding=window // 2).squeeze(1)
        spread = torch.where(is_peak, smallest, label)
        if not traced and torch.equal(spread, label):
            break
        label = spread
    return is_peak & (label == index)


def find_peaks(
        maps: Tensor,
        window: int = 3,
        max_peaks: int = 16,
        min_value: Optional[Union[float, Tensor]] = None,
) -> Peaks:
    """Class peak responses of maps [B, H, W], sorted by score, padded to `max_peaks`.

    A peak is a local maximum within a window x window neighbourhood that is >= the map's mean
    (or >= `min_value`, a float or a [B] tensor) and strictly above the map's minimum, so a
    constant map has no peak; a plateau of equal maxima gives one peak (`one_per_plateau`). The
    `max_peaks` highest are kept. Everything is computed in float32 (scores are float32).
    """
    B, H, W = maps.shape
    maps = maps.float()
    if min_value is None:
        threshold = maps.mean(dim=(1, 2))
    else:
        threshold = torch.as_tensor(min_value, device=maps.device, dtype=torch.float32).expand(B)
    floor = maps.flatten(1).amin(dim=1)
    is_peak = local_maxima(maps, window)
    is_peak &= maps >= threshold[:, None, None]
    is_peak &= maps > floor[:, None, None]
    is_peak = one_per_plateau(is_peak, window)

    k = min(max_peaks, H * W)
    masked = torch.where(is_peak, maps, torch.full_like(maps, float('-inf'))).flatten(1)
    scores, index = masked.topk(k, dim=1)  # sorted, descending
    mask = is_peak.flatten(1).gather(1, index)
    scores = scores.masked_fill(~mask, 0)
    index = index.masked_fill(~mask, 0)
    coords = torch.stack((index.div(W, rounding_mode='floor'), index % W), dim=-1)
    if k < max_peaks:
        pad = max_peaks - k
        coords = F.pad(coords, (0, 0, 0, pad))
        scores = F.pad(scores, (0, pad))
        mask = F.pad(mask, (0, pad))
    return Peaks(coords, scores, mask, is_peak.flatten(1).sum(1))


def peaks_to_image_coords(
        peaks: Peaks,
        map_size: Tuple[int, int],
        image_size: Tuple[int, int],
) -> Tensor:
    """Centres of the peaks' map cells in image pixels, (x, y), [B, K, 2] float; padded entries 0.

    The image spans [0, W] x [0, H] (pixel i covers [i, i + 1]); map cell (r, c) of an (h, w) map
    has its centre at ((c + 0.5) * W / w, (r + 0.5) * H / h).
    """
    (h, w), (img_h, img_w) = map_size, image_size
    scale = peaks.coords.new_tensor([img_w / w, img_h / h], dtype=torch.float32)
    xy = (peaks.coords.flip(-1).float() + 0.5) * scale
    return xy * peaks.mask.unsqueeze(-1)


def peaks_to_normalized_coords(peaks: Peaks, map_size: Tuple[int, int]) -> Tensor:
    """Centres of the peaks' map cells in [-1, 1] image coordinates, (x, y), [B, K, 2] float.

    Same convention as `F.grid_sample(align_corners=False)`: -1 and 1 are the outer image edges.
    Padded entries are 0 (the image centre); use the mask.
    """
    h, w = map_size
    size = peaks.coords.new_tensor([w, h], dtype=torch.float32)
    xy = (2 * peaks.coords.flip(-1).float() + 1) / size - 1
    return xy * peaks.mask.unsqueeze(-1)
