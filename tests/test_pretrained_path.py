"""`--pretrained-path` / `pretrained_backbone=FILE`: a plain timm model's weights from a local file go into every
backbone of every method and into a plain model (the transfer protocol, SPEC §8); a file that does not fit fails
with the key names. Offline: the weights file is made here."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_fgvc  # noqa: F401
from method_variants import TINY_VARIANTS
from timm_fgvc.engine.config import TrainConfig
from timm_fgvc import parameter_groups
from timm_fgvc.engine.trainer import build_model, resolve_backbone_lr

METHODS = TINY_VARIANTS  # all on timm's test_resnet


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A 'pretrained' test_resnet with a 7-way classifier and non-default BatchNorm statistics, saved to a file."""
    torch.manual_seed(123)
    model = timm.create_model('test_resnet', num_classes=7)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn_like(tensor)
                tensor.copy_(noise.abs() + 0.5 if 'running_var' in name else noise)
    path = tmp_path_factory.mktemp('weights') / 'test_resnet_source.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, {k: v.clone() for k, v in model.state_dict().items()}




def _assert_loaded(backbone, tensors):
    # HSM wraps its fusion block (`<block>.block.*`) after the weights are loaded: compare by the plain names
    own = {k.replace('.block.', '.'): v for k, v in backbone.state_dict().items()}
    compared = 0
    for name, tensor in tensors.items():
        if name.startswith('fc.'):
            continue
        assert torch.equal(own[name], tensor), name
        compared += 1
    assert compared == len([k for k in own if not k.startswith('fc.')])


@pytest.mark.parametrize('name, model_args, num_backbones', [
    *[(name, {}, 3 if name == 'caa_tiny' else 1) for name in METHODS],  # CAA: one backbone per scale
    ('lfd_tiny', {'share_backbone': False}, 2), ('s3n_tiny', {'share_backbone': False}, 2)])  # the views' own
def test_every_backbone_of_a_method_gets_the_file(source, name, model_args, num_backbones):
    path, tensors = source
    model = build_model(TrainConfig(model=name, pretrained_path=str(path), model_args=model_args), num_classes=3)
    backbones = [b for _, b in model.named_backbones()]
    assert len(backbones) == num_backbones and len({id(b) for b in backbones}) == num_backbones
    for backbone in backbones:
        _assert_loaded(backbone, tensors)
    # new layers stay random: the method's heads are not the file's 7-way classifier
    assert all(h.weight.shape[0] == 3 for h in model.heads.values() if isinstance(h, torch.nn.Linear))
    # and the backbone trains at the backbone lr (lr / 10 by default once something is pretrained)
    cfg = TrainConfig(model=name, pretrained_path=str(path), model_args=model_args, lr=0.02)
    groups = {g['name']: g for g in parameter_groups(model, cfg.lr, resolve_backbone_lr(cfg), 0.)}
    assert groups['backbone']['lr'] == pytest.approx(0.002)
    backbone_params = {id(p) for b in backbones for p in b.parameters()}
    assert backbone_params <= {id(p) for p in groups['backbone']['params']}


def test_python_api_spelling(source):
    path, tensors = source
    model = timm.create_model('s3n_tiny', num_classes=4, pretrained_backbone=str(path))
    _assert_loaded(model.backbone, tensors)
    fresh = timm.create_model('s3n_tiny', num_classes=4)
    assert not torch.equal(fresh.backbone.conv1[0].weight, model.backbone.conv1[0].weight)


def test_plain_model_keeps_the_classifier_only_when_it_fits(source):
    path, tensors = source
    other = build_model(TrainConfig(model='test_resnet', pretrained_path=str(path)), num_classes=3)
    _assert_loaded(other, tensors)
    assert other.fc.weight.shape == (3, other.fc.in_features)  # dropped: 7 classes in the file
    same = build_model(TrainConfig(model='test_resnet', pretrained_path=str(path)), num_classes=7)
    assert torch.equal(same.fc.weight, tensors['fc.weight'])


def test_output_stride_dilates_baseline_and_method_alike(source):
    path, _ = source
    x = torch.randn(1, 3, 64, 64)
    plain = build_model(TrainConfig(model='test_resnet', pretrained_path=str(path), output_stride=16), 3).eval()
    method = build_model(TrainConfig(model='s3n_tiny', pretrained_path=str(path), output_stride=16), 3).eval()
    assert plain.forward_features(x).shape[-2:] == (4, 4)  # 64 / 16, not 64 / 32
    assert method.feature_reduction == 16
    assert torch.allclose(method.backbone.forward_features(x), plain.forward_features(x), atol=1e-5)


def test_a_file_that_does_not_fit_names_the_keys(source, tmp_path):
    path, tensors = source
    broken = {k: v for k, v in tensors.items() if not k.startswith('layer4.0.conv2')}
    broken['extra.weight'] = torch.zeros(2)
    bad = tmp_path / 'bad.safetensors'
    save_file({k: v.contiguous() for k, v in broken.items()}, str(bad))
    with pytest.raises(ValueError, match=r'layer4\.0\.conv2') as info:
        build_model(TrainConfig(model='caa_tiny', pretrained_path=str(bad)), num_classes=3)
    assert 'extra.weight' in str(info.value)
    with pytest.raises(ValueError, match='extra.weight'):
        build_model(TrainConfig(model='test_resnet', pretrained_path=str(bad)), num_classes=3)
    with pytest.raises(FileNotFoundError, match='no such file'):
        build_model(TrainConfig(model='s3n_tiny', pretrained_path=str(tmp_path / 'missing.safetensors')), 3)
    method = tmp_path / 'method.safetensors'
    save_file(timm.create_model('ssanet_tiny', num_classes=3).state_dict(), str(method))
    with pytest.raises(ValueError, match='holds a timm-fgvc method.*checkpoint_path=FILE'):
        timm.create_model('s3n_tiny', num_classes=3, pretrained_backbone=str(method))


@pytest.mark.parametrize('name', ('hsm_tiny', 's3n_tiny'))
def test_a_trained_method_fine_tunes_on_another_label_set(source, name, tmp_path):
    """`--pretrained-path` with a method's own weights (HSM's step 2 from its step-1 model): every tensor but the
    classifier, which has the new task's size; a method of another kind does not fit and names the keys."""
    path, _ = source
    torch.manual_seed(0)
    trained = build_model(TrainConfig(model=name, pretrained_path=str(path)), num_classes=7)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # every tensor differs from the source file and from a fresh model
    weights = tmp_path / 'trained.safetensors'
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    model = build_model(TrainConfig(model=name, pretrained_path=str(weights)), num_classes=3)
    heads = tuple(model.pretrained_cfg['classifier'])
    own, theirs = model.state_dict(), trained.state_dict()
    compared = [k for k in own if not k.startswith(tuple(h + '.' for h in heads))]
    assert compared and all(torch.equal(own[k], theirs[k]) for k in compared)
    assert all(own[h + '.weight'].shape[0] == 3 for h in heads)  # the new 3-way classifiers, as built
    other = 'lfd_tiny'
    with pytest.raises(ValueError, match='unexpected in the file'):
        build_model(TrainConfig(model=other, pretrained_path=str(weights)), num_classes=3)


def test_one_channel_input_sums_the_file_stem_in_every_image_reader(source, tmp_path):
    """`in_chans=1` (grayscale) with RGB weights: the stem of every backbone and HSM's saliency branch gets the
    RGB kernel summed over its channels, as timm adapts its own pretrained weights, whether the weights are a plain
    backbone file (`pretrained_backbone`) or the method's own (`pretrained=True`); the rest loads unchanged."""
    path, tensors = source
    model = timm.create_model('s3n_tiny', num_classes=4, in_chans=1, pretrained_backbone=str(path))
    assert torch.allclose(model.backbone.conv1[0].weight, tensors['conv1.0.weight'].sum(1, keepdim=True))
    assert torch.equal(model.backbone.layer1[0].conv1.weight, tensors['layer1.0.conv1.weight'])
    for name, kwargs in (('caa_tiny', dict(num_scales=4)), ('hsm_tiny', {}), ('lfd_tiny', dict(share_backbone=False))):
        rgb = timm.create_model(name, num_classes=5, **kwargs)
        weights = tmp_path / f'{name}.safetensors'
        save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(weights))
        gray = timm.create_model(name, num_classes=5, in_chans=1, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
        stems = gray.pretrained_cfg['first_conv']
        assert len(stems) == len(gray.named_backbones()) + (name == 'hsm_tiny')  # HSM: + its saliency branch
        for stem in stems:
            summed = rgb.get_submodule(stem).weight.sum(1, keepdim=True)
            assert torch.allclose(gray.get_submodule(stem).weight, summed, atol=1e-6), stem
        assert gray(torch.rand(2, 1, 96, 96)).shape == (2, 5)


def test_a_method_with_its_own_head_count_loads_for_other_classes(tmp_path):
    """The classifier list timm drops on a change of classes is the instance's: CAA with 4 scales has 8 heads, not
    the registered 3 scales' 6, so its weights load for a new label set (timm's `num_classes` change)."""
    four = timm.create_model('caa_tiny', num_classes=5, num_scales=4)
    assert len(four.pretrained_cfg['classifier']) == len(four.heads) == 8
    weights = tmp_path / 'caa4.safetensors'
    save_file({k: v.contiguous() for k, v in four.state_dict().items()}, str(weights))
    fine_tuned = timm.create_model('caa_tiny', num_classes=3, num_scales=4, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(weights)))
    own, theirs = fine_tuned.state_dict(), four.state_dict()
    assert all(fine_tuned.get_submodule(h).weight.shape[0] in (3, 16 * (3 + 1))  # object head; 16 local classifiers
               for h in fine_tuned.pretrained_cfg['classifier'])  # of 3 classes + background
    assert all(torch.equal(own[k], theirs[k]) for k in own if not k.startswith('heads.'))
