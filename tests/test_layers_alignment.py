"""SSANet's alignment layers: circulant scale alignment (Eq. 6-7), oriented pooling (Eq. 9-13), scale candidates."""
import torch

from timm_fgvc.layers import circulant_alignment, circulant_shifts, oriented_pooling, scale_candidates


def test_circulant_alignment_equals_the_circulant_matrices_of_eq6_and_eq7():
    torch.manual_seed(0)
    batch, parts, scales, dim, classes = 2, 2, 5, 6, 3
    phi = torch.randn(batch, parts, scales, dim)  # the candidates of every part
    weight = torch.randn(parts, classes, scales, dim)  # one filter bank per part
    expected = torch.zeros(batch, parts, classes)
    for b in range(batch):
        for i in range(parts):
            for c in range(classes):
                total = torch.zeros(scales)
                for k in range(dim):
                    # Eq. 6: row r of C_k is the candidates' k-th elements shifted cyclically by r
                    circulant = torch.stack([torch.roll(phi[b, i, :, k], -r) for r in range(scales)])
                    total += circulant @ weight[i, c, :, k]
                expected[b, i, c] = total.max()  # Eq. 7
    expected_shift = torch.zeros(batch, parts, classes, dtype=torch.long)
    for b in range(batch):
        for i in range(parts):
            for c in range(classes):
                responses = [sum(weight[i, c, n] @ phi[b, i, (n + r) % scales] for n in range(scales))
                             for r in range(scales)]
                expected_shift[b, i, c] = int(torch.stack(responses).argmax())
    assert torch.equal(circulant_shifts(phi, weight), expected_shift)  # slot n reads candidate (n + r) mod S
    # candidates rolled by 2 scales are read two slots on: the best shift moves by 2
    assert torch.equal(circulant_shifts(torch.roll(phi, 2, dims=2), weight), (expected_shift + 2) % scales)
    for method in ('direct', 'fft'):
        assert torch.allclose(circulant_alignment(phi, weight, method), expected, atol=1e-4), method
        # scale alignment: a cyclic shift of the candidates' scales leaves the response unchanged
        shifted = circulant_alignment(torch.roll(phi, 2, dims=2), weight, method)
        assert torch.allclose(shifted, expected, atol=1e-4), method


def test_the_filter_bank_gradient_comes_out_in_the_parameter_layout():
    """With the paper's 7 x 7 candidate maps the DSM filter bank is 1.6 GB (ResNet-50); a gradient in another
    layout makes autograd copy it to the parameter's every step (5-8 s of a 10 s backward on one CPU thread)."""
    weight = torch.randn(2, 3, 5, 8, requires_grad=True)
    candidates = torch.randn(4, 2, 5, 8)
    responses = circulant_alignment(candidates, weight)  # [B, K, C]
    grad_weight, = torch.autograd.grad(responses.sum(), weight)
    assert grad_weight.is_contiguous() and grad_weight.stride() == weight.stride()
    # the gradient itself: d/dw of the chosen shift's sum is the candidate aligned to each slot
    expected = torch.zeros_like(weight)
    for b in range(4):
        for k in range(2):
            for c in range(3):
                scores = [sum(weight[k, c, n] @ candidates[b, k, (n + r) % 5] for n in range(5)) for r in range(5)]
                best = int(torch.stack(scores).argmax())
                assert torch.isclose(responses[b, k, c], scores[best], atol=1e-4)
                for n in range(5):
                    expected[k, c, n] += candidates[b, k, (n + best) % 5]
    assert torch.allclose(grad_weight, expected, atol=1e-5)


def test_oriented_pooling_eq9_to_12_and_rotation_consistency():
    x = torch.arange(2 * 7 * 7, dtype=torch.float32).view(1, 2, 7, 7)
    gamma = oriented_pooling(x, patch=3, grid=3)  # 3 x 3 patches at stride 2 on a 7 x 7 map
    patches = x.unfold(2, 3, 2).unfold(3, 3, 2)  # [1, 2, 3, 3, 3, 3]: (row i, col j) of the patch grid
    vectors = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 3, 3, -1)  # x_ij
    p = vectors.amax(2)  # max over j (Eq. 9's p_i)
    q = vectors.amax(1)  # max over i (Eq. 10's q_j)
    assert torch.equal(gamma[0, 0], p[0].flatten()) and torch.equal(gamma[0, 1], q[0].flatten())
    assert torch.equal(gamma[0, 2], p[0].flip(0).flatten()) and torch.equal(gamma[0, 3], q[0].flip(0).flatten())
    # the paper's 2 x 2 example: Gamma_v of [[a, b], [c, d]] equals Gamma_h of its rotation [[c, a], [d, b]]
    a, b, c, d = 1., 4., 3., 2.
    original = torch.tensor([[[[a, b], [c, d]]]])
    rotated = torch.tensor([[[[c, a], [d, b]]]])
    assert torch.equal(oriented_pooling(original, 1, 2)[0, 1], oriented_pooling(rotated, 1, 2)[0, 0])
    # Eq. 13: with one classifier, the max over orientations is the same for a map and its 90-degree rotation
    torch.manual_seed(0)
    maps = torch.randn(1, 4, 3, 3)
    w = torch.randn(3 * 4)
    logit = lambda m: (oriented_pooling(m, 1, 3)[0] @ w).max()  # noqa: E731
    assert torch.allclose(logit(maps), logit(torch.rot90(maps, 1, (2, 3))))


def test_scale_candidates_expand_about_the_far_vertex_and_shrink_about_the_near_one():
    boxes = torch.tensor([[[10., 10., 30., 40.]]])
    centre = torch.tensor([[50., 45.]])  # the box's far vertex is (10, 10), its near one (30, 40)
    candidates = scale_candidates(boxes, centre, num_scales=5, alpha=1.2)[0, 0]
    assert torch.equal(candidates[2], boxes[0, 0])
    areas = (candidates[:, 2] - candidates[:, 0]) * (candidates[:, 3] - candidates[:, 1])
    assert torch.allclose(areas / areas[2], torch.tensor([1.2 ** -4, 1.2 ** -2, 1., 1.2 ** 2, 1.2 ** 4]))
    assert torch.all(candidates[3:, :2] == torch.tensor([10., 10.]))  # expanded: far vertex fixed
    assert torch.all(candidates[:2, 2:] == torch.tensor([30., 40.]))  # shrunk: near vertex fixed
    clipped = scale_candidates(torch.tensor([[[60., 60., 95., 95.]]]), torch.tensor([[0., 0.]]), 5, 1.5, 100)
    assert clipped.max() <= 100 and clipped.min() >= 0
