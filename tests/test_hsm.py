"""HSM: saliency modulation with a skip connection (Eq. 2-3), the fusion point, the two training steps."""
import copy
import threading
import warnings

import pytest
import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.engine.trainer import apply_stage
from timm_fgvc.models.hsm import (DeadSaliencyWarning, SaliencyModulation, default_fusion_point,
                                  has_identity_shortcut, residual_block_paths)


def tiny_hsm(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('hsm_resnet18', num_classes=num_classes, backbone='test_resnet', **kwargs)


def test_modulation_scales_features_by_saliency_plus_one_eq2_and_its_gradient_eq3():
    block = SaliencyModulation(torch.nn.Identity())
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    saliency = torch.zeros(2, 1, 3, 3)
    saliency[0, 0, 0, 0] = 2.0  # top-left cell: the top-left 2 x 2 of the 6 x 6 map, bilinearly
    with block.modulating(saliency):
        out = block(features)
    resized = torch.nn.functional.interpolate(saliency, size=(6, 6), mode='bilinear', align_corners=False)
    assert torch.allclose(out, features * (resized + 1))  # Eq. 2
    assert torch.allclose(out[1], features[1])  # s = 0: the skip connection passes l unchanged
    upstream = torch.randn_like(out)
    out.backward(upstream)
    assert torch.allclose(features.grad, upstream * (resized + 1))  # Eq. 3
    assert torch.equal(block(features), features)  # outside `modulating`: the block as it is


def test_threads_sharing_one_model_each_modulate_with_their_own_saliency():
    """Two threads predict with one model, both inside the backbone at once (held at its stem): each result is the
    one-thread result. With the map stored on the fusion block, one thread modulated with the other's map."""
    model = tiny_hsm().eval()
    images = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)]
    with torch.no_grad():
        expected = [model(x) for x in images]
        unmodulated = model.forward_head(model.backbone.forward_features(images[0]))
    assert (unmodulated - expected[0]).abs().max() > 1e-3  # the saliency changes the prediction
    barrier, results = threading.Barrier(2, timeout=60), [None, None]

    def predict(i):
        with torch.no_grad():
            results[i] = model(images[i])

    def hold(*_):  # both threads past setting their map, neither at the fusion block yet
        barrier.wait()

    hook = model.backbone.conv1.register_forward_hook(hold)
    threads = [threading.Thread(target=predict, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hook.remove()
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_recomputes_each_forward_with_its_own_saliency():
    """Two forwards, one backward (two views in one loss): with gradient checkpointing backward recomputes the
    fusion block of each forward with that forward's map, so the gradients are those without checkpointing; the
    model keeps no map of a finished step, so it can be copied (an EMA, a best-model copy)."""
    torch.manual_seed(0)
    model = tiny_hsm().train()
    images = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)]

    def gradients(checkpointing: bool):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        sum(model(x).logsumexp(1).sum() for x in images).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and any(n.startswith('saliency.') for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    copy.deepcopy(model)


@pytest.mark.parametrize('reentrant, fusion_module', [(True, None), (False, 'layer1.0.conv2')])
def test_gradient_checkpointing_that_recomputes_from_other_tensors_uses_the_last_forwards_saliency(
        reentrant, fusion_module):
    """Reentrant checkpointing recomputes from detached inputs, and a fusion point inside a block is recomputed
    from the block's input: the map cannot be found by the fusion input there, so the last forward's map is used
    (exact for one forward per backward; a miss left the block unmodulated, 65% off or a CheckpointError)."""
    import timm.layers
    torch.manual_seed(0)
    model = tiny_hsm(**({'fusion_module': fusion_module} if fusion_module else {})).train()
    x = torch.randn(2, 3, 64, 64)

    def gradients(checkpointing: bool):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        model(x).logsumexp(1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = timm.layers.use_reentrant_ckpt()
    timm.layers.set_reentrant_ckpt(reentrant)
    try:
        plain, checkpointed = gradients(False), gradients(True)
    finally:
        timm.layers.set_reentrant_ckpt(before)
    assert plain.keys() == checkpointed.keys() and any(n.startswith('saliency.') for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fusion_point_per_backbone_reaches_an_identity_shortcut():
    assert residual_block_paths(timm.create_model('resnet50', num_classes=0))[3] == 'layer2.0'
    assert residual_block_paths(timm.create_model('test_convnext', num_classes=0))[3] == 'stages.2.blocks.0'
    # the paper's footnote: after ResNet-152's fourth block (layer2.0), i.e. the input of layer2.1
    assert default_fusion_point(timm.create_model('resnet152', num_classes=0)) == ('layer2.1', 'input')
    # ResNet-18's fourth block (layer2.1) feeds layer3.0, whose two paths start with conv + BN: one block earlier
    resnet18 = timm.create_model('hsm_resnet18', num_classes=3)
    assert (resnet18.fusion_module, resnet18.fusion_side) == ('layer2.1', 'input')
    assert isinstance(resnet18.backbone.layer2[1], SaliencyModulation)
    # backbones whose blocks are not ResNet's (RegNet used to fail), each at an identity-shortcut block, stride >= 8
    for name, expected in [('regnety_002', 's3.b2'), ('efficientnet_b0', 'blocks.2.1'),
                           ('test_convnext', 'stages.1.blocks.0')]:
        backbone = timm.create_model(name, num_classes=0)
        path, side = default_fusion_point(backbone)
        assert (path, side) == (expected, 'input')
        assert has_identity_shortcut(backbone.get_submodule(path))
        model = timm.create_model('hsm_resnet18', backbone=name, num_classes=3).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    model = tiny_hsm(fusion_module='layer3.0')
    assert isinstance(model.backbone.layer3[0], SaliencyModulation) and model.fusion_side == 'output'
    assert tiny_hsm(fusion_block=2).fusion_module == 'layer2.0'
    with pytest.raises(ValueError, match='fusion_block'):
        tiny_hsm(fusion_block=9)
    with pytest.raises(ValueError, match='no module'):
        tiny_hsm(fusion_module='layer9.0')


def test_isotropic_backbones_fuse_after_the_first_quarter_of_their_blocks():
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=0, depth=8, img_size=64)
    assert default_fusion_point(vit) == ('blocks.2', 'input')  # 8 blocks: the input of the third
    block = SaliencyModulation(torch.nn.Identity(), 'input', num_prefix_tokens=1)
    tokens = torch.randn(2, 1 + 4 * 4, 3)
    with block.modulating(torch.full((2, 1, 2, 2), 2.0), (64, 64)):
        out = block(tokens)
    assert torch.allclose(out[:, 0], tokens[:, 0])  # the class token is not a place in the image
    assert torch.allclose(out[:, 1:], 3 * tokens[:, 1:])  # Eq. 2 on every patch token


def _calibrated_logits(model, x, saliency_value):
    """Eval-mode logits after BatchNorm statistics were gathered with this (spatially uniform) saliency, as
    training with it would leave them."""
    model.saliency_map = lambda images: torch.full((images.shape[0], 1, 3, 3), saliency_value)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model.forward_features(x)
        model.eval()
        return model(x)


def test_uniform_saliency_changes_the_output_at_the_default_fusion_point():
    """A constant s is normalised away by a block whose paths both start with conv + BN (the old fusion after
    ResNet-18's 4th block); at the default point it reaches the output through an identity shortcut."""
    x = torch.randn(4, 3, 64, 64)

    def logit_change(**kwargs):
        torch.manual_seed(0)
        model = timm.create_model('hsm_resnet18', num_classes=5, backbone_args=dict(zero_init_last=False), **kwargs)
        return (_calibrated_logits(model, x, 1.5) - _calibrated_logits(model, x, 0.)).abs().max().item()

    assert logit_change(fusion_module='layer2.1') < 1e-3  # the old point: the modulation is cancelled
    assert logit_change() > 0.05  # the default


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
    assert trainable == {'saliency'}  # step 1 freezes "all the remaining layers", the head included
    apply_stage(model, finetune)
    assert all(p.requires_grad for p in model.parameters())  # Approach B
    with_head = tiny_hsm(saliency_step_trains_head=True)
    apply_stage(with_head, with_head.training_stages()[0])
    assert {n.split('.')[0] for n, p in with_head.named_parameters() if p.requires_grad} == {'saliency', 'heads'}
    model_a = tiny_hsm(approach='A')
    apply_stage(model_a, model_a.training_stages()[1])
    assert not any(p.requires_grad for p in model_a.saliency.parameters())
    assert all(p.requires_grad for n, p in model_a.named_parameters() if not n.startswith('saliency.'))
    with pytest.raises(ValueError, match='approach'):
        tiny_hsm(approach='C')


def test_step_two_reinitialises_the_classifier_only_after_step_one_in_the_same_run():
    model = tiny_hsm(num_classes=4)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.fill_(0.5)
        head.bias.fill_(0.25)  # "trained" in step 1 (with saliency_step_trains_head) or loaded
    weight = head.weight
    saliency_step, finetune = model.training_stages()
    apply_stage(model, saliency_step)
    model.start_training_stage(saliency_step, None)
    apply_stage(model, finetune)  # entering the stage (e.g. a resume inside it) never touches weights
    assert torch.all(head.weight == 0.5)
    fresh = model.start_training_stage(finetune, saliency_step)  # the engine: step 2's first step -> Xavier
    assert model.get_classifier().weight is weight  # in place: the optimiser keeps its parameters
    assert any(p is weight for p in fresh)  # and the engine drops their optimiser state
    bound = (6 / sum(head.weight.shape)) ** 0.5
    assert head.weight.abs().max() <= bound and head.weight.std() > bound / 4 and torch.all(head.bias == 0)
    started = tiny_hsm(num_classes=4)  # a run that starts at step 2 keeps the head it loaded
    with torch.no_grad():
        started.get_classifier().weight.fill_(0.5)
    assert started.start_training_stage(started.training_stages()[1], None) == []
    assert torch.all(started.get_classifier().weight == 0.5)


def test_step_one_keeps_a_live_saliency_map_and_warns_when_it_dies():
    """A few AdamW steps of step 1 through the engine's parameter groups (trained-looking BN statistics, frozen):
    with a zero score bias and weight decay on the score, every cell died within three steps at lr 1e-4."""
    from timm_fgvc import parameter_groups
    from torchvision.transforms.functional import to_tensor

    from timm_fgvc.data.synthetic import make_synthetic_fgvc
    data = make_synthetic_fgvc(num_classes=4, train_per_class=4, test_per_class=1, image_size=64, seed=0)['train']
    images, labels = torch.stack([to_tensor(img) for img in data['image']]), torch.tensor(data['label'])
    model = tiny_hsm(num_classes=4, backbone_args=dict(zero_init_last=False))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model.backbone(images)  # BatchNorm statistics of the data, as a pretrained backbone has them
    frozen_norms = apply_stage(model, model.training_stages()[0])
    groups = parameter_groups(model, 1e-4, 1e-4, weight_decay=5e-3)
    score = [g for g in groups if g['name'] == 'new:saliency.score.']
    assert len(score) == 1 and score[0]['weight_decay'] == 0 and len(score[0]['params']) == 2
    assert model.no_weight_decay() == {'saliency.score.weight', 'saliency.score.bias'}
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    model.train()
    for norm in frozen_norms:
        norm.eval()
    for _ in range(5):
        loss = model.loss(model.forward_train(images, labels), labels)['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert (model.saliency_map(images) > 0).float().mean() > 0.05
        model.saliency.score.bias.fill_(-100.)  # a dead branch
    model.dead_saliency_check_every = 1
    with pytest.warns(DeadSaliencyWarning, match='all zero'):
        model.forward_train(images, labels)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.dead_saliency_check_every = 1000
        model.forward_train(images, labels)  # rate-limited: the next batch is not checked
        model.eval()
        model.forward_train(images, labels)  # nor are evaluation batches


def test_step_one_trains_the_saliency_branch_for_classification(short_training):
    model = tiny_hsm(num_classes=4, saliency_step_trains_head=True)
    apply_stage(model, model.training_stages()[0])
    backbone_before = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    saliency_before = [p.detach().clone() for p in model.saliency.parameters()]
    losses = short_training(model, num_classes=4, image_size=96, lr=0.02)
    first, last = losses['loss_main']
    assert last < 0.7 * first, (first, last)
    assert all(torch.equal(v, dict(model.backbone.named_parameters())[k]) for k, v in backbone_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(saliency_before, model.saliency.parameters()))


@pytest.mark.parametrize('norm_stats', ['batch', 'frozen'])
def test_step_one_batchnorm_statistics_follow_the_chosen_mode(norm_stats):
    """Step 1 freezes the RGB path's weights either way; its BatchNorm layers track batch statistics ('batch', the
    default: a uniform (s + 1) is then not read as a shift of the pretrained statistics) or keep theirs."""
    from timm_fgvc.engine.trainer import TrainStep
    model = tiny_hsm(num_classes=3, saliency_step_norm_stats=norm_stats)
    step = TrainStep(model)
    step.frozen_norms = apply_stage(model, model.training_stages()[0])
    step.train()
    norm = model.backbone.bn1
    weight, stats = norm.weight.detach().clone(), norm.running_mean.clone()
    images, target = torch.rand(4, 3, 64, 64) * 3, torch.tensor([0, 1, 2, 0])
    step(images, target)['losses']['loss'].backward()
    assert norm.weight.grad is None and torch.equal(norm.weight, weight)
    assert torch.equal(norm.running_mean, stats) == (norm_stats == 'frozen')
    assert norm.training == (norm_stats == 'batch')


def test_step_one_norm_stats_mode_is_checked():
    with pytest.raises(ValueError, match="'batch'"):
        tiny_hsm(saliency_step_norm_stats='running')


def test_saliency_lr_scale_puts_the_whole_branch_in_its_own_slower_groups():
    from timm_fgvc import parameter_groups
    model = tiny_hsm(num_classes=3, saliency_lr_scale=0.05)
    groups = {g['name']: g for g in parameter_groups(model, 0.02, 0.01, weight_decay=1e-4)}
    saliency = {id(p) for p in model.saliency.parameters()}
    score, rest = groups['new:saliency.score.'], groups['new:saliency.']
    assert {id(p) for p in score['params'] + rest['params']} == saliency
    assert score['lr'] == pytest.approx(1e-3) and score['weight_decay'] == 0
    assert rest['lr'] == pytest.approx(1e-3) and rest['weight_decay'] == pytest.approx(1e-4)
    assert not saliency & {id(p) for p in groups['new']['params'] + groups['backbone']['params']}
    assert tiny_hsm(num_classes=3).param_group_rules == {'saliency.score.': {'lr_scale': 1.0, 'weight_decay': 0.}}


def test_reflect_padding_takes_the_border_cue_out_of_the_saliency_map():
    """On an image of one colour the only thing telling cells apart is the padding: with AlexNet's zeros the
    border cells of the map differ from the centre, with 'reflect' every cell is the same."""
    torch.manual_seed(0)
    flat = torch.full((1, 3, 128, 128), 0.7)
    spreads = {}
    for padding in ('zeros', 'reflect'):
        model = timm.create_model('hsm_resnet18', num_classes=5, saliency_padding=padding).eval()
        with torch.no_grad():
            scores = model.saliency.score(model.saliency.features(flat))  # before ReLU: no cell hidden at 0
        spreads[padding] = (scores.max() - scores.min()).item() / scores.abs().max().item()
    assert spreads['zeros'] > 0.05
    assert spreads['reflect'] < 1e-4
    with pytest.raises(ValueError, match='saliency_padding'):
        timm.create_model('hsm_resnet18', num_classes=5, saliency_padding='circular')
