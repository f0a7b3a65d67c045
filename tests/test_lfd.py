"""LFD: max-pooled CAM attention (Eq. 2), region proposals and zoom, hybrid head, losses and learning."""
import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401
from timm_fgvc.layers import box_iou, class_response_maps


def tiny_lfd(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('lfd_resnet18', num_classes=num_classes, backbone='test_resnet', **kwargs)


def test_attention_is_the_max_over_all_class_maps_eq2():
    model = tiny_lfd(smoothing_sigma=0.)
    features = torch.randn(2, model.backbone_features, 5, 6)
    maps = class_response_maps(features, model.heads['image'].weight)  # M_k for every class k
    expected = torch.stack([maps[:, k] for k in range(model.num_classes)]).amax(0)
    assert torch.allclose(model.attention(features), expected, atol=1e-5)
    # not the predicted class's map alone: a cell where only a non-predicted class responds is still attended
    model.smoothing_sigma = 1.
    smoothed = model.attention(features)
    assert torch.allclose(smoothed.mean((1, 2)), expected.mean((1, 2)), rtol=0.2)
    assert smoothed.std() < expected.std()  # Gaussian smoothing


def planted_feature_backbone(model, hot_cells):
    """Replace the image-level feature map: one channel is hot at the given (row, col) cell of each image."""
    original = model.backbone.forward_features

    def forward_features(x):
        out = original(x)
        if x.shape[-1] != 96:  # the zoomed regions go through the real backbone
            return out
        planted = torch.zeros_like(out)
        for b, (row, col) in enumerate(hot_cells):
            planted[b, 0, row, col] = 10.0
        return planted
    model.backbone.forward_features = forward_features
    with torch.no_grad():
        model.heads['image'].weight.zero_()
        model.heads['image'].weight[:, 0] = 1.0  # every class map = channel 0


def test_first_region_is_centred_on_the_attention_peak_and_zoomed():
    model = tiny_lfd(smoothing_sigma=0.).eval()
    planted_feature_backbone(model, [(0, 2), (1, 1)])  # 3 x 3 feature cells of 32 px at 96 px
    x = torch.rand(2, 3, 96, 96)
    _, details = model.attention_maps(x, return_details=True)
    boxes = details['region_boxes']
    size = model.region_size(96)
    assert size == round(96 * 160 / 448)
    assert torch.equal(boxes[0, 0], torch.tensor([96. - size, 0., 96., float(size)]))  # corner cell, shifted in
    centre = (boxes[1, 0, :2] + boxes[1, 0, 2:]) / 2
    assert torch.allclose(centre, torch.tensor([48., 48.]))
    assert details['region_mask'].all() and torch.all(box_iou(boxes, boxes).triu(1) <= model.nms_threshold)
    # the zoomed region is the box's content, magnified to zoom_size (224 / 448 of the input side)
    zoom = model.zoom_size(96)
    x1, y1, x2, y2 = boxes[1, 0].long().tolist()
    expected = F.interpolate(x[1:2, :, y1:y2, x1:x2], size=(zoom, zoom), mode='bilinear', align_corners=False)[0]
    crop = details['zoomed_regions'][1, 0]
    assert crop.shape[-1] == zoom > size and torch.allclose(crop[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-5)


def test_hybrid_feature_is_image_plus_top_l_regions_and_batching_is_exact():
    model = tiny_lfd().eval()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 96, 96)
    out = model._focus(x)
    d = model.backbone_features
    assert model.num_features == (1 + model.num_hybrid_regions) * d
    assert torch.equal(out['hybrid_feature'][:, :d], out['image_feature'])
    assert torch.equal(out['hybrid_feature'][:, d:].view(3, model.num_hybrid_regions, d),
                       out['region_features'][:, :model.num_hybrid_regions])
    assert torch.all(out['region_scores'][:, :-1] >= out['region_scores'][:, 1:])  # top-l = best ranked
    singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(model(x), singles, atol=1e-4)
    assert torch.equal(model(x), model(x))


def test_region_loss_ignores_masked_regions():
    model = tiny_lfd()
    x, target = torch.randn(2, 3, 96, 96), torch.tensor([1, 3])
    out = model.forward_train(x, target)
    out.extras['region_mask'] = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    reference = model.loss(out, target)['loss_region']
    out.logits['region'] = out.logits['region'].clone()
    out.logits['region'][0, 4:] = torch.randn(2, model.num_classes) * 100  # garbage in the masked slots
    assert torch.allclose(model.loss(out, target)['loss_region'], reference)
    per_slot = F.cross_entropy(out.logits['region'][1], target[1].repeat(6), reduction='none')
    per_slot0 = F.cross_entropy(out.logits['region'][0, :4], target[0].repeat(4), reduction='none')
    assert torch.allclose(reference, torch.cat([per_slot0, per_slot]).mean(), atol=1e-6)


def test_invalid_region_counts_fail_clearly():
    with pytest.raises(ValueError, match='num_hybrid_regions'):
        tiny_lfd(num_regions=3, num_hybrid_regions=4)


def test_short_training_lowers_all_three_losses(short_training):
    # lr 0.02: at 0.05 the moving attention re-selects regions and the losses spike on this tiny problem
    losses = short_training(tiny_lfd(num_classes=4), num_classes=4, image_size=96, lr=0.02)
    for term in ('loss_image', 'loss_region', 'loss_hybrid'):
        first, last = losses[term]
        assert last < 0.7 * first, (term, first, last)
