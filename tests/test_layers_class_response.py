"""Tests for timm_fgvc.layers.class_response (S3N Eq. 1-3)."""
import math

import pytest
import torch

from timm_fgvc.layers import (class_activation_map, class_response_maps, entropy_gated_response, min_max_normalize,
                              predicted_class_map)


def _explicit_eq1(features, weight, bias):
    B, D, H, W = features.shape
    C = weight.shape[0]
    maps = torch.zeros(B, C, H, W, dtype=features.dtype)
    for c in range(C):
        for d in range(D):
            maps[:, c] += weight[c, d] * features[:, d]
        maps[:, c] += bias[c]
    return maps


def _explicit_min_max(m):
    return (m - m.min()) / (m.max() - m.min())


def test_class_response_maps_is_eq1():
    torch.manual_seed(0)
    features, weight, bias = torch.randn(2, 6, 5, 7), torch.randn(4, 6), torch.randn(4)
    maps = class_response_maps(features, weight, bias)
    torch.testing.assert_close(maps, _explicit_eq1(features, weight, bias), atol=1e-5, rtol=1e-5)
    no_bias = class_response_maps(features, weight)
    torch.testing.assert_close(maps - no_bias, bias[None, :, None, None].expand_as(maps), atol=1e-5, rtol=0)


def test_pooled_class_response_maps_are_the_logits():
    """The CAM identity: GAP(maps) == fc(GAP(features))."""
    torch.manual_seed(1)
    features = torch.randn(3, 16, 7, 7)
    fc = torch.nn.Linear(16, 10)
    maps = class_response_maps(features, fc.weight, fc.bias)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), fc(features.mean(dim=(2, 3))), atol=1e-5, rtol=1e-5)


def test_predicted_class_map_follows_each_images_prediction_to_its_planted_part():
    """Two images, each with a part of its own class planted in a different cell: each image's map is its predicted
    class's response map and peaks on that image's part."""
    torch.manual_seed(3)
    weight = torch.eye(4, 8)  # class c reads channel c
    features = torch.rand(2, 8, 5, 5) * 0.1
    features[0, 1, 1, 3] = 5.0  # image 0: class 1 at (row 1, col 3)
    features[1, 2, 4, 0] = 5.0  # image 1: class 2 at (row 4, col 0)
    logits = features.mean((2, 3)) @ weight.t()
    cam = predicted_class_map(features, weight, logits)
    torch.testing.assert_close(cam, class_response_maps(features, weight)[torch.arange(2), torch.tensor([1, 2])])
    assert [divmod(int(i), 5) for i in cam.flatten(1).argmax(1)] == [(1, 3), (4, 0)]


def test_class_activation_map_is_float32_under_autocast_and_pools_to_the_top1_logit():
    """The CAM of a linear head on pooled features: averaged over the grid it gives the top-1 logit less the bias;
    under bf16 autocast it is still float32 and equal to the fp32 map (a bf16 einsum ties close cells). A head
    the CAM does not apply to is a ValueError."""
    torch.manual_seed(4)
    features, fc = torch.randn(3, 16, 6, 6), torch.nn.Linear(16, 5)
    logits = fc(features.mean((2, 3)))
    cam = class_activation_map(features, fc)
    top1 = logits.argmax(1)
    torch.testing.assert_close(cam.mean((1, 2)), logits[torch.arange(3), top1] - fc.bias[top1], atol=1e-5, rtol=1e-5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = class_activation_map(features, fc, fc(features.mean((2, 3))))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, cam, atol=1e-5, rtol=1e-5)
    for bad_features, bad_head in ((features, torch.nn.Identity()), (features.flatten(2), fc),
                                   (features[:, :8], fc)):
        with pytest.raises(ValueError, match='linear classifier'):
            class_activation_map(bad_features, bad_head)


def test_min_max_normalize_any_leading_dims_and_constant_maps():
    torch.manual_seed(2)
    maps = torch.randn(2, 3, 4, 5) * 7 + 3
    maps[1, 2] = 4.2  # constant map
    out = min_max_normalize(maps)
    for i in range(2):
        for j in range(3):
            if (i, j) == (1, 2):
                assert torch.equal(out[i, j], torch.zeros(4, 5))
            else:
                torch.testing.assert_close(out[i, j], _explicit_min_max(maps[i, j]))
    assert min_max_normalize(maps[0, 0]).max() == 1  # 2-D input


def _maps_and_logits(C=10, H=6, W=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, C, H, W, generator=g), torch.linspace(0, 0.09, C)[torch.randperm(C, generator=g)]


def test_confident_prediction_uses_top1_map():
    maps, _ = _maps_and_logits()
    logits = torch.zeros(1, 10)
    logits[0, 7] = 20.0
    response, use_top1, entropy = entropy_gated_response(maps, logits)
    assert use_top1.tolist() == [True] and entropy.item() < 0.2
    torch.testing.assert_close(response[0], _explicit_min_max(maps[0, 7]))


def test_flat_prediction_sums_top5_maps():
    maps, flat_logits = _maps_and_logits()
    response, use_top1, entropy = entropy_gated_response(maps, flat_logits[None])
    top5 = flat_logits.argsort(descending=True)[:5].tolist()
    assert use_top1.tolist() == [False]
    assert entropy.item() == pytest.approx(-5 * 0.1 * math.log(0.1), abs=2e-2)
    expected = _explicit_min_max(sum(maps[0, c] for c in top5))
    torch.testing.assert_close(response[0], expected)
    # the same flat prediction passes the gate when delta is above its entropy
    response, use_top1, _ = entropy_gated_response(maps, flat_logits[None], delta=2.0)
    assert use_top1.tolist() == [True]
    torch.testing.assert_close(response[0], _explicit_min_max(maps[0, top5[0]]))


def test_mixed_batch_in_one_call():
    maps_a, flat_logits = _maps_and_logits(seed=4)
    maps_b, _ = _maps_and_logits(seed=5)
    confident = torch.zeros(10)
    confident[2] = 15.0
    maps = torch.cat([maps_a, maps_b])
    logits = torch.stack([flat_logits, confident])
    response, use_top1, _ = entropy_gated_response(maps, logits)
    top5 = flat_logits.argsort(descending=True)[:5].tolist()
    assert use_top1.tolist() == [False, True]
    torch.testing.assert_close(response[0], _explicit_min_max(sum(maps_a[0, c] for c in top5)))
    torch.testing.assert_close(response[1], _explicit_min_max(maps_b[0, 2]))


def test_entropy_is_over_top_k_of_the_full_softmax():
    logits = [2.0, 1.0, 0.5, 0.0, -1.0, -2.0]
    z = sum(math.exp(v) for v in logits)
    p = [math.exp(v) / z for v in logits]
    expected = -sum(q * math.log(q) for q in p[:5])  # not renormalised, the smallest dropped
    maps = torch.randn(1, 6, 3, 3)
    _, _, entropy = entropy_gated_response(maps, torch.tensor([logits]))
    assert entropy.item() == pytest.approx(expected, rel=1e-5)
    # top_k clipped to C
    _, _, entropy = entropy_gated_response(maps[:, :3], torch.tensor([logits[:3]]), top_k=5)
    z3 = sum(math.exp(v) for v in logits[:3])
    assert entropy.item() == pytest.approx(-sum(math.exp(v) / z3 * (v - math.log(z3)) for v in logits[:3]), rel=1e-5)


def test_bf16_autocast_close_to_float32():
    torch.manual_seed(6)
    features, fc = torch.randn(2, 32, 7, 7), torch.nn.Linear(32, 20)
    with torch.no_grad():
        ref = entropy_gated_response(class_response_maps(features, fc.weight, fc.bias), fc(features.mean((2, 3))))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = entropy_gated_response(class_response_maps(features, fc.weight, fc.bias), fc(features.mean((2, 3))))
    assert torch.equal(out[1], ref[1])
    assert (out[0].float() - ref[0]).abs().max() < 0.05
