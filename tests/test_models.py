"""The model contract (SPEC §2) for every registered method variant."""
import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

import timm_fgvc
from timm_fgvc.engine.checkpoint import load_weights
from timm_fgvc.models import FGVCModel
from timm_fgvc.models._builder import ModelBuildError
from method_variants import METHOD_PREFIXES, TINY_VARIANTS

METHOD_NAME_STARTS = tuple(f'{prefix}_' for prefix in METHOD_PREFIXES)
TINY = dict(backbone='test_resnet')  # 0.4 M parameters: contract checks stay fast on CPU


def registered_methods():
    return sorted(n for n in timm.list_models() if n.startswith(METHOD_NAME_STARTS))


def test_every_catalogued_method_has_the_tiny_variant_the_generic_tests_run():
    assert TINY_VARIANTS and all(timm.models.is_model(name) for name in TINY_VARIANTS), TINY_VARIANTS


def test_import_registers_methods():
    assert {'s3n_resnet18', 's3n_resnet50', 's3n_resnet101'} <= set(timm.list_models('s3n_*'))
    assert 's3n_resnet50.cub200' in timm.list_pretrained('s3n_*')
    assert timm.create_model('s3n_resnet50.cub200').pretrained_cfg['hf_hub_id'] == 'timm-fgvc/s3n_resnet50.cub200'


@pytest.mark.parametrize('name', registered_methods())
def test_create_with_num_classes_and_reset_every_head(name):
    model = timm.create_model(name, num_classes=7, **TINY)
    assert isinstance(model, FGVCModel) and model.num_classes == 7
    heads = model.pretrained_cfg['classifier']
    assert isinstance(heads, tuple) and len(heads) == len(model.heads)
    for head in heads:
        assert model.get_submodule(head).out_features == 7
    model.reset_classifier(3)
    for head in heads:
        assert model.get_submodule(head).out_features == 3
    assert model.get_classifier() is model.get_submodule(heads[0])
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    out = model.forward_train(x)
    assert torch.allclose(out.prediction, model(x), atol=1e-5)  # forward is the paper's evaluated output


@pytest.mark.parametrize('name', registered_methods())
def test_backbone_override_and_param_groups(name):
    model = timm.create_model(name, num_classes=4, backbone='test_convnext')
    assert model.backbone_name == 'test_convnext'
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    groups = param_groups_layer_decay(model, layer_decay=0.5)  # timm's use of group_matcher
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
    pretrained = set(model.pretrained_parameter_names())
    assert pretrained and all(n.startswith(model.backbone_prefixes) for n in pretrained)
    assert any(n.startswith('heads.') for n, _ in model.named_parameters() if n not in pretrained)


@pytest.mark.parametrize('name', registered_methods())
def test_works_under_autocast_and_channels_last(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 96, 96)
    reference = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model_cl(x.contiguous(memory_format=torch.channels_last)), reference, atol=1e-3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out_bf16 = model(x)
    assert torch.isfinite(out_bf16).all()
    # the fp32 prediction up to bf16 rounding (as test_low_precision), not merely the same top class on one image
    assert torch.nn.functional.cosine_similarity(out_bf16.float().flatten(), reference.flatten(), 0) > 0.98


@pytest.mark.parametrize('name', registered_methods())
def test_num_classes_zero_gives_features_or_a_clear_error(name):
    """timm's `num_classes=0` (a feature extractor): HSM's attention needs no classifier, so it gives its pooled
    features; S3N, LFD, CAA and SSANet attend through their classifier's weights and say so."""
    if name.startswith('hsm_'):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=0, **TINY).eval()
        x = torch.randn(2, 3, 96, 96)
        with torch.no_grad():
            features = model(x)
            assert features.shape == (2, model.num_features)
            assert torch.allclose(features, model.forward_head(model.forward_features(x), pre_logits=True),
                                  atol=1e-5)
        return
    with pytest.raises(ValueError, match=r'num_classes > 0.*pre_logits=True'):
        timm.create_model(name, num_classes=0, **TINY)
    model = timm.create_model(name, num_classes=3, **TINY).eval()
    with pytest.raises(ValueError, match='num_classes > 0'):
        model.reset_classifier(0)


@pytest.mark.parametrize('name, kwargs', [(name, {}) for name in TINY_VARIANTS]
                         + [('lfd_tiny', dict(share_backbone=False))])
def test_gradient_checkpointing_gives_the_same_step_on_every_backbone(name, kwargs):
    """`set_grad_checkpointing` recomputes every backbone's blocks in backward (CAA's per-scale backbones, a second
    backbone; HSM's fusion block modulated again): the loss and every gradient equal the step without it."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).train()
    x, y = torch.rand(4, 3, 96, 96), torch.tensor([0, 1, 2, 3])

    def step(enable: bool):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # the same random draws (S3N's sampling) in both steps
        loss = model.loss(model.forward_train(x, y), y)['loss']
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = step(False)
    checkpointed_loss, checkpointed = step(True)
    assert len(model.named_backbones()) >= (2 if name == 'caa_tiny' or kwargs else 1)
    assert all(backbone.grad_checkpointing for _, backbone in model.named_backbones())
    assert torch.allclose(plain_loss, checkpointed_loss, atol=1e-6) and plain.keys() == checkpointed.keys()
    for n in plain:
        assert torch.allclose(plain[n], checkpointed[n], atol=1e-5), n


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_drop_rate_drops_before_the_evaluated_head_in_training_only(name):
    """timm's `drop_rate`: dropout on the features of the head that makes the prediction, in training only."""
    plain = timm.create_model(name, num_classes=5).train()
    dropped = timm.create_model(name, num_classes=5, drop_rate=0.5).train()
    dropped.load_state_dict(plain.state_dict())
    x, y = torch.rand(2, 3, 96, 96), torch.tensor([0, 1])
    outputs = []
    for model in (plain, dropped):
        torch.manual_seed(0)  # the same random draws but dropout's
        outputs.append(model.forward_train(x, y).prediction)
    assert not torch.allclose(*outputs, atol=1e-4)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_soft_targets_give_the_hard_label_loss_or_a_clear_error(name):
    """timm's Mixup / CutMix make soft targets `[B, C]`: one-hot ones give the loss of the class indices where every
    term is a cross-entropy; CAA's and SSANet's losses need the true class (local classifiers, the navigator's
    ranking) and say so."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).eval()  # eval: the same forward for both losses
    x, y = torch.rand(2, 3, 96, 96), torch.tensor([1, 3])
    out = model.forward_train(x, y)
    one_hot = torch.nn.functional.one_hot(y, 5).float()
    if name in ('caa_tiny', 'ssanet_tiny'):
        with pytest.raises(ValueError, match='needs class indices.*soft targets'):
            model.loss(out, one_hot)
        return
    hard, soft = model.loss(out, y), model.loss(out, one_hot)
    assert hard.keys() == soft.keys() and all(torch.allclose(hard[k], soft[k], atol=1e-5) for k in hard)


@pytest.mark.parametrize('name, empty', [('s3n_tiny', 'no class peak'), ('caa_tiny', 'attention M is empty')])
def test_an_input_too_small_for_any_attention_warns(name, empty):
    """At 32 px test_resnet's map is 1 x 1: S3N finds no peak and CAA's Otsu mask is empty, so each is its backbone
    with extra heads; that is said (LFD and SSANet warn of their own limits), and 64 px is quiet."""
    import warnings
    model = timm.create_model(name, num_classes=3).eval()
    with pytest.warns(UserWarning, match=f'1 x 1 feature map.*{empty}.*at least 64 px'):
        details = model.attention_maps(torch.rand(1, 3, 32, 32), return_details=True)[1]
    if name == 's3n_tiny':
        assert not details['peak_mask'].any()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.attention_maps(torch.rand(1, 3, 64, 64))


def test_bad_inputs_fail_clearly():
    model = timm.create_model('s3n_resnet18', num_classes=3, **TINY).eval()
    with pytest.raises(ValueError, match='channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='batch'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='too small'):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='Unknown timm backbone'):
        timm.create_model('s3n_resnet18', backbone='not_a_model')


def test_timm_backbone_flags_reach_every_backbone_and_unsupported_ones_fail_clearly():
    """timm's train.py passes --drop-path as `drop_path_rate`: stochastic depth in every backbone of the method
    (CAA's per-scale ones too), recorded so a reload rebuilds it; `features_only` and `global_pool` have no meaning
    for a method and say so instead of failing inside timm."""
    model = timm.create_model('caa_tiny', num_classes=3, drop_path_rate=0.2)
    for _, backbone in model.named_backbones():
        rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == 'DropPath']
        assert rates and max(rates) == pytest.approx(0.2)
    assert model.init_args['backbone_args'] == {'drop_path_rate': 0.2}
    with pytest.raises(ValueError, match='no features_only form'):
        timm.create_model('s3n_tiny', features_only=True)
    with pytest.raises(ValueError, match='global_pool cannot be set'):
        timm.create_model('lfd_tiny', global_pool='avg')


def test_mismatched_and_corrupt_checkpoints_fail_clearly(tmp_path):
    from safetensors.torch import save_file
    source = timm.create_model('s3n_resnet18', num_classes=5, **TINY)
    save_file(source.state_dict(), str(tmp_path / 'model.safetensors'))
    target = timm.create_model('s3n_resnet18', num_classes=5, **TINY)
    load_weights(target, tmp_path / 'model.safetensors')
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(ValueError, match='trained for 5 classes'):
        load_weights(timm.create_model('s3n_resnet18', num_classes=7, **TINY), tmp_path / 'model.safetensors')
    (tmp_path / 'bad.safetensors').write_bytes(b'\x00garbage' * 10)
    with pytest.raises(ValueError, match='corrupt'):
        load_weights(target, tmp_path / 'bad.safetensors')
    torch.save({'model': source, 'step': 3}, tmp_path / 'pickled.pth')  # a whole module: never unpickled
    with pytest.raises(ValueError, match=r'weights_only=True\) refused it') as info:
        load_weights(target, tmp_path / 'pickled.pth')
    assert 'weights_only=False' not in str(info.value)  # torch's advice to run the file's code is not passed on


def test_unpublished_tag_says_how_to_train():
    with pytest.raises(timm_fgvc.models.UnpublishedWeightsError, match='train_fgvc.py --config'):
        timm.create_model('s3n_resnet50.cub200', pretrained=True)
    with pytest.raises(timm_fgvc.models.UnpublishedWeightsError, match='train_fgvc.py --model s3n_tiny --dataset'):
        timm.create_model('s3n_tiny', pretrained=True)  # no dataset tag, so no hub config to point at


def test_a_new_method_without_its_own_attention_gets_the_predicted_class_cam_on_its_planted_part():
    """FGVCModel's default `attention_maps` (for a method that adds none): the predicted class's CAM, in input
    coordinates, peaks where that class's channel fires in each image."""
    model = FGVCModel(num_classes=3, **TINY).eval()
    model.add_head('main', model.backbone_features)
    with torch.no_grad():
        model.heads['main'].weight.zero_()[:, :3] = torch.eye(3)  # class c reads channel c
        model.heads['main'].bias.zero_()
    planted = torch.zeros(2, model.backbone_features, 4, 4)
    planted[0, 2, 0, 3] = 1.0  # image 0: class 2 at the top-right cell
    planted[1, 0, 3, 1] = 1.0  # image 1: class 0 at the bottom row, second cell
    model.forward_features = lambda x: planted
    cam = model.attention_maps(torch.zeros(2, 3, 64, 64))
    assert cam.shape == (2, 1, 64, 64) and float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    peaks = [divmod(int(i), 64) for i in cam.flatten(1).argmax(1)]
    assert [(r // 16, c // 16) for r, c in peaks] == [(0, 3), (3, 1)]


@pytest.mark.parametrize('name, view_backbone, own_heads, view_heads', [
    ('lfd_tiny', 'region_backbone', ['image'], ['region', 'hybrid']),
    ('s3n_tiny', 'resampled_backbone', ['original'], ['discriminative', 'complementary', 'joint'])])
def test_unshared_backbone_reads_only_the_views(name, view_backbone, own_heads, view_heads):
    """LFD / S3N `share_backbone=False` (an ablation outside the papers): the zoomed or resampled views go through
    a backbone of their own, starting as a copy of the image's; the image branch does not read it."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, share_backbone=False).eval()
    views = getattr(model, view_backbone)
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(), views.state_dict().values()))
    assert f'{view_backbone}.' in model.backbone_prefixes  # backbone lr, layer groups, pretrained loading
    x = torch.rand(2, 3, 96, 96)
    before = model.forward_train(x).logits
    with torch.no_grad():
        for p in views.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    after = model.forward_train(x).logits
    assert all(torch.equal(before[k], after[k]) for k in own_heads)
    assert not any(torch.allclose(before[k], after[k], atol=1e-3) for k in view_heads)
    shared = timm.create_model(name, num_classes=5)
    assert getattr(shared, view_backbone) is None and not any(k.startswith(view_backbone) for k in shared.state_dict())


class _Minimal(FGVCModel):
    """The smallest method the README describes: one head on the pooled backbone map, the base's timm surface and
    class activation map. The flags each leave out one thing a new method must do."""

    def __init__(self, head='main', use_add_head=True, set_num_features=True, pool_features=False, **kwargs):
        super().__init__(**kwargs)
        if use_add_head:
            self.add_head(head, self.backbone_features)
        else:
            self.heads[head] = torch.nn.Linear(self.backbone_features, self.num_classes)
        if set_num_features:
            self.num_features = self.head_hidden_size = self.backbone_features
        self.pool_features = pool_features

    def forward_features(self, x):
        features = super().forward_features(x)
        return features.mean((2, 3), keepdim=True).flatten(1) if self.pool_features else features


@pytest.mark.parametrize('kwargs, match', [
    (dict(head='joint'), "main_head is 'main', which names none of its heads \\['joint'\\]"),
    (dict(use_add_head=False), "built heads \\['main'\\] without add_head"),
    (dict(set_num_features=False), 'sets no num_features'),
])
def test_a_method_that_breaks_the_contract_fails_when_built_with_what_to_do(kwargs, match):
    from timm_fgvc.models import build_fgvc_model
    model = build_fgvc_model(_Minimal, 'minimal_tiny', backbone='test_resnet', num_classes=3, drop_rate=0.1)
    assert model.num_features == 96
    # its **kwargs reach FGVCModel: the values given through them are recorded too (the backbone, the drop rate)
    assert model.init_args == dict(head='main', use_add_head=True, set_num_features=True, pool_features=False,
                                   backbone='test_resnet', drop_rate=0.1)

    class EightPeaks(timm_fgvc.models.S3N):  # fixes a base argument: not recorded, so it rebuilds from its record
        def __init__(self, **kwargs):
            super().__init__(max_peaks=8, **kwargs)
    fixed = build_fgvc_model(EightPeaks, 'eight_peaks_tiny', backbone='test_resnet', num_classes=3)
    assert fixed.init_args == {'backbone': 'test_resnet'}
    assert EightPeaks(num_classes=3, **fixed.init_args).max_peaks == 8
    with pytest.raises(ModelBuildError, match=match):
        build_fgvc_model(_Minimal, 'minimal_tiny', backbone='test_resnet', num_classes=3, **kwargs)


def test_the_base_attention_is_a_class_map_or_asks_to_be_overridden():
    """The base gives a class activation map (in [0, 1], not constant); a method whose forward_features is not the
    map its head reads gets an error, not a blank map."""
    from timm_fgvc.models import build_fgvc_model
    torch.manual_seed(0)
    model = build_fgvc_model(_Minimal, 'minimal_tiny', backbone='test_resnet', num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = model.attention_maps(x)
    assert maps.shape == (1, 1, 64, 64) and maps.amax().item() == pytest.approx(1.0, abs=1e-5)
    assert maps.amin().item() < 0.5
    pooled = build_fgvc_model(_Minimal, 'minimal_tiny', backbone='test_resnet', num_classes=3, pool_features=True)
    with pytest.raises(NotImplementedError, match='override attention_maps'):
        pooled.attention_maps(x)


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_the_evaluated_prediction_is_forwards_in_every_stage(name):
    """The engine scores `forward_train(x).logits[main]` at each epoch, `timm-fgvc eval` and users score `forward`:
    in eval mode they must be the same prediction in every training stage, or a run stopped in a stage would record a
    number its weights do not give."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, 96, 96)
    for stage in model.training_stages():
        model.set_training_stage(stage)
        with torch.no_grad():
            output = model.forward_train(x)
            torch.testing.assert_close(output.prediction, model(x), rtol=1e-4, atol=1e-4, msg=stage.name)


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_a_plain_model_x_training_loop_is_warned_of_the_parts_it_leaves_untrained(name):
    """timm's loop, Lightning's or one's own trains `model(x)`: the parts only `forward_train` reaches (declared in
    `trained_by_forward_train_only`) get no gradient, and training that way warns; `parameter_groups` gives every
    parameter an optimizer group at its paper's lr (S3N's widths, SSANet's DSM / OP heads at their own rates)."""
    import warnings
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).train()
    size = model.pretrained_cfg['input_size'][-1]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        model(torch.randn(2, 3, size, size)).float().logsumexp(1).sum().backward()
    untrained = {n for n, p in model.named_parameters() if p.grad is None}
    declared = {n for n, _ in model.named_parameters() if n.startswith(model.trained_by_forward_train_only)}
    assert untrained == declared
    warned = [w for w in seen if 'training through model(x)' in str(w.message)]
    assert bool(warned) == bool(declared)
    assert all(w.filename == __file__ for w in warned)  # the line of the training loop, not a torch frame
    for param_name, param in model.named_parameters():  # a linear probe: only the evaluated head trains
        param.requires_grad_(param_name.startswith(f'heads.{model.main_head}.'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model(torch.randn(2, 3, size, size))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('error')
        model(torch.randn(2, 3, size, size))  # an evaluation pass in training mode is not training
    groups = timm_fgvc.parameter_groups(model, lr=0.1, backbone_lr=0.01)
    assert sorted(id(p) for g in groups for p in g['params']) == sorted(id(p) for p in model.parameters())
    for prefix, rule in model.param_group_rules.items():
        group = next(g for g in groups if g['name'] == f'new:{prefix}')
        assert group['lr'] == pytest.approx(0.1 * rule.get('lr_scale', 1.0))
