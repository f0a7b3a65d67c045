"""Any timm backbone (issue 12): CNNs, Swin-style and ViT-style transformers give every method an NCHW map.

Backbones are the smallest of their family, shrunk where timm allows it (`backbone_args`), at 64 x 96 px with
3 classes, so the whole file runs in well under a minute on one CPU core.
"""
import copy
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
import torch.nn as nn
from timm.models import register_model
from timm.optim import param_groups_layer_decay

import timm_fgvc  # noqa: F401  (registers the methods)
from method_variants import METHOD_PREFIXES
from timm_fgvc.models._base import backbone_info, create_backbone

METHODS = METHOD_PREFIXES
SWIN = 'swin_tiny_patch4_window7_224'
VIT = 'vit_tiny_patch16_224'
SMALL_SWIN = dict(embed_dim=24, depths=(2, 1, 1, 1), num_heads=(1, 1, 1, 1))  # 2 blocks: shifted windows too
SMALL_VIT = dict(depth=2)
BACKBONES = {
    'resnet18': {},
    'convnext_atto': {},
    'efficientnet_b0': {},
    'regnety_002': {},
    SWIN: dict(SMALL_SWIN, img_size=64),
    VIT: dict(SMALL_VIT, img_size=64),
}


@pytest.mark.parametrize('backbone', list(BACKBONES))
@pytest.mark.parametrize('method', METHODS)
def test_every_method_on_every_backbone(method, backbone):
    """Eval forward, forward_train + loss backward into the backbone, attention maps in image coordinates."""
    torch.manual_seed(0)
    model = timm.create_model(f'{method}_resnet18', backbone=backbone, backbone_args=BACKBONES[backbone],
                              num_classes=3)
    x, target = torch.randn(2, 3, 64, 96), torch.tensor([0, 2])

    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()

    model.train()
    losses = model.loss(model.forward_train(x, target), target)
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone_grads and any(g.abs().sum() > 0 for g in backbone_grads), 'no gradient reached the backbone'

    model.eval()
    with torch.no_grad():
        attention = model.attention_maps(x)
    assert attention.ndim == 4 and attention.shape[0] == 2 and attention.shape[-2:] == (64, 96)
    assert torch.isfinite(attention).all()
    assert attention.min() >= -1e-5 and attention.max() <= 1 + 1e-5


@pytest.mark.parametrize('name, kwargs, stride', [
    ('resnet18', {}, 32),
    (SWIN, SMALL_SWIN, 32),
    (VIT, dict(SMALL_VIT, reg_tokens=4), 16),  # a class token and 4 register tokens before the patches
])
def test_feature_map_is_laid_out_on_the_image(name, kwargs, stride):
    """Changing one image cell changes that cell of the map most: patch tokens are in row-major image order,
    prefix tokens dropped, H and W not swapped."""
    torch.manual_seed(0)
    backbone = create_backbone(name, **kwargs).eval()
    assert backbone_info(backbone).reduction == stride
    x = torch.randn(1, 3, 4 * stride, 6 * stride)
    changed = x.clone()
    row, col = 2, 4
    changed[..., row * stride:(row + 1) * stride, col * stride:(col + 1) * stride] += 3
    with torch.no_grad():
        before, after = backbone.forward_features(x), backbone.forward_features(changed)
    assert before.shape[-2:] == (4, 6)
    difference = (after - before).abs().mean(1)[0]  # [h, w]
    assert divmod(difference.argmax().item(), 6) == (row, col)


def test_vit_map_is_its_normed_patch_tokens():
    """The map is timm's own output (final norm applied), the prefix tokens dropped and the patches reshaped."""
    torch.manual_seed(0)
    backbone = create_backbone(VIT, **SMALL_VIT, reg_tokens=2).eval()
    plain = timm.create_model(VIT, num_classes=0, **SMALL_VIT, reg_tokens=2, dynamic_img_size=True).eval()
    plain.load_state_dict(backbone.state_dict())
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        tokens = plain.forward_features(x)  # [B, 3 + 3 * 5, D]
        spatial = backbone.forward_features(x)
    expected = tokens[:, plain.num_prefix_tokens:].reshape(2, 3, 5, -1).permute(0, 3, 1, 2)
    assert spatial.shape == (2, 192, 3, 5)
    assert torch.allclose(spatial, expected, atol=1e-5)


@pytest.mark.parametrize('name, kwargs', [(SWIN, SMALL_SWIN), (VIT, SMALL_VIT)])
def test_transformers_take_any_input_size(name, kwargs):
    """128 and 448 px as well as the odd sizes of crops and zooms (padded to whole patches)."""
    backbone = create_backbone(name, **kwargs).eval()
    stride = backbone_info(backbone).reduction
    with torch.no_grad():
        for size in (128, 448, 57, 100):
            assert backbone.forward_features(torch.randn(1, 3, size, size)).shape[-1] == -(-size // stride)


def test_backbone_without_dynamic_size_gets_resized_inputs():
    """A ViT without dynamic sizing reads a 96 px input resized (bilinear) to its 224, not zero-padded to it."""
    backbone = create_backbone(VIT, depth=1, dynamic_img_size=False).eval()
    assert backbone_info(backbone).fixed_size == (224, 224)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        features = backbone.forward_features(x)
        resized = backbone.forward_features(F.interpolate(x, size=(224, 224), mode='bilinear', align_corners=False))
        padded = backbone.forward_features(F.pad(x, (0, 128, 0, 128)))
    assert features.shape == (1, 192, 14, 14) and torch.allclose(features, resized, atol=1e-5)
    assert not torch.allclose(features, padded, atol=1e-2)


def test_cnn_backbones_stay_plain_timm_models():
    """Same class and state-dict keys as timm's model: checkpoints of the CNN variants still load."""
    backbone = create_backbone('resnet18')
    assert type(backbone) is type(timm.create_model('resnet18'))
    assert list(backbone.state_dict()) == list(timm.create_model('resnet18', num_classes=0).state_dict())
    model = timm.create_model('s3n_resnet18', num_classes=3)
    reference = timm.create_model('resnet18', num_classes=0).state_dict()
    assert [k[len('backbone.'):] for k in model.state_dict() if k.startswith('backbone.')] == list(reference)


def test_transformer_backbones_stay_timm_models():
    """A ViT backbone is still a VisionTransformer with timm's module paths and keys (timm weights load into it),
    survives pickling and deepcopy, and its position embedding is exempt from weight decay in the method."""
    from timm.models.vision_transformer import VisionTransformer
    model = timm.create_model('s3n_vit_small', num_classes=3, backbone_args=dict(img_size=64, depth=1))
    backbone = model.backbone
    assert isinstance(backbone, VisionTransformer) and isinstance(backbone.get_submodule('blocks.0'), nn.Module)
    plain = timm.create_model('vit_small_patch16_224', num_classes=0, img_size=64, depth=1)
    assert list(backbone.state_dict()) == list(plain.state_dict())
    assert model.pretrained_cfg['first_conv'] == ('backbone.patch_embed.proj',)  # every image reader: one here
    assert isinstance(model.get_submodule(model.pretrained_cfg['first_conv'][0]), nn.Conv2d)
    assert {'backbone.pos_embed', 'backbone.cls_token'} <= model.no_weight_decay()
    groups = param_groups_layer_decay(model, layer_decay=0.5)  # timm's use of group_matcher
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert type(copied.backbone) is type(backbone)
            assert torch.allclose(copied(x), reference, atol=1e-6)


def test_registered_transformer_variants_build():
    """One transformer variant per method, built (shrunk) and run once; the paper input size in their cfg."""
    shrink = {'vit_small': dict(depth=1), 'swin_tiny': dict(depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1,) * 4)}
    variants = [n for n in timm.list_models() if n.split('_', 1)[0] in METHODS and n.endswith(tuple(shrink))]
    assert {n.split('_', 1)[0] for n in variants} == set(METHODS)
    for name in variants:
        size = timm.models.get_pretrained_cfg(name).input_size[-1]
        img_size = dict(img_size=size) if name.split('_', 1)[0] != 'hsm' else {}
        args = dict(shrink[name.split('_', 1)[1]], **img_size)
        model = timm.create_model(name, num_classes=3, backbone_args=args).eval()
        assert backbone_info(model.backbone).layout in ('tokens', 'NHWC')
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_output_stride():
    """A CNN dilates; a transformer's stride is its patch size: accepted when equal, a clear error otherwise."""
    assert backbone_info(create_backbone('resnet18', output_stride=16)).reduction == 16
    assert backbone_info(create_backbone(VIT, output_stride=16, **SMALL_VIT)).reduction == 16
    with pytest.raises(ValueError, match=f"{VIT}.*no output_stride option.*stride 16"):
        create_backbone(VIT, output_stride=8, **SMALL_VIT)
    # an input size for transformers is ignored by a CNN (registered ViT variants with backbone='resnet18')
    assert backbone_info(create_backbone('resnet18', img_size=448)).layout == 'NCHW'


class _PooledOnly(nn.Module):
    """A toy model whose features have no spatial layout at all."""
    num_features = 8

    def __init__(self, tokens: bool = False, **kwargs):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Conv2d(3, 8, 4, stride=4)

    def forward_features(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2) if self.tokens else x.mean((2, 3))


@register_model
def fgvc_test_pooled_only(pretrained=False, **kwargs):
    return _PooledOnly()


@register_model
def fgvc_test_tokens_only(pretrained=False, **kwargs):
    return _PooledOnly(tokens=True)


def test_backbone_without_a_spatial_map_fails_at_construction():
    with pytest.raises(ValueError, match="'fgvc_test_pooled_only'.*no spatial feature map"):
        timm.create_model('s3n_resnet18', backbone='fgvc_test_pooled_only', num_classes=3)
    with pytest.raises(ValueError, match="'fgvc_test_tokens_only'.*no forward_intermediates"):
        timm.create_model('lfd_resnet18', backbone='fgvc_test_tokens_only', num_classes=3)
