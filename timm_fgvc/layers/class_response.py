""" Class Response Maps and the entropy-gated response of S3N

Class activation maps ("CAM", Zhou et al., "Learning Deep Features for Discriminative Localization",
CVPR 2016, https://arxiv.org/abs/1512.04150) computed from a GAP + linear classifier, and the
top-1 / top-5 selection of "Selective Sparse Sampling for Fine-grained Image Recognition"
(Ding et al., ICCV 2019, code https://github.com/Yao-DD/S3N),
Sec. 3.1-3.2, Eq. 1-3.

The functions are differentiable; S3N computes its response maps without gradient, which is the
caller's choice (`torch.no_grad()` or `.detach()`).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .maps import min_max_normalize

__all__ = ['class_response_maps', 'predicted_class_map', 'class_activation_map', 'entropy_gated_response',
           'max_class_response']


def class_response_maps(
        features: Tensor,
        classifier_weight: Tensor,
        classifier_bias: Optional[Tensor] = None,
) -> Tensor:
    """Class response maps M_c = sum_d W_{d,c} S_d (S3N Eq. 1, CAM).

    Global-average-pooling the maps gives the classifier's logits on pooled features.

    Args:
        features: last feature map S, [B, D, H, W].
        classifier_weight: weight of the linear classifier, [C, D] (as in `nn.Linear`).
        classifier_bias: optional [C], added to every cell of its class map.

    Returns:
        Class response maps, [B, C, H, W].
    """
    maps = torch.einsum('bdhw,cd->bchw', features, classifier_weight)  # Eq. 1
    if classifier_bias is not None:
        maps = maps + classifier_bias.to(maps.dtype)[None, :, None, None]
    return maps


def predicted_class_map(features: Tensor, classifier_weight: Tensor, logits: Tensor) -> Tensor:
    """The class response map (Eq. 1) of each image's top-1 class, the CAM of its prediction: [B, H, W].

    Args:
        features: last feature map S, [B, D, H, W].
        classifier_weight: weight of the linear classifier, [C, D].
        logits: the classifier's logits, [B, C]; their argmax picks each image's class.
    """
    return torch.einsum('bdhw,bd->bhw', features, classifier_weight[logits.argmax(-1)])


def class_activation_map(features: Tensor, classifier: nn.Module, logits: Optional[Tensor] = None) -> Tensor:
    """The CAM of each image's top-1 class, `[B, h, w]` on the feature grid, for a linear `classifier` that reads
    `features` `[B, D, h, w]` average-pooled (a timm CNN's head, a method's main head); `logits` default to that
    classifier on the pooled features. In float32 with autocast off: under autocast the einsum would run in bf16
    whatever its inputs, and a bf16 map ties neighbouring cells. A ValueError says when the CAM is not defined."""
    if not isinstance(classifier, nn.Linear) or features.ndim != 4 or features.shape[1] != classifier.in_features:
        shape = tuple(features.shape)
        raise ValueError(f'A class activation map needs a [B, D, h, w] feature map read by a linear classifier on its '
                         f'average-pooled D channels; got features {shape} and a {type(classifier).__name__}'
                         + (f' of {classifier.in_features} inputs' if isinstance(classifier, nn.Linear) else '') + '.')
    with torch.autocast(features.device.type, enabled=False):
        if logits is None:
            logits = F.linear(features.float().mean((2, 3)), classifier.weight.float(),
                              None if classifier.bias is None else classifier.bias.float())
        return predicted_class_map(features.float(), classifier.weight.float(), logits)


def entropy_gated_response(
        class_maps: Tensor,
        logits: Tensor,
        top_k: int = 5,
        delta: float = 0.2,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The response map R of S3N (Eq. 2-3): top-1 class map if confident, else sum of top-k maps.

    The entropy is taken over the top-k probabilities of the full softmax (not renormalised).

    Args:
        class_maps: class response maps, [B, C, H, W].
        logits: class scores, [B, C].
        top_k: number of top classes (5 in the paper); clipped to C.
        delta: entropy threshold (0.2 in the paper).

    Returns:
        response: min-max normalised R, [B, H, W] in [0, 1].
        use_top1: [B] bool, True where H <= delta (the top-1 map was used).
        entropy: H, [B] float32.
    """
    B, C, H, W = class_maps.shape
    k = min(top_k, C)
    probs = logits.float().softmax(dim=-1)
    top_p, top_idx = probs.topk(k, dim=-1)  # sorted, descending
    entropy = -torch.special.xlogy(top_p, top_p).sum(dim=-1)  # Eq. 2
    top_maps = class_maps.gather(1, top_idx[:, :, None, None].expand(B, k, H, W))
    use_top1 = entropy <= delta
    response = torch.where(use_top1[:, None, None], top_maps[:, 0], top_maps.sum(dim=1))  # Eq. 3
    return min_max_normalize(response), use_top1, entropy


def max_class_response(features: Tensor, classifier_weight: Tensor) -> Tensor:
    """Element-wise max over all C class activation maps, `[B, H, W]` (LFD Eq. 2).

    LFD pools every class's map instead of the predicted class's, so a wrong top-1 prediction does not decide
    where the model looks. One einsum and a max over classes.
    """
    return class_response_maps(features, classifier_weight).amax(1)  # Eq. 2
