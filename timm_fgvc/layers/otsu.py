""" Otsu's threshold, batched in torch

N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. SMC 9(1), 1979: the threshold
that maximises the between-class variance of a map's histogram. CAA (Sec. 4.3) binarises its attention map M
with it per image to get the object mask M_b.

One histogram per map via `scatter_add` over `bins` bins spanning the map's own [min, max]; no loop over images,
no gradient (a threshold is not differentiable).
"""
import torch
from torch import Tensor

__all__ = ['otsu_threshold', 'otsu_mask']


@torch.no_grad()
def _otsu_bins(maps: Tensor, bins: int):
    """Per map: each value's bin `[B, N]`, the last bin of the lower class `[B, 1]`, and the bins' range."""
    flat = maps.detach().flatten(1).double()  # float64: the range of a map of huge float32 values overflows
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = (high - low).clamp_min(1e-12)
    index = ((flat - low) / span * bins).long().clamp_(0, bins - 1)
    histogram = torch.zeros(flat.shape[0], bins, device=flat.device, dtype=flat.dtype)
    histogram.scatter_add_(1, index, torch.ones_like(flat))
    prob = histogram / flat.shape[1]
    centers = (torch.arange(bins, device=flat.device, dtype=flat.dtype) + 0.5) / bins
    weight_low = prob.cumsum(1)  # omega(t): share of the lower class
    mean_low = (prob * centers).cumsum(1)  # mu(t)
    mean_total = mean_low[:, -1:]
    between = (mean_total * weight_low - mean_low) ** 2 / (weight_low * (1 - weight_low)).clamp_min(1e-12)
    between[:, -1] = -1  # splitting after the last bin leaves the upper class empty
    last_low = between.argmax(1, keepdim=True)  # the first maximum
    return index, last_low, low, span, high - low <= 0


def otsu_threshold(maps: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold of each map `[B, ...]` (any trailing shape), `[B]`, in the maps' own units.

    The threshold is the upper edge of the last bin of the lower class. A constant map has no second class: its
    threshold is its value.
    """
    _, last_low, low, span, constant = _otsu_bins(maps, bins)
    threshold = low + (last_low + 1).to(span.dtype) / bins * span
    return torch.where(constant, low, threshold).squeeze(1).to(maps.dtype)


def otsu_mask(maps: Tensor, bins: int = 256) -> Tensor:
    """CAA's binary mask M_b: True where a value falls above Otsu's threshold of its map; shape of `maps`, bool.

    Decided per histogram bin, so it agrees with the histogram the threshold came from; a constant map gives an
    empty mask.
    """
    index, last_low, _, _, _ = _otsu_bins(maps, bins)
    return (index > last_low).view(maps.shape)
