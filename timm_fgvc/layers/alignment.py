""" Scale and spatial alignment of part features (SSANet's DSM and OP modules)

"Spatial-Scale Aligned Network for Fine-Grained Recognition" (Gao, Xu, Sun, Liu, Tai):
- Discriminative Scale Mining (Sec. 3.2): the features of S scale candidates of a part form, per feature
  element k, a circulant matrix C_k (Eq. 6); the response is the max over cyclic shifts of sum_k C_k w^k
  (Eq. 7), i.e. the best alignment of the candidates' scales with the classifier's scale slots. Computed for
  every class at once, from the circulant rows in one matmul or with an FFT over the scale axis.
- Oriented Pooling (Sec. 3.3): overlapping sub-patches of a feature map, max over each row and each column of
  the patch grid, in four orientations (Eq. 9-12); the logit is the max over the orientations (Eq. 13).
"""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['circulant_alignment', 'circulant_shifts', 'oriented_pooling']


def circulant_alignment(candidates: Tensor, weight: Tensor, method: str = 'direct') -> Tensor:
    """Eq. 6-7: `max_r sum_k sum_n w[c, n, k] * phi[(n + r) mod S, k]` for every class c.

    candidates: `[B, K, S, D]` features of the S scale candidates (phi^n) of K parts; weight: `[K, C, S, D]`, one
    filter bank per part. Returns `[B, K, C]` (`circulant_shifts` gives the arg-max shift r).

    `method='direct'` takes every product <w[c, n], phi[m]> of a filter slot and a candidate in one batched matmul
    and sums, for each shift r, the S products on the rows of the circulant matrix C_k (Eq. 6: slot n meets
    candidate (n + r) mod S); `'fft'` uses the cross-correlation theorem, `ifft(conj(fft(phi)) * fft(w))`, as the
    paper suggests. Both give the same values. At S = 5 the direct form is the fast one: the FFT form must
    transform the whole filter bank on every forward (measured on this CPU at ResNet-50 sizes, K = 4, C = 200,
    D = 2048: 12 ms direct vs 270 ms FFT for a batch of 2).
    The filter bank is the matmul's left operand in its own layout, so its gradient comes out in the parameter's
    layout: with the paper's 7 x 7 maps (D = 100,352, a 1.6 GB bank) a gradient in another layout costs a 1.6 GB
    strided copy per step (forward + backward 0.3 + 1.4 s vs 0.8 + 5-8 s, one CPU thread, batch 2).
    """
    if method == 'fft':
        return _circulant_alignment_fft(candidates, weight)
    if method != 'direct':
        raise ValueError(f"method must be 'direct' or 'fft', got {method!r}.")
    return _shift_responses(candidates, weight).amax(-1)  # Eq. 7: the best shift


def circulant_shifts(candidates: Tensor, weight: Tensor) -> Tensor:
    """The shift r of Eq. 7's max for every part and class, `[B, K, C]` long: filter slot n meets candidate
    (n + r) mod S, so candidate (n + r) mod S is the one the classifier reads as scale n."""
    return _shift_responses(candidates, weight).argmax(-1)


def _shift_responses(candidates: Tensor, weight: Tensor) -> Tensor:
    """`sum_k sum_n w[c, n, k] * phi[(n + r) mod S, k]` for every shift r: `[B, K, C, S]`."""
    batch, parts, scales, dim = candidates.shape
    classes = weight.shape[1]
    phi = candidates.float().transpose(0, 1).reshape(parts, batch * scales, dim)  # [K, B m, D]
    products = weight.float().reshape(parts, classes * scales, dim) @ phi.transpose(1, 2)  # <w_n, phi_m>
    products = products.view(parts, classes, scales, batch, scales)  # [K, C, n, B, m]
    shift = torch.arange(scales, device=candidates.device)
    partner = ((shift[:, None] + shift[None, :]) % scales).view(1, 1, scales, 1, scales)  # [n, r] -> (n + r) mod S
    rows = products.gather(4, partner.expand(parts, classes, scales, batch, scales))  # [K, C, n, B, r]
    return rows.sum(2).permute(2, 0, 1, 3)  # Eq. 6-7's sum over n for every shift r -> [B, K, C, r]


def _circulant_alignment_fft(candidates: Tensor, weight: Tensor) -> Tensor:
    """The FFT form of Eq. 7: the product of the spectra summed over the features (real matmuls), then ifft."""
    size = candidates.shape[-2]
    spectrum_phi = torch.fft.fft(candidates.float(), dim=-2)  # [B, K, S, D]
    spectrum_w = torch.fft.fft(weight.float(), dim=-2)  # [K, C, S, D]
    # conj(a) * b summed over k: real part  ar.br + ai.bi, imaginary part  ar.bi - ai.br
    phi = torch.cat([spectrum_phi.real, spectrum_phi.imag], -1)  # [B, K, S, 2D]
    w_real = torch.cat([spectrum_w.real, spectrum_w.imag], -1)  # [K, C, S, 2D]
    w_imag = torch.cat([spectrum_w.imag, -spectrum_w.real], -1)
    cross = torch.complex(torch.einsum('bksd,kcsd->bkcs', phi, w_real),
                          torch.einsum('bksd,kcsd->bkcs', phi, w_imag))  # per frequency
    return torch.fft.ifft(cross, n=size, dim=-1).real.amax(-1)  # every cyclic shift, then the best


def oriented_pooling(feature_map: Tensor, patch: int = 3, grid: int = 3) -> Tensor:
    """Eq. 9-12: the four oriented poolings of a feature map `[N, D, H, W]`, `[N, 4, grid * patch^2 * D]`.

    The map is cut into `grid x grid` overlapping `patch x patch` sub-patches (stride `(H - patch) / (grid - 1)`;
    3 x 3 patches on 3 x 3 positions of a 7 x 7 map in the paper); each flattened sub-patch is x_ij. p_i is the
    element-wise max over row i, q_j over column j. Orientations: Gamma_h = [p_1..p_G], Gamma_v = [q_1..q_G] and
    their reversed orders Gamma'_h, Gamma'_v.
    """
    height, width = feature_map.shape[-2:]
    stride_h, stride_w = _stride(height, patch, grid), _stride(width, patch, grid)
    batch, channels = feature_map.shape[:2]
    patches = F.unfold(feature_map, kernel_size=patch, stride=(stride_h, stride_w))  # [N, D * p^2, G * G]
    patches = patches.view(batch, channels * patch * patch, grid, grid)
    rows = patches.amax(3).transpose(1, 2)  # p_i: [N, G, D p^2]
    cols = patches.amax(2).transpose(1, 2)  # q_j
    gamma = torch.stack([rows, cols, rows.flip(1), cols.flip(1)], 1)  # Eq. 9-12: [N, 4, G, D p^2]
    return gamma.flatten(2)


def _stride(size: int, patch: int, grid: int) -> int:
    if grid < 2:
        return max(1, size - patch + 1)
    stride, remainder = divmod(size - patch, grid - 1)
    if stride < 1 or remainder:
        raise ValueError(f'A {size}-cell map has no {grid} evenly spaced {patch}-cell sub-patches; resize the map '
                         f'to (grid - 1) * stride + patch cells (e.g. {2 * (grid - 1) + patch}).')
    return stride

