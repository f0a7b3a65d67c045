""" Maps over the image: min-max normalisation, resizing to the input, Gaussian smoothing

What every method's `attention_maps` returns is a map in input-image coordinates in [0, 1] (`maps_in_image`); LFD
smooths its attention M before proposing regions (`gaussian_smooth`).
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['min_max_normalize', 'maps_in_image', 'gaussian_smooth']


def min_max_normalize(maps: Tensor, eps: float = 1e-6) -> Tensor:
    """Min-max normalise each map to [0, 1] over its last two (spatial) dims.

    Any leading dims are kept. A constant map becomes all zeros; a map whose range is below `eps`
    is divided by `eps` instead of its range.
    """
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True).unsqueeze(-1)
    hi = flat.amax(dim=-1, keepdim=True).unsqueeze(-1)
    return (maps - lo) / (hi - lo).clamp_min(eps)


def maps_in_image(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """Maps `[B, K, h, w]` resized bilinearly to the input's `size` and min-max normalised each to [0, 1] (the
    `attention_maps` convention)."""
    return min_max_normalize(F.interpolate(maps, size=tuple(size), mode='bilinear', align_corners=False))


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of maps `[B, H, W]` with standard deviation `sigma` (in cells), separable, with
    replicate padding so border cells are not pulled towards zero. `sigma <= 0` returns the maps unchanged."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode='replicate')
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out.squeeze(1)
