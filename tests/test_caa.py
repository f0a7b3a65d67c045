"""CAA: local classifiers (Eq. 1), local and object losses (Eq. 2-5), Otsu masks, multi-scale zoom, stages."""
import math
import re

import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401
from timm_fgvc.engine.trainer import apply_stage
from timm_fgvc.models.caa import LocalClassifiers, local_loss


def tiny_caa(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('caa_resnet18', num_classes=num_classes, backbone='test_resnet', **kwargs)


def test_local_classifiers_max_over_n_classifiers_eq1():
    torch.manual_seed(0)
    head = LocalClassifiers(in_features=8, num_classes=4, num_classifiers=3)
    features = torch.randn(2, 8, 5, 6)
    weight = head.weight.view(3, 5, 8)  # classifier i: a linear map to L + 1 = 5 at every location
    per_classifier = torch.einsum('ncd,bdhw->bnchw', weight, features) + head.bias.view(1, 3, 5, 1, 1)
    assert torch.allclose(head(features), per_classifier.amax(1), atol=1e-5)


def test_local_loss_matches_eq2_to_4_by_hand():
    torch.manual_seed(0)
    activations = torch.randn(2, 4, 3, 3)  # L = 3 classes + background
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, :2, :2] = True  # 4 of 9 cells attended
    mask[1, 1, 1] = True  # 1 of 9
    target = torch.tensor([2, 0])
    expected = []
    for b in range(2):
        log_p = F.log_softmax(activations[b], 0)
        w = mask[b].float().mean()
        l1 = sum(-log_p[target[b], i, j] for i in range(3) for j in range(3) if mask[b, i, j])  # Eq. 4
        l0 = sum(-log_p[-1, i, j] for i in range(3) for j in range(3) if not mask[b, i, j])  # Eq. 3
        expected.append(((1 - w) * l1 + w * l0) / 9)  # Eq. 2
    assert torch.allclose(local_loss(activations, mask, target), torch.stack(expected).mean(), atol=1e-6)


def planted_activations(model, regions):
    """Scale 0's local activations: class 0 is hot on the given cells (row0, row1, col0, col1) of each image."""
    original = model.attend

    def attend(scale, x):
        out = original(scale, x)
        if scale == 0:
            activations = torch.zeros_like(out['activations'])
            for b, (r0, r1, c0, c1) in enumerate(regions):
                activations[b, 0, r0:r1, c0:c1] = 5.0
            attention = activations[:, :-1].amax(1)
            from timm_fgvc.layers import otsu_mask
            out.update(activations=activations, attention=attention, object_mask=otsu_mask(attention))
        return out
    model.attend = attend


def test_next_scale_zooms_into_the_otsu_box_and_attention_maps_back():
    model = tiny_caa(num_scales=2).eval()
    planted_activations(model, [(0, 2, 1, 3), (1, 3, 0, 1)])  # 3 x 3 cells of 32 px at 96 px
    x = torch.rand(2, 3, 96, 96)
    attention, details = model.attention_maps(x, return_details=True)
    assert details['object_mask_0'][0].nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    boxes = details['scale_boxes']
    assert boxes[0, 1].tolist() == [32, 0, 96, 64] and boxes[1, 1].tolist() == [0, 32, 32, 96]
    zoomed = details['zoomed_regions'][:, 0]
    expected = F.interpolate(x[:1, :, 0:64, 32:96], size=(96, 96), mode='bilinear', align_corners=False)
    assert torch.allclose(zoomed[0, :, 4:-4, 4:-4], expected[0, :, 4:-4, 4:-4], atol=1e-5)  # 1.5x zoom
    # scale 1's attention lies inside its box in the original image, zero outside; scale 0's covers the image
    assert attention[0, 1, :, :30].abs().max() == 0 and attention[0, 1, 66:].abs().max() == 0
    assert attention[0, 1, 2:62, 34:94].max() > 0
    assert abs(attention[0, 0].max() - 1) < 1e-5 and attention.min() >= 0


def test_prediction_is_the_mean_over_scales_of_object_and_local_softmax():
    model = tiny_caa().eval()
    x = torch.randn(2, 3, 96, 96)
    out = model.forward_train(x)
    per_scale = [(out.logits[f'object_{k}'].softmax(-1) + out.logits[f'local_{k}'].softmax(-1)) / 2
                 for k in range(3)]
    assert torch.allclose(model(x).exp(), torch.stack(per_scale).mean(0), atol=1e-5)
    assert torch.allclose(model(x).exp().sum(-1), torch.ones(2), atol=1e-5)
    singles = torch.cat([model(x[i:i + 1]) for i in range(2)])
    assert torch.allclose(model(x), singles, atol=1e-4) and torch.equal(model(x), model(x))


def test_stages_train_one_scale_after_another():
    model = tiny_caa()
    stages = model.training_stages()
    assert [s.name for s in stages] == ['scale_0', 'scale_1', 'scale_2'] and all(s.epochs == 40 for s in stages)
    apply_stage(model, stages[1])
    trainable = {n.split('.')[0] + '.' + n.split('.')[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'zoom_backbones.0', 'heads.local_1', 'heads.object_1'}
    model.train()
    out = model.forward_train(torch.randn(2, 3, 96, 96), torch.tensor([0, 1]))
    assert 'object_1' in out.logits and 'object_2' not in out.logits  # scale 2 is not run in scale 1's stage
    losses = model.loss(out, torch.tensor([0, 1]))
    assert set(stages[1].loss_terms) <= set(losses)
    # every scale's backbone is a pretrained backbone (lower lr) and sits in timm's layer groups
    assert any(n.startswith('zoom_backbones.1.') for n in model.pretrained_parameter_names())
    assert re.match(model.group_matcher()['stem'], 'zoom_backbones.1.conv1.weight')
    shared = tiny_caa(share_backbone=True)
    assert not any(n.startswith('zoom_backbones') for n, _ in shared.named_parameters())
    assert all('backbone.' in s.trainable for s in shared.training_stages())


def test_short_training_lowers_the_local_and_object_losses(short_training):
    losses = short_training(tiny_caa(num_classes=4, num_scales=2), num_classes=4, image_size=96, lr=0.02)
    # the local terms chase a moving target (M_b comes from their own activations), so they fall more slowly
    for term, factor in (('loss_local_0', 0.8), ('loss_object_0', 0.5), ('loss_local_1', 0.8),
                         ('loss_object_1', 0.5)):
        first, last = losses[term]
        assert last < factor * first, (term, first, last)
    assert math.isfinite(losses['loss'][1])
