"""S3N: partition (Eq. 4), sparse attention (Eq. 5), sampling maps (Eq. 6), the batched forward, learning."""

import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.models.s3n import sampling_map, selective_partition, sparse_attention, sparse_attention_factors

TINY = dict(backbone='test_resnet')


def tiny_s3n(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('s3n_resnet18', num_classes=num_classes, **TINY, **kwargs)


def peaks_dict(centers, scores, mask):
    return dict(peak_centers=torch.tensor(centers, dtype=torch.float32),
                peak_scores=torch.tensor(scores, dtype=torch.float32), peak_mask=torch.tensor(mask))


def test_partition_is_probabilistic_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    scores = torch.tensor([[0.9, 0.5, 0.2, 0.0]]).expand(20000, 4)
    valid = torch.tensor([[True, True, True, False]]).expand(20000, 4)
    disc, comp = selective_partition(scores, valid, training=True)
    rate = disc.float().mean(0)
    assert torch.allclose(rate[:3], torch.tensor([0.9, 0.5, 0.2]), atol=0.02)  # P(T_d) = R (Eq. 4)
    assert not (disc & comp).any() and not disc[:, 3].any() and not comp[:, 3].any()
    assert torch.equal(disc | comp, valid)
    disc_eval, comp_eval = selective_partition(scores[:1], valid[:1], training=False)
    assert disc_eval.tolist() == [[True, True, False, False]]
    assert comp_eval.tolist() == [[False, False, True, False]]
    both, _ = selective_partition(scores[:1], valid[:1], training=True, mode='all')
    assert torch.equal(both, valid[:1])


def test_sparse_attention_matches_eq5():
    centers = torch.tensor([[[0.25, 0.5], [0.75, 0.25]]])
    scores = torch.tensor([[0.8, 0.4]])
    disc, comp = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    beta1, beta2 = torch.tensor(0.1), torch.tensor(0.3)
    size = 40
    att = sparse_attention(centers, scores, disc, comp, beta1, beta2, (size, size))
    xs = (torch.arange(size) + 0.5) / size
    for k, (beta, amp) in enumerate(((0.1, 0.8), (0.3, 1 / 0.4))):
        cx, cy = centers[0, k]
        d2 = (xs[None, :] - cx) ** 2 + (xs[:, None] - cy) ** 2
        expected = amp * torch.exp(-d2 / (scores[0, k] * beta ** 2))
        assert torch.allclose(att[0, k], expected, atol=1e-5)
    # a discriminative peak is narrower (beta1 < beta2) and its amplitude grows with R, a complementary one's shrinks
    unused = sparse_attention(centers, scores, disc & False, comp & False, beta1, beta2, (size, size))
    assert unused.abs().max() == 0


def test_sampling_maps_sum_the_member_attention_eq6():
    """Eq. 6 from the separable factors (one matmul) equals base + the sum of the members' Eq. 5 maps."""
    torch.manual_seed(0)
    centers, scores = torch.rand(3, 5, 2), torch.rand(3, 5) * 0.9 + 0.1
    disc = torch.rand(3, 5) > 0.5
    valid = torch.rand(3, 5) > 0.2
    disc, comp = disc & valid, ~disc & valid
    beta1, beta2 = torch.tensor(0.11), torch.tensor(0.28)
    attention = sparse_attention(centers, scores, disc, comp, beta1, beta2, (31, 23))
    factors = sparse_attention_factors(centers, scores, disc, comp, beta1, beta2, (31, 23))
    for members in (disc, comp):
        expected = 0.09 + (attention * members[..., None, None]).sum(1)
        assert torch.allclose(sampling_map(*factors, members, 0.09), expected, atol=1e-5)
    assert torch.allclose(sampling_map(*factors, torch.zeros_like(disc), 0.09), torch.full((3, 31, 23), 0.09))


def test_empty_peak_set_gives_identity_resampling_and_peak_magnifies():
    model = tiny_s3n().eval()
    image = torch.zeros(2, 3, 64, 64)
    image[:, :, 12:20, 40:48] = 1.0  # a square around (x, y) = (0.69, 0.25)
    peaks = peaks_dict([[[0.69, 0.25]], [[0.69, 0.25]]], [[0.9], [0.9]], [[False], [True]])
    maps = model.sampling_maps(peaks, (model.grid_size, model.grid_size))
    assert torch.allclose(maps['q_discriminative'][0], torch.full((31, 31), model.base_level))
    resampled, _ = model.sampler(image, maps['q_discriminative'])
    assert (resampled[0] - image[0]).abs().max() < 1e-3  # no peak: the identity (interpolation error)
    square_in, square_out = (image[1, 0] > 0.5).sum(), (resampled[1, 0] > 0.5).sum()
    assert square_out > 1.5 * square_in  # the attended part covers more output pixels than input pixels


def test_forward_is_batched_with_different_peak_counts():
    model = tiny_s3n().eval()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 64, 64)
    x[1] = 0.0  # a constant image: constant response, no peak above the mean after min-max
    out = model.forward_train(x)
    counts = out.extras['peak_mask'].sum(1)
    assert counts[1] == 0 and len(set(counts.tolist())) > 1
    # an image with no peak is resampled to itself in both branches
    assert (out.extras["image_discriminative"][1] - x[1]).abs().max() < 1e-3
    # batching does not change any image's result (no cross-image state, masks not shapes)
    singles = torch.cat([model(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(model(x), singles, atol=1e-4)
    assert torch.equal(model(x), model(x))  # eval is deterministic
    assert out.attention.shape == (4, model.max_peaks, 64, 64)
    assert out.attention.max() <= 1 + 1e-6 and out.attention.min() >= 0


def test_attention_maps_peak_where_the_peaks_are():
    model = tiny_s3n().eval()
    x = torch.randn(2, 3, 96, 96)
    maps, details = model.attention_maps(x, return_details=True)
    assert maps.shape[-2:] == (96, 96)
    mask = details['peak_mask']
    assert mask.any()
    for b, k in mask.nonzero().tolist():
        row, col = divmod(maps[b, k].argmax().item(), 96)
        px, py = details['peak_xy'][b, k].tolist()
        assert abs(col + 0.5 - px) <= 1.0 and abs(row + 0.5 - py) <= 1.0


def test_short_training_lowers_all_four_losses_and_learns_beta(short_training):
    model = tiny_s3n(num_classes=4)
    beta_start = (model.beta1.item(), model.beta2.item())
    losses = short_training(model, num_classes=4, image_size=64, lr=0.05)
    for term in ('loss_original', 'loss_discriminative', 'loss_complementary', 'loss_joint'):
        first, last = losses[term]
        assert last < 0.7 * first, (term, first, last)
    assert (model.beta1.item(), model.beta2.item()) != beta_start  # beta learns through the sampler (Sec. 3.3)
