""" Saliency-based sampler: non-uniform resampling that magnifies salient regions

"Learning to Zoom: a Saliency-Based Sampling Layer for Neural Networks" (Recasens et al., ECCV 2018,
https://arxiv.org/abs/1809.03355), used as the selective sampling of "Selective Sparse Sampling for
Fine-grained Image Recognition" (Ding et al., ICCV 2019), Sec. 3.3, Eq. 7-8.

Each grid cell v moves to the Q-weighted average of the coordinates v' around it under a Gaussian
distance kernel k(v', v), so cells are drawn towards salient regions, which are thus sampled more
densely (magnified) in the output. Defaults follow the S3N / Learning-to-Zoom code: a 31 x 31 grid,
replicate padding of 30, a 61 x 61 Gaussian kernel with FWHM 13. The padded grid's coordinates
extend beyond [-1, 1], so a flat saliency gives exactly the identity grid.

Coordinates are in `grid_sample(align_corners=True)` convention (-1 and 1 are the centres of the
corner pixels); the saliency map is read as covering the whole image (align_corners=False).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['SaliencySampler', 'gaussian_kernel_1d']


def gaussian_kernel_1d(size: int, fwhm: float) -> Tensor:
    """Unnormalised 1-D Gaussian of the given full width at half maximum, [size], peak 1 at the centre."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.exp(-4 * math.log(2) * x ** 2 / fwhm ** 2).float()


def _padded_coords(grid_size: int, padding: int) -> Tensor:
    """(x, y) coordinates of the padded grid, [G + 2P, G + 2P, 2]; the inner G x G cells span [-1, 1]."""
    t = (torch.arange(grid_size + 2 * padding, dtype=torch.float64) - padding) * 2 / (grid_size - 1) - 1
    y, x = torch.meshgrid(t, t, indexing='ij')
    return torch.stack((x, y), dim=-1).float()


class SaliencySampler(nn.Module):
    """Resample images so that regions of high saliency are magnified (S3N Eq. 7-8).

    Args:
        grid_size: side of the sampling grid the saliency is resized to (31).
        padding: replicate padding of the grid on each side (30); the kernel is 2 * padding + 1 wide.
        fwhm: full width at half maximum of the Gaussian distance kernel k(v', v), in grid cells (13).
        eps: added to the saliency so that an all-zero map gives the identity instead of 0 / 0.

    The saliency must be non-negative; only its relative values matter. The kernel and coordinates
    are fixed, non-persistent buffers (not learnable, not in the state dict). The grid is computed
    in float32, also under autocast; gradients flow to the saliency.
    """

    def __init__(self, grid_size: int = 31, padding: int = 30, fwhm: float = 13.0, eps: float = 1e-6):
        super().__init__()
        self.grid_size = grid_size
        self.padding = padding
        self.fwhm = fwhm
        self.eps = eps
        # k(v', v) is an isotropic Gaussian, hence separable; as a banded [G, G + 2P] matrix the 'valid'
        # correlation of every map is band @ map @ band.T (two small matmuls, faster than 61-tap convs)
        kernel = gaussian_kernel_1d(2 * padding + 1, fwhm)
        rows = torch.arange(grid_size)[:, None].expand(-1, kernel.numel())
        band = torch.zeros(grid_size, grid_size + 2 * padding)
        band[rows, rows + torch.arange(kernel.numel())] = kernel.expand(grid_size, -1)
        self.register_buffer('band', band, persistent=False)
        self.register_buffer('coords', _padded_coords(grid_size, padding), persistent=False)  # v', [G', G', 2]

    def _padded_saliency(self, saliency: Tensor) -> Tensor:
        """Saliency [B, h, w] read at the padded grid's cells, [B, 1, G + 2P, G + 2P].

        Equals a bilinear resize to G x G cells placed at the grid's coordinates followed by replicate
        padding (border sampling clamps to the edge cells, as replicate padding does).
        """
        B = saliency.shape[0]
        where = self.coords.float().unsqueeze(0).expand(B, -1, -1, -1)
        return F.grid_sample(
            saliency.unsqueeze(1), where, mode='bilinear', padding_mode='border', align_corners=False)

    def sampling_grid(self, saliency: Tensor, output_size: Tuple[int, int]) -> Tensor:
        """Sampling grid for saliency [B, h, w]: [B, H, W, 2] (x, y) in [-1, 1], float32, for `grid_sample`."""
        with torch.autocast(device_type=saliency.device.type, enabled=False):
            q = self._padded_saliency(saliency.float() + self.eps)  # Q(v')
            coords = self.coords.float().permute(2, 0, 1).unsqueeze(0)  # v', [1, 2, G', G']
            stacked = torch.cat((q, q * coords), dim=1)  # Q, Q v'_x, Q v'_y: [B, 3, G', G']
            band = self.band.float()
            smoothed = band @ stacked @ band.t()  # sum over v' of k(v', v) * [Q, Q v'_x, Q v'_y]
            grid = smoothed[:, 1:] / smoothed[:, :1]  # Eq. 7 f (x), Eq. 8 g (y): [B, 2, G, G]
            grid = grid.clamp(-1, 1)
            grid = F.interpolate(grid, size=tuple(output_size), mode='bilinear', align_corners=True)
        return grid.permute(0, 2, 3, 1)

    def forward(
            self,
            images: Tensor,
            saliency: Tensor,
            output_size: Optional[Tuple[int, int]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Resample images [B, C, H, W] by saliency [B, h, w].

        Returns the resampled images ([B, C, *output_size], the input's size by default, the input's
        dtype) and the sampling grid ([B, H, W, 2], float32).
        """
        output_size = tuple(output_size) if output_size is not None else tuple(images.shape[-2:])
        grid = self.sampling_grid(saliency, output_size)
        with torch.autocast(device_type=images.device.type, enabled=False):
            resampled = F.grid_sample(
                images.float(), grid, mode='bilinear', padding_mode='border', align_corners=True)
        return resampled.to(images.dtype), grid

    def extra_repr(self) -> str:
        return f'grid_size={self.grid_size}, padding={self.padding}, fwhm={self.fwhm}'
