"""bench/grad_norm.py: the backbone gradient each model's training loss sends, in the stage that trains a backbone."""
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401  (registers the models)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from grad_norm import backbone_gradient_norm  # noqa: E402


@pytest.fixture(scope='module')
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 96, 96, generator=g), torch.tensor([0, 1, 2, 3])


def test_a_plain_model_counts_every_parameter_but_its_classifier(batch):
    images, labels = batch
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=4).train()
    measured = backbone_gradient_norm(model, images, labels)
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    by_hand = torch.sqrt(sum((p.grad ** 2).sum() for n, p in model.named_parameters() if not n.startswith('fc.')))
    assert measured == pytest.approx(by_hand.item(), rel=1e-4)
    assert by_hand < torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))  # the classifier is left out


def test_hsm_is_measured_in_its_step_2(batch):
    """HSM's first stage trains the saliency branch alone (the backbone gets no gradient there): the probe must
    take step 2, where the backbone trains, and its loss."""
    images, labels = batch
    torch.manual_seed(0)
    model = timm.create_model('hsm_tiny', num_classes=4)
    assert backbone_gradient_norm(model, images, labels) > 0
    assert all(p.requires_grad for p in model.backbone.parameters())  # step 2's trainable set was applied


def test_caa_is_measured_on_its_first_scale_loss(batch):
    """CAA's first stage trains scale 0: its backbone and heads, with that scale's two loss terms only."""
    images, labels = batch
    torch.manual_seed(0)
    model = timm.create_model('caa_tiny', num_classes=4)
    measured = backbone_gradient_norm(model, images, labels)
    model.zero_grad()
    torch.manual_seed(0)
    losses = model.loss(model.forward_train(images, labels), labels)
    (losses['loss_local_0'] + losses['loss_object_0']).backward()
    by_hand = torch.sqrt(sum((p.grad ** 2).sum() for n, p in model.named_parameters()
                             if n.startswith('backbone.') and p.grad is not None))
    assert measured == pytest.approx(by_hand.item(), rel=1e-3)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith('zoom_backbones.'))
