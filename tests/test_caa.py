"""CAA: local classifiers (Eq. 1), local and object losses (Eq. 2-5), Otsu masks, multi-scale zoom, stages."""
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401
from timm_fgvc.engine.trainer import apply_stage
from timm_fgvc.layers import crop_regions
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


def test_local_loss_smooths_each_location_as_cross_entropy_does():
    torch.manual_seed(0)
    activations = torch.randn(2, 4, 3, 3)  # L = 3 classes + background
    mask = torch.rand(2, 3, 3) > 0.5
    target = torch.tensor([2, 0])
    labels = torch.where(mask, target.view(2, 1, 1), torch.tensor(3))  # the background class outside M_b
    per_cell = F.cross_entropy(activations, labels, label_smoothing=0.2, reduction='none')  # [B, h, w]
    w = mask.float().mean((1, 2))
    l1, l0 = (per_cell * mask).sum((1, 2)), (per_cell * ~mask).sum((1, 2))
    expected = (((1 - w) * l1 + w * l0) / 9).mean()  # Eq. 2 on smoothed cells
    assert torch.allclose(local_loss(activations, mask, target, label_smoothing=0.2), expected, atol=1e-6)
    assert not torch.allclose(local_loss(activations, mask, target), expected, atol=1e-3)


def planted_activations(model, regions, scale=0):
    """A scale's local activations: class 0 is hot on the given cells (row0, row1, col0, col1) of each image."""
    original = model.attend

    def attend(k, x):
        out = original(k, x)
        if k == scale:
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
    assert details['attention_0'][0].flatten().argmax().item() in (1, 2, 4, 5)  # the planted cells on its own grid
    boxes = details['scale_boxes']
    assert boxes[0, 1].tolist() == [32, 0, 96, 64] and boxes[1, 1].tolist() == [0, 32, 32, 96]
    zoomed = details['zoomed_regions'][:, 0]
    expected = F.interpolate(x[:1, :, 0:64, 32:96], size=(96, 96), mode='bilinear', align_corners=False)
    assert torch.allclose(zoomed[0, :, 4:-4, 4:-4], expected[0, :, 4:-4, 4:-4], atol=1e-5)  # 1.5x zoom
    # scale 1's attention lies inside its box in the original image, zero outside; scale 0's covers the image
    assert attention[0, 1, :, :30].abs().max() == 0 and attention[0, 1, 66:].abs().max() == 0
    assert attention[0, 1, 2:62, 34:94].max() > 0
    assert abs(attention[0, 0].max() - 1) < 1e-5 and attention.min() >= 0


def test_zoomed_views_are_the_scales_images_without_the_last_scales_pass():
    model = tiny_caa(num_scales=3).eval()
    planted_activations(model, [(0, 2, 1, 3), (1, 3, 0, 1)])
    calls = []
    for k in range(3):  # count each scale's backbone passes
        backbone = model.scale_backbone(k)
        backbone.forward_features = lambda x, k=k, f=backbone.forward_features: calls.append(k) or f(x)
    x = torch.rand(2, 3, 96, 96)
    views, boxes = model.zoomed_views(x)
    assert calls == [0, 1]  # scale 2's view needs scales 0 and 1 only
    _, details = model.attention_maps(x, return_details=True)
    assert torch.equal(views[:, 0], x) and torch.allclose(views[:, 1:], details['zoomed_regions'])
    assert torch.equal(boxes, details['scale_boxes']) and boxes[0, 1].tolist() == [32, 0, 96, 64]
    calls.clear()
    views, boxes = model.zoomed_views(x, num_scales=2)
    assert calls == [0] and views.shape[1] == 2 and not views.requires_grad
    expected = F.interpolate(x[:1, :, 0:64, 32:96], size=(96, 96), mode='bilinear', align_corners=False)
    assert torch.allclose(views[0, 1, :, 4:-4, 4:-4], expected[0, :, 4:-4, 4:-4], atol=1e-5)  # 1.5x zoom


def test_a_nested_scale_is_cut_from_the_input_once():
    """Scale 2's view is its box in the original image, interpolated once, not a zoom of scale 1's zoomed view."""
    model = tiny_caa(num_scales=3).eval()
    planted_activations(model, [(0, 2, 1, 3)], scale=0)  # 32 px cells at 96 px: box [32, 0, 96, 64]
    planted_activations(model, [(1, 3, 0, 2)], scale=1)  # in scale 1's view: [0, 32, 64, 96]
    side = 96
    pixels = torch.arange(side).float()

    def pattern(u, v):  # a smooth image, known between pixel centres
        return torch.sin(2 * math.pi * u / 9) * torch.cos(2 * math.pi * v / 7)

    x = pattern(pixels[None, :], pixels[:, None]).expand(1, 3, side, side).contiguous()
    views, boxes = model.zoomed_views(x)
    assert torch.allclose(boxes[0, 2], torch.tensor([32, 64 / 3, 32 + 128 / 3, 64]), atol=1e-4)
    x1, y1, x2, y2 = boxes[0, 2].tolist()
    u = x1 + (pixels + 0.5) * (x2 - x1) / side - 0.5
    v = y1 + (pixels + 0.5) * (y2 - y1) / side - 0.5
    ideal = pattern(u[None, :], v[:, None])[4:-4, 4:-4]
    direct = (views[0, 2, 0, 4:-4, 4:-4] - ideal).abs().mean()
    zoom_of_zoom = crop_regions(views[:, 1], torch.tensor([[[0., 32., 64., 96.]]]), (side, side))[0, 0, 0]
    assert direct < 0.75 * (zoom_of_zoom[4:-4, 4:-4] - ideal).abs().mean()


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


def test_joint_schedule_trains_every_scale_in_one_stage_each_on_its_own_loss():
    model = tiny_caa(scale_schedule='joint')
    (stage,) = model.training_stages()
    assert stage.epochs == 40
    apply_stage(model, stage)
    model.set_training_stage(stage)
    model.train()
    images, target = torch.randn(2, 3, 96, 96), torch.tensor([0, 1])
    losses = model.loss(model.forward_train(images, target), target)
    assert {f'loss_{t}_{k}' for t in ('local', 'object') for k in range(3)} <= set(losses)
    # scale 1's loss reaches scale 1's backbone only: its crop, made from scale 0's detached mask, carries no gradient
    model.zero_grad()
    losses['loss_object_1'].backward()
    grads = {name.split('.')[0] + ('.' + name.split('.')[1] if name.startswith('zoom') else ''): p.grad
             for name, p in model.named_parameters() if 'backbone' in name}
    assert grads['backbone'] is None and grads['zoom_backbones.1'] is None
    assert grads['zoom_backbones.0'] is not None and grads['zoom_backbones.0'].abs().sum() > 0
    with pytest.raises(ValueError, match="'sequential'.*'joint'"):
        tiny_caa(scale_schedule='together')


def test_joint_schedule_lowers_every_scales_losses(short_training):
    losses = short_training(tiny_caa(num_classes=4, num_scales=2, scale_schedule='joint'), num_classes=4,
                            image_size=96, lr=0.02)
    for term, factor in (('loss_local_0', 0.8), ('loss_object_0', 0.5), ('loss_local_1', 0.8),
                         ('loss_object_1', 0.5)):
        first, last = losses[term]
        assert last < factor * first, (term, first, last)


def test_short_training_lowers_the_local_and_object_losses(short_training):
    losses = short_training(tiny_caa(num_classes=4, num_scales=2), num_classes=4, image_size=96, lr=0.02)
    # the local terms chase a moving target (M_b comes from their own activations), so they fall more slowly
    for term, factor in (('loss_local_0', 0.8), ('loss_object_0', 0.5), ('loss_local_1', 0.8),
                         ('loss_object_1', 0.5)):
        first, last = losses[term]
        assert last < factor * first, (term, first, last)
    assert math.isfinite(losses['loss'][1])


class _Planted(torch.nn.Module):
    def __init__(self, activations):
        super().__init__()
        self.activations = activations

    def forward(self, feature_map):
        return self.activations


def test_attention_from_the_activations_by_default_or_from_their_probabilities():
    """M is the channel max of A without the background channel (Sec. 4.3, Fig. 2): by default a cell with a large
    class activation ranks first whatever its background activation; with `attention_from='probabilities'` M is the
    max non-background softmax probability, and a cell with a larger background activation is background."""
    activations = torch.zeros(1, 4, 3, 3)  # L = 3 classes + background
    activations[0, 0, 0, 0], activations[0, -1, 0, 0] = 6.0, 12.0  # confidently background
    activations[0, 1, 2, 2] = 3.0  # confidently class 1
    x = torch.rand(1, 3, 96, 96)
    maps = {}
    for source in ('probabilities', 'logits'):
        model = tiny_caa(num_classes=3, num_scales=1, attention_from=source).eval()
        model.heads['local_0'] = _Planted(activations)
        maps[source] = model.attend(0, x)['attention'][0]
    expected = activations.softmax(1)[0, :-1].amax(0)
    assert torch.allclose(maps['probabilities'], expected, atol=1e-6)
    assert maps['probabilities'][2, 2] > 0.8 > 0.01 > maps['probabilities'][0, 0]
    assert maps['logits'][0, 0] > maps['logits'][2, 2]  # raw activations rank the large class logit first
    assert torch.equal(maps['logits'], activations[0, :-1].amax(0))
    assert tiny_caa().attention_from == 'logits'
    with pytest.raises(ValueError, match='attention_from'):
        tiny_caa(attention_from='scores')


def test_next_scale_backbone_starts_from_the_trained_previous_scale():
    model = tiny_caa(num_scales=3)
    stages = model.training_stages()
    apply_stage(model, stages[0])
    assert model.start_training_stage(stages[0], None) == []
    with torch.no_grad():  # scale 0's backbone is "trained" in its stage
        for p in model.backbone.parameters():
            p.add_(0.5)
    kept = list(model.zoom_backbones[0].parameters())
    apply_stage(model, stages[1])  # entering a stage (e.g. on a resume inside it) never touches weights
    assert not torch.equal(model.zoom_backbones[0].conv1[0].weight, model.backbone.conv1[0].weight)
    fresh = model.start_training_stage(stages[1], stages[0])  # the engine: at the stage's first step
    trained = model.backbone.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.zoom_backbones[0].state_dict().items())
    assert all(a is b for a, b in zip(kept, model.zoom_backbones[0].parameters()))  # in place: the optimiser's
    assert {id(p) for p in fresh} == {id(p) for p in kept}  # whose optimiser state the engine drops
    assert not torch.equal(model.zoom_backbones[1].conv1[0].weight, model.backbone.conv1[0].weight)  # not yet
    model.start_training_stage(stages[2], stages[1])
    assert torch.equal(model.zoom_backbones[1].conv1[0].weight, model.zoom_backbones[0].conv1[0].weight)
    # a run that starts at scale 1 keeps the weights it loaded; 'independent' never copies
    started_late = tiny_caa(num_scales=3)
    before = started_late.zoom_backbones[0].conv1[0].weight.clone()
    assert started_late.start_training_stage(started_late.training_stages()[1], None) == []
    assert torch.equal(started_late.zoom_backbones[0].conv1[0].weight, before)
    independent = tiny_caa(num_scales=2, zoom_init='independent')
    independent.start_training_stage(independent.training_stages()[1], independent.training_stages()[0])
    assert not torch.equal(independent.zoom_backbones[0].conv1[0].weight, independent.backbone.conv1[0].weight)
    with pytest.raises(ValueError, match='zoom_init'):
        tiny_caa(zoom_init='copy')


def test_previous_model_starts_the_next_scale_as_the_trained_previous_scale():
    """zoom_init='previous_model': scale 1 starts as scale 0's trained model, heads included, so on the same view
    it predicts what scale 0 does; 'previous' copies the backbone only."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for zoom_init in ('previous_model', 'previous'):
        model = tiny_caa(num_classes=4, num_scales=2, zoom_init=zoom_init).eval()
        stages = model.training_stages()
        with torch.no_grad():  # scale 0 "trained" in its stage
            for p in list(model.backbone.parameters()) + list(model.heads.parameters()):
                p.add_(0.1 * torch.randn_like(p))
        fresh = model.start_training_stage(stages[1], stages[0])
        head_params = {id(p) for h in ('local_1', 'object_1') for p in model.heads[h].parameters()}
        with torch.no_grad():
            scale_0, scale_1 = model.attend(0, x), model.attend(1, x)
        same = torch.allclose(scale_1['object_logits'], scale_0['object_logits'], atol=1e-5)
        same_local = torch.allclose(scale_1['activations'], scale_0['activations'], atol=1e-5)
        if zoom_init == 'previous_model':
            assert same and same_local
            assert head_params <= {id(p) for p in fresh}  # the engine drops their optimiser state too
        else:
            assert not same and not same_local
            assert not head_params & {id(p) for p in fresh}


def test_test_time_resizes_the_short_side_without_cutting_it():
    """The paper tests on the whole image resized to a short side of 448 (Sec. 4.1), fully convolutionally."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model('caa_resnet50', num_classes=3, pretrained=False)
    config = resolve_data_config({}, model=model, use_test_size=True)
    assert config['input_size'] == (3, 448, 448) and config['crop_pct'] == 1.0
    image = torch.zeros(3, 400, 600)
    image[0, :8] = 1.0  # a red band on the top rows of the short side, a blue one at the bottom
    image[2, -8:] = 1.0
    out = create_transform(**config, is_training=False)(Image.fromarray(
        (image.permute(1, 2, 0) * 255).byte().numpy()))
    mean, std = torch.tensor(config['mean']).view(3, 1), torch.tensor(config['std']).view(3, 1)
    top, bottom = out[:, 0] * std + mean, out[:, -1] * std + mean
    assert top[0].mean() > 0.9 and bottom[2].mean() > 0.9  # nothing cut from the short side
    tiny = tiny_caa(num_scales=2).eval()
    assert tiny(torch.rand(1, 3, 96, 144)).shape == (1, 5)  # any aspect: fully convolutional


def test_the_mask_stays_on_the_object_while_the_local_classifiers_learn():
    """Local classifiers (Eq. 1) trained with the local loss (Eq. 2-4) on the Otsu mask of their own M. The object's
    cells carry weak class evidence and twice the feature norm of the rest (ReLU features share a positive direction;
    measured on the transfer protocol's backbone: 16 vs 8). With M from A (the default) the mask stays on the
    object; with M from softmax probabilities the background logit, pushed up on the rest's features, grows faster
    on the object's larger ones and the mask flips to the background, as it did in the transfer protocol."""
    from timm_fgvc.layers import otsu_mask
    batch, dim, classes, side = 32, 64, 10, 8
    obj = torch.zeros(side, side, dtype=torch.bool)
    obj[2:6, 2:6] = True
    torch.manual_seed(0)
    evidence, shared = torch.rand(classes, dim), torch.rand(dim)
    shares = {}
    for source in ('logits', 'probabilities'):
        torch.manual_seed(1)
        head = LocalClassifiers(dim, classes, num_classifiers=16)
        optimizer = torch.optim.SGD(head.parameters(), lr=0.02, momentum=0.9)
        for _ in range(60):
            target = torch.randint(0, classes, (batch,))
            features = torch.rand(batch, dim, side, side) * 0.5 + shared[None, :, None, None]
            features = (features + 0.3 * evidence[target][:, :, None, None] * obj) * (1 + obj.float())
            activations = head(features)
            scores = activations.softmax(1) if source == 'probabilities' else activations
            mask = otsu_mask(scores[:, :-1].amax(1).detach())
            loss = local_loss(activations, mask, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        shares[source] = (mask[:, obj].float().mean().item(), mask[:, ~obj].float().mean().item())
    assert shares['logits'][0] > 0.9 and shares['logits'][1] < 0.1, shares
    assert shares['probabilities'][0] < 0.1 and shares['probabilities'][1] > 0.9, shares


def test_object_head_max_pools_the_feature_map_over_the_otsu_mask_eq5(monkeypatch):
    """Eq. 5: the object feature is the max of f(X) over the cells of M_b only (a cell outside can hold a channel's
    larger value); an empty M_b pools the whole map; the object logits are the object head's on that feature."""
    torch.manual_seed(0)
    model = timm.create_model('caa_tiny', num_classes=4).eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        out = model.attend(0, x)
        feature_map = model.scale_backbone(0).forward_features(x)
        mask = out['object_mask']
        assert mask.any((1, 2)).all() and not mask.all((1, 2)).any()  # a real mask in each image
        expected = torch.stack([feature_map[b][:, mask[b]].amax(-1) for b in range(3)])
        assert not torch.allclose(expected, feature_map.amax((2, 3)))  # the mask matters here
        assert torch.allclose(out['object_feature'], expected, atol=1e-6)
        assert torch.allclose(out['object_logits'], model.heads['object_0'](expected), atol=1e-5)
        monkeypatch.setattr(model, 'object_mask', lambda attention: torch.zeros_like(attention, dtype=torch.bool))
        empty = model.attend(0, x)
    assert torch.allclose(empty['object_feature'], feature_map.amax((2, 3)), atol=1e-6)
