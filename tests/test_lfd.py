"""LFD: max-pooled CAM attention (Eq. 2), region proposals and zoom, hybrid head, losses and learning."""
import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401
from timm_fgvc.layers import box_iou, class_response_maps


def tiny_lfd(num_classes=5, **kwargs):
    """test_resnet at output stride 8: 12 x 12 cells of 8 px at 96 px, so 5-cell (40 px) regions fit (lfd_tiny)."""
    torch.manual_seed(0)
    kwargs.setdefault('backbone_args', dict(output_stride=8))
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
    # Gaussian smoothing, sigma 1 cell, written out: weights exp(-(dy^2 + dx^2) / 2) over offsets -2..2, normalised,
    # reading the border cell for offsets outside the map (replicate)
    h, w = expected.shape[-2:]
    offsets = range(-2, 3)
    weights = {(dy, dx): math.exp(-(dy ** 2 + dx ** 2) / 2) for dy in offsets for dx in offsets}
    total = sum(weights.values())
    by_hand = torch.zeros_like(expected)
    for i in range(h):
        for j in range(w):
            by_hand[:, i, j] = sum(v * expected[:, min(max(i + dy, 0), h - 1), min(max(j + dx, 0), w - 1)]
                                   for (dy, dx), v in weights.items()) / total
    assert torch.allclose(smoothed, by_hand, atol=1e-5)


def planted_feature_backbone(model, hot_cells, image_size=96):
    """Replace the image-level feature map: one channel is hot at the given (row, col) cell of each image."""
    original = model.backbone.forward_features

    def forward_features(x):
        out = original(x)
        if x.shape[-1] != image_size:  # the zoomed regions go through the real backbone
            return out
        planted = torch.zeros_like(out)
        for b, (row, col) in enumerate(hot_cells):
            planted[b, 0, row, col] = 10.0
        return planted
    model.backbone.forward_features = forward_features
    with torch.no_grad():
        model.heads['image'].weight.zero_()
        model.heads['image'].weight[:, 0] = 1.0  # every class map = channel 0


def test_padded_regions_are_centred_on_the_attention_peak_and_zoomed():
    """With `border='pad'` (NTS-Net's) each region is centred on its cell, a corner one too, and the part outside
    the image is zero padding."""
    model = tiny_lfd(smoothing_sigma=0., border='pad').eval()
    planted_feature_backbone(model, [(0, 11), (6, 6)])  # 12 x 12 feature cells of 8 px at 96 px
    x = torch.rand(2, 3, 96, 96) + 1.  # >= 1 everywhere: zeros in a crop are padding
    _, details = model.attention_maps(x, return_details=True)
    boxes = details['region_boxes']
    size = model.region_size(96)
    assert size == 5 * 8  # 5 cells of the stride, as 160 px = 5 x 32 at 448
    assert torch.equal(boxes[0, 0], torch.tensor([92. - 20, 4. - 20, 92. + 20, 4. + 20]))  # cell (0, 11) centred
    centre = (boxes[1, 0, :2] + boxes[1, 0, 2:]) / 2
    assert torch.allclose(centre, torch.tensor([52., 52.]))
    assert details['region_mask'].all() and torch.all(box_iou(boxes, boxes).triu(1) <= model.nms_threshold)
    # the zoomed region is the box's content on a zero-padded image, magnified by 224 / 160
    zoom = model.zoom_size(96)
    assert zoom == 56
    padded = F.pad(x, (20, 20, 20, 20))
    for b in range(2):
        x1, y1, x2, y2 = (boxes[b, 0] + 20).long().tolist()
        expected = F.interpolate(padded[b:b + 1, :, y1:y2, x1:x2], size=(zoom, zoom), mode='bilinear',
                                 align_corners=False)[0]
        crop = details['zoomed_regions'][b, 0]
        inside = (slice(None), slice(24, -2), slice(2, 32)) if b == 0 else (slice(None), slice(2, -2), slice(2, -2))
        assert torch.allclose(crop[inside], expected[inside], atol=1e-5)
    corner = details['zoomed_regions'][0, 0]
    assert corner[:, :20].abs().max() == 0 and corner[:, :, 35:].abs().max() == 0  # outside the image


def test_default_regions_are_moved_inside_the_image_and_hold_only_image():
    """The default (`border='shift'`): a corner peak's region is moved inside the image, still covering its cell,
    and its zoomed crop holds image everywhere (no padding to learn from)."""
    model = tiny_lfd(smoothing_sigma=0.).eval()
    planted_feature_backbone(model, [(0, 11), (6, 6)])
    x = torch.rand(2, 3, 96, 96) + 1.  # >= 1 everywhere: a zero would be padding
    _, details = model.attention_maps(x, return_details=True)
    corner = details['region_boxes'][0, 0]
    assert torch.equal(corner, torch.tensor([56., 0., 96., 40.]))  # the 40 px square in the top-right corner
    assert corner[0] <= 88 < corner[2] and corner[1] <= 0 < corner[3]  # cell (0, 11) spans x 88-96, y 0-8
    assert details['zoomed_regions'][0].min() > 0.9


def test_region_size_follows_the_feature_stride_and_small_inputs_warn():
    """160 px at 448 is 5 cells of stride 32; at stride 16 the same 5 cells are 80 px, so NMS at 0.25 keeps
    regions >= 3 cells apart at any input size. The input-relative reading is kept as `region_scale`."""
    r50 = timm.create_model('lfd_resnet50', num_classes=3)
    assert (r50.region_size(448), r50.zoom_size(448), r50.min_meaningful_input) == (160, 224, 352)
    r18_os16 = timm.create_model('lfd_resnet18', num_classes=3, backbone_args=dict(output_stride=16))
    assert (r18_os16.region_size(448), r18_os16.zoom_size(448), r18_os16.min_meaningful_input) == (80, 112, 176)
    relative = timm.create_model('lfd_resnet18', num_classes=3, region_scale=160 / 448)
    assert (relative.region_size(448), relative.zoom_size(448), relative.region_size(96)) == (160, 224, 34)
    with pytest.raises(ValueError, match='not both'):
        timm.create_model('lfd_resnet18', num_classes=3, region_cells=5, region_scale=0.3)
    # NMS acts in cells: the runner-up next to the peak is suppressed, a cell 4 away survives
    model = tiny_lfd(smoothing_sigma=0.).eval()
    attention = torch.zeros(1, 12, 12)
    attention[0, 6, 6], attention[0, 6, 7], attention[0, 6, 10] = 1.0, 0.95, 0.9
    from timm_fgvc.layers import propose_square_regions
    regions = propose_square_regions(attention, 96, model.region_size(96), 6, model.nms_threshold)
    centres = ((regions.boxes[0, :2, :2] + regions.boxes[0, :2, 2:]) / 2 / 8 - 0.5).tolist()
    assert centres == [[6., 6.], [10., 6.]]  # (x, y) in cells
    cells = (regions.boxes[0, :, :2] + regions.boxes[0, :, 2:]) / 2 / 8
    gaps = (cells[:, None] - cells[None]).abs().amax(-1) + torch.eye(6) * 99
    assert gaps.min() >= 2  # no two kept regions on neighbouring cells (5-cell squares 1 cell apart: IoU 0.67)
    # a 3 x 3 grid (test_resnet at stride 32, 96 px) is below the minimum: it runs, capped, and says so
    small = tiny_lfd(backbone_args={}).eval()
    with pytest.warns(UserWarning, match='output_stride'):
        small(torch.randn(1, 3, 96, 96))
    assert small.region_size(96) == 96


def test_attention_is_float32_under_bf16_autocast():
    model = tiny_lfd()
    torch.manual_seed(0)
    features = torch.randn(2, model.backbone_features, 12, 12)
    reference = model.attention(features)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = model.attention(features)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, atol=1e-6, rtol=1e-6)


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
    # 64 px: 8 x 8 cells of 8 px; 3-cell (24 px) regions, so that m = 6 fit apart (`regions_apart`), zoomed to 34 px
    losses = short_training(tiny_lfd(num_classes=4, region_cells=3), num_classes=4, image_size=64, lr=0.02)
    for term in ('loss_image', 'loss_region', 'loss_hybrid'):
        first, last = losses[term]
        assert last < 0.7 * first, (term, first, last)


def _centred_attention(batch, grid, seed=0):
    """Bird-like maps: a bump at the centre of the grid plus noise (CUB's birds are mostly centred)."""
    torch.manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(grid * 1.), torch.arange(grid * 1.), indexing='ij')
    centre = (grid - 1) / 2
    return torch.exp(-((xx - centre) ** 2 + (yy - centre) ** 2) / grid) + 0.1 * torch.rand(batch, grid, grid)


@pytest.mark.parametrize('grid, region_cells, fits', [(8, 5, False), (8, 3, True), (14, 5, True)])
def test_the_model_warns_where_nms_cannot_keep_m_regions_apart(grid, region_cells, fits):
    """The paper's 5-cell regions on its 14 x 14 map (448 px at stride 32) leave NMS room for m = 6; on the 8 x 8
    map of 128 px at stride 16, moved inside the image, they fit 2 x 2 apart, so NMS leaves slots empty (masked
    copies of region 1) and the model says so; 3-cell regions (the paper's share of image and map) fill all six."""
    from timm_fgvc.layers import propose_square_regions
    model = tiny_lfd(region_cells=region_cells, backbone_args=dict(output_stride=16))
    side = grid * model.feature_reduction
    regions = propose_square_regions(_centred_attention(64, grid), side, model.region_size(side),
                                     model.num_regions, model.nms_threshold, border=model.border)
    filled = regions.mask.float().sum(1)
    assert (model.regions_apart(grid, region_cells) >= model.num_regions) == fits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model._check_grid(grid, side)
    assert bool(caught) != fits
    if fits:
        assert filled.min() == model.num_regions
    else:
        assert 'fit only about 4' in str(caught[0].message)
        assert "'output_stride': 8" in str(caught[0].message)  # the next stride down, not the one it runs at
        assert filled.mean() < 4  # a centre pick leaves room for fewer than the 2 x 2 corners
        assert torch.equal(regions.boxes[~regions.mask], regions.boxes[:, :1].expand_as(regions.boxes)[~regions.mask])


def test_the_region_head_is_scored_over_the_regions_nms_kept():
    """At evaluation the region head's top-1 is the share of each image's real regions that are right: the slots
    NMS could not fill repeat region 1 and would count it again."""
    from accelerate import Accelerator
    from timm_fgvc.engine.config import TrainConfig
    from timm_fgvc.engine.trainer import TrainStep, evaluate
    model = tiny_lfd(num_classes=4, backbone_args=dict(output_stride=16)).eval()  # 5-cell regions, 8 x 8 map
    torch.manual_seed(3)
    x = torch.randn(16, 3, 128, 128)
    with torch.no_grad(), pytest.warns(UserWarning, match='fit only about'):
        features = model._focus(x)['region_features'].flatten(0, 1)
        shared = features.mean(0) / features.mean(0).norm()
        weight = torch.randn_like(model.heads['region'].weight)
        # a region head blind to what all regions share, so that regions of one image disagree
        model.heads['region'].weight.copy_(100 * (weight - (weight @ shared)[:, None] * shared))
        model.heads['region'].bias.zero_()
    with torch.no_grad(), pytest.warns(UserWarning, match='fit only about'):
        out = model.forward_train(x)
    region_logits, mask = out.logits['region'], out.extras['region_mask']
    assert not mask.all()
    target = region_logits[:, 0].argmax(-1)  # region 1 right: its copies would inflate the score
    hits = (region_logits.argmax(-1) == target[:, None]).float()
    expected = 100 * ((hits * mask).sum(1) / mask.sum(1)).mean().item()
    assert expected < 100 * hits.mean().item() - 1  # the unmasked mean would differ
    with pytest.warns(UserWarning, match='fit only about'):
        metrics = evaluate(Accelerator(cpu=True), TrainStep(model), [{'pixel_values': x, 'labels': target}],
                           TrainConfig())
    assert metrics['eval_top1_region'] == pytest.approx(expected, abs=1e-4)
