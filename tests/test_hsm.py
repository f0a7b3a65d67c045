"""HSM: saliency modulation with a skip connection (Eq. 2-3), the fusion point, the two training steps."""
import pytest
import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.engine.trainer import apply_stage
from timm_fgvc.models.hsm import SaliencyModulation, residual_block_paths


def tiny_hsm(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('hsm_resnet18', num_classes=num_classes, backbone='test_resnet', **kwargs)


def test_modulation_scales_features_by_saliency_plus_one_eq2_and_its_gradient_eq3():
    block = SaliencyModulation(torch.nn.Identity())
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    saliency = torch.zeros(2, 1, 3, 3)
    saliency[0, 0, 0, 0] = 2.0  # top-left cell: the top-left 2 x 2 of the 6 x 6 map, bilinearly
    block.saliency = saliency
    out = block(features)
    resized = torch.nn.functional.interpolate(saliency, size=(6, 6), mode='bilinear', align_corners=False)
    assert torch.allclose(out, features * (resized + 1))  # Eq. 2
    assert torch.allclose(out[1], features[1])  # s = 0: the skip connection passes l unchanged
    upstream = torch.randn_like(out)
    out.backward(upstream)
    assert torch.allclose(features.grad, upstream * (resized + 1))  # Eq. 3
    block.saliency = None
    assert torch.equal(block(features), features)


def test_fusion_follows_the_fourth_residual_block():
    assert residual_block_paths(timm.create_model('resnet50', num_classes=0))[3] == 'layer2.0'
    assert residual_block_paths(timm.create_model('test_convnext', num_classes=0))[3] == 'stages.2.blocks.0'
    assert timm.create_model('hsm_resnet18', num_classes=3).fusion_module == 'layer2.1'
    assert timm.create_model('hsm_resnet152', num_classes=3).fusion_module == 'layer2.0'  # the paper's footnote
    model = tiny_hsm(fusion_module='layer3.0')
    assert isinstance(model.backbone.layer3[0], SaliencyModulation)
    with pytest.raises(ValueError, match='fusion_block'):
        tiny_hsm(fusion_block=9)
    with pytest.raises(ValueError, match='no module'):
        tiny_hsm(fusion_module='layer9.0')


def test_hallucinated_saliency_modulates_where_it_is_high():
    model = tiny_hsm(fusion_module='layer2.0').eval()
    planted = torch.zeros(2, 1, 4, 4)
    planted[:, :, :2, :2] = 3.0  # the top-left quarter is salient
    model.saliency_map = lambda x: planted
    seen = {}
    block = model.backbone.layer2[0]
    block.register_forward_hook(lambda module, args, out: seen.update(modulated=out))
    block.block.register_forward_hook(lambda module, args, out: seen.update(plain=out))
    x = torch.randn(2, 3, 96, 96)
    model(x)
    modulated, plain = seen['modulated'], seen['plain']
    h, w = plain.shape[-2:]
    corner, far = (..., slice(0, h // 4), slice(0, w // 4)), (..., slice(-(h // 4), None), slice(-(w // 4), None))
    assert plain[corner].abs().sum() > 0
    assert torch.allclose(modulated[corner], 4 * plain[corner], atol=1e-5)  # s + 1 = 4
    assert torch.allclose(modulated[far], plain[far], atol=1e-5)  # s = 0: unchanged


def test_two_training_steps_and_approaches():
    model = tiny_hsm()
    saliency_step, finetune = model.training_stages()
    assert finetune.epochs == 70
    apply_stage(model, saliency_step)
    trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'saliency', 'heads'}  # the RGB path is frozen in step 1
    apply_stage(model, finetune)
    assert all(p.requires_grad for p in model.parameters())  # Approach B
    model_a = tiny_hsm(approach='A')
    apply_stage(model_a, model_a.training_stages()[1])
    assert not any(p.requires_grad for p in model_a.saliency.parameters())
    assert all(p.requires_grad for n, p in model_a.named_parameters() if not n.startswith('saliency.'))
    with pytest.raises(ValueError, match='approach'):
        tiny_hsm(approach='C')


def test_step_one_trains_the_saliency_branch_for_classification(short_training):
    model = tiny_hsm(num_classes=4)
    apply_stage(model, model.training_stages()[0])
    backbone_before = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    saliency_before = [p.detach().clone() for p in model.saliency.parameters()]
    losses = short_training(model, num_classes=4, image_size=96, lr=0.02)
    first, last = losses['loss_main']
    assert last < 0.7 * first, (first, last)
    assert all(torch.equal(v, dict(model.backbone.named_parameters())[k]) for k, v in backbone_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(saliency_before, model.saliency.parameters()))
