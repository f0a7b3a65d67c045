"""What the engine does at each optimizer step: the lr of every parameter group under each schedule, warm-up and a
stage's own rates; gradient accumulation; gradient clipping; --start-stage; bf16 with channels-last for every
method; and the seeded augmentation of the training loader.

Every run is in-process (`train`) on a few tiny synthetic images. A spy on `build_optimizer` keeps the model's
weights as training starts and records each parameter group's lr at every real optimizer step (a step pre-hook on
the optimizer the engine built: an accumulating batch that does not step records nothing). Expected values are
written out here, never taken from `stage_schedule`.
"""
import dataclasses
import math
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torchvision.transforms.functional import normalize, to_tensor

from timm_fgvc.data import loading  # (importing timm_fgvc registers the methods)
from timm_fgvc.data.synthetic import make_synthetic_fgvc
from timm_fgvc.engine import trainer
from timm_fgvc.engine.config import TrainConfig
from timm_fgvc.engine.trainer import train
from timm_fgvc.models.hsm import HSM
from method_variants import TINY_VARIANTS

# a plain timm model (the baseline) without BatchNorm, its dropout rates 0: LayerNorm is per sample, so a batch's
# mean loss is exactly the mean of its halves' losses
PLAIN = dict(model='test_convnext', synthetic_classes=2, synthetic_train_per_class=8, synthetic_test_per_class=1,
             synthetic_image_size=32, batch_size=2, optimizer='sgd', momentum=0., lr=0.1, weight_decay=0.,
             warmup_epochs=0., epochs=1, check_images=False, seed=0)
# HSM (two stages: saliency, finetune) on 8 images, batch 2: 4 steps per stage
STAGED = dict(PLAIN, model='hsm_tiny', synthetic_train_per_class=4, synthetic_image_size=64, stage_epochs=[1.])


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One torch thread: these runs are too small to gain from more, and on a shared machine extra threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BUILD_OPTIMIZER = trainer.build_optimizer


def config(output_dir, base=PLAIN, **overrides) -> TrainConfig:
    return TrainConfig(**dict(base, output_dir=str(output_dir), **overrides))


def install_spy(monkeypatch) -> SimpleNamespace:
    """A spy on the next run's `build_optimizer`: `names` (the param groups), `lrs` (each group's lr at every
    optimizer step), `initial` (the model's parameters when the optimizer was built: the run's starting point),
    `model`, `channels_last` (whether each conv weight is), `dtypes` (output dtypes of the model's Conv2d / Linear
    layers while training)."""
    record = SimpleNamespace(names=None, lrs=[], initial=None, model=None, dtypes=set(), channels_last=None)
    real = BUILD_OPTIMIZER  # the engine's own, also where an earlier spy of the test is installed

    def build_optimizer(model, cfg):
        optimizer = real(model, cfg)
        record.names = [g['name'] for g in optimizer.param_groups]
        record.initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        record.model = model
        record.channels_last = [p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()
                                if p.ndim == 4 and p.shape[-1] > 1]
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: record.lrs.append([g['lr'] for g in opt.param_groups]))
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.register_forward_hook(
                    lambda m, i, out: record.dtypes.add(out.dtype) if m.training else None)
        return optimizer

    monkeypatch.setattr(trainer, 'build_optimizer', build_optimizer)
    return record


@pytest.fixture
def spy(monkeypatch):
    return install_spy(monkeypatch)


def lrs_of(spy, group):
    return [step[spy.names.index(group)] for step in spy.lrs]


def cosine(t, total):
    return 0.5 * (1 + math.cos(math.pi * t / total))


# --- learning-rate schedules ------------------------------------------------------------------------------
def test_cosine_lr_of_every_param_group_at_every_step(tmp_path, spy):
    """16 images, batch 2: 8 steps, each group at its base lr x 0.5 (1 + cos(pi t / 8)): 1 at step 0, 0.5 at step
    4, 0.04 at the last; the new head at --lr, the backbone at --backbone-lr."""
    results = train(config(tmp_path, scheduler='cosine', lr=0.1, backbone_lr=0.02))
    assert spy.names == ['backbone', 'new'] and len(spy.lrs) == 8
    for group, base in (('new', 0.1), ('backbone', 0.02)):
        assert lrs_of(spy, group) == pytest.approx([base * cosine(t, 8) for t in range(8)], rel=1e-9, abs=1e-12)
    new = lrs_of(spy, 'new')
    assert new[0] == pytest.approx(0.1) and new[4] == pytest.approx(0.05) and 0 < new[-1] < 0.005
    # the epoch's record holds the lr its last step trained at
    assert results['history'][-1]['lr'] == pytest.approx(0.1 * cosine(7, 8))
    assert results['history'][-1]['lr_backbone'] == pytest.approx(0.02 * cosine(7, 8))


def test_linear_warmup_ramps_to_the_full_lr(tmp_path, spy):
    """--warmup-epochs 0.5 of 8 steps: 4 warm-up steps at (t + 1) / 5 of the lr, rising by equal steps, then the
    full lr (no other schedule: 'none')."""
    train(config(tmp_path, scheduler='none', warmup_epochs=0.5, lr=0.1, backbone_lr=0.05))
    expected = [(t + 1) / 5 if t < 4 else 1.0 for t in range(8)]
    for group, base in (('new', 0.1), ('backbone', 0.05)):
        assert lrs_of(spy, group) == pytest.approx([base * f for f in expected], rel=1e-9)
    new = lrs_of(spy, 'new')
    assert 0 < new[0] < new[1] < new[2] < new[3] < new[4] == pytest.approx(0.1)


def patch_hsm_stage_lrs(monkeypatch, saliency=None, finetune=None):
    """HSM's two stages with the learning rates given ({'lr': .., 'backbone_lr': ..}); the paper sets none."""
    original = HSM.training_stages

    def training_stages(self):
        first, second = original(self)
        return [dataclasses.replace(first, **(saliency or {})), dataclasses.replace(second, **(finetune or {}))]
    monkeypatch.setattr(HSM, 'training_stages', training_stages)


@pytest.mark.parametrize('scheduler', ['step', 'cosine'])
def test_schedule_and_warmup_restart_at_a_stage_that_sets_its_own_lrs(tmp_path, spy, monkeypatch, scheduler):
    """Two stages of 4 steps. The schedule ('step': x0.5 every 0.5 epoch = 2 steps; 'cosine' over the stage's 4
    steps) and the one-step warm-up (x 1/2) start again at the second stage, which trains at its own lr and
    backbone lr; a group with its own scale of the lr (HSM's saliency score) keeps that scale of the stage's lr."""
    patch_hsm_stage_lrs(monkeypatch, finetune={'lr': 0.05, 'backbone_lr': 0.001})
    results = train(config(tmp_path, STAGED, scheduler=scheduler, step_epochs=0.5, step_gamma=0.5,
                           warmup_epochs=0.25, lr=0.1, backbone_lr=0.02))
    assert [h['stage'] for h in results['history']] == ['saliency', 'finetune']
    assert spy.names == ['backbone', 'new', 'new:saliency.score.'] and len(spy.lrs) == 8
    score_scale = spy.model.param_group_rules['saliency.score.']['lr_scale']

    def schedule(t):  # t: the step within its stage
        value = 0.5 ** (t // 2) if scheduler == 'step' else cosine(t, 4)
        return value * (0.5 if t == 0 else 1.0)  # warm-up: step 0 of a stage at (0 + 1) / (1 + 1)
    bases = {'saliency': {'new': 0.1, 'backbone': 0.02, 'new:saliency.score.': 0.1 * score_scale},
             'finetune': {'new': 0.05, 'backbone': 0.001, 'new:saliency.score.': 0.05 * score_scale}}
    for group in spy.names:
        expected = [bases[stage][group] * schedule(t) for stage in ('saliency', 'finetune') for t in range(4)]
        assert lrs_of(spy, group) == pytest.approx(expected, rel=1e-9), group
    # the ratio of the groups within the second stage is the stage's: lr / backbone lr = 50
    assert all(step[1] / step[0] == pytest.approx(50.) for step in spy.lrs[4:])


# --- gradient accumulation --------------------------------------------------------------------------------
def test_step_schedule_drops_at_whole_multiples_of_its_interval_in_steps():
    """--step-epochs 0.14 at 50 steps per epoch is a drop every 7 steps (0.14 * 50 is 7.000000000000001 in floating
    point: dividing by it dropped the lr a step late, at 8, 15, ...)."""
    cfg = TrainConfig(scheduler='step', step_epochs=0.14, step_gamma=0.1, warmup_epochs=0, epochs=1)
    factor = trainer.stage_schedule([trainer.TrainingStage('main')], cfg, steps_per_epoch=50)[2]
    assert [factor(t, 'new') for t in (0, 6, 7, 13, 14)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_two_accumulated_batches_of_4_make_the_update_of_one_batch_of_8(tmp_path, monkeypatch):
    """16 images, 1 epoch, cosine: batches of 8 give 2 optimizer steps; batches of 4 accumulated in pairs also give 2
    (the epoch and the schedule count optimizer steps, not batches), at the same lrs, to the same weights."""
    runs = {}
    for name, batch, accum in (('whole', 8, 1), ('accumulated', 4, 2)):
        spy = install_spy(monkeypatch)
        results = train(config(tmp_path / name, batch_size=batch, grad_accum_steps=accum, scheduler='cosine',
                               lr=0.2))
        runs[name] = (spy, results, load_file(str(tmp_path / name / 'model.safetensors')))
    (spy8, res8, w8), (spy4, res4, w4) = runs['whole'], runs['accumulated']
    assert len(spy8.lrs) == 2 and len(spy4.lrs) == 2
    assert [lr for lr, _ in spy4.lrs] == pytest.approx([0.2 * cosine(0, 2), 0.2 * cosine(1, 2)])  # 0.2, 0.1
    assert [(h['epoch'], h['step']) for h in res4['history']] == [(h['epoch'], h['step']) for h in res8['history']] \
        == [(1, 2)]
    assert res4['effective_batch_size'] == 8
    assert max((w8[k] - spy8.initial[k]).abs().max().item() for k in w8) > 1e-3  # the weights did move
    for key in w8:
        torch.testing.assert_close(w4[key], w8[key], rtol=0, atol=1e-6, msg=key)


# --- gradient clipping ------------------------------------------------------------------------------------
def test_clip_grad_scales_the_whole_gradient_to_the_clip_norm(tmp_path, monkeypatch):
    """One plain SGD step (no momentum, no decay, no warm-up): without clipping it moves the weights by lr x g;
    with --clip-grad c far below |g| by lr x g x c / |g|, |g| the global norm over all parameters: every
    parameter scaled alike, the whole move lr x c long."""
    lr, clip = 0.1, 1e-3
    moves = {}
    for name, clip_grad in (('free', None), ('clipped', clip)):
        spy = install_spy(monkeypatch)
        train(config(tmp_path / name, max_steps=1, lr=lr, clip_grad=clip_grad))
        final = load_file(str(tmp_path / name / 'model.safetensors'))
        moves[name] = {k: final[k].double() - spy.initial[k].double() for k in spy.initial}
    global_norm = lambda move: math.sqrt(sum((v ** 2).sum().item() for v in move.values()))  # noqa: E731
    grad_norm = global_norm(moves['free']) / lr
    assert grad_norm > 100 * clip  # the clip binds
    assert global_norm(moves['clipped']) == pytest.approx(lr * clip, rel=1e-4)
    # one factor for every parameter (not each clipped on its own), checked where the move is well above the
    # rounding of float32 weights
    checked = 0
    for key, move in moves['free'].items():
        clipped = moves['clipped'][key]
        if clipped.norm() > 1e-5:  # (its elements' moves are ~1e-7 on weights of ~1, float32 steps of 6e-8)
            checked += 1
            assert (clipped - move * (clip / grad_norm)).norm() < 2e-2 * clipped.norm(), key
    assert checked >= 3


# --- --start-stage ----------------------------------------------------------------------------------------
def test_start_stage_runs_only_the_later_stage_from_the_given_weights_at_its_lr(tmp_path, spy, monkeypatch):
    """HSM from stage 1 (finetune) with --initial-checkpoint: the history is finetune's alone (its 4 steps, none of
    saliency's), training starts from the file's weights (not the run's seed, not a re-initialised head: the
    classifier is re-initialised only when finetune follows saliency in the run) and at the finetune stage's lrs."""
    patch_hsm_stage_lrs(monkeypatch, saliency={'lr': 0.3, 'backbone_lr': 0.3},
                        finetune={'lr': 0.05, 'backbone_lr': 0.004})
    torch.manual_seed(123)
    given = timm.create_model('hsm_tiny', num_classes=2)
    with torch.no_grad():
        for head in given.heads.values():
            head.weight.fill_(0.25)  # a head no initialisation would draw
    weights = tmp_path / 'given.safetensors'
    save_file({k: v.contiguous().clone() for k, v in given.state_dict().items()}, str(weights))
    results = train(config(tmp_path / 'run', STAGED, start_stage=1, initial_checkpoint=str(weights),
                           scheduler='none', lr=0.1, backbone_lr=0.02))
    assert [h['stage'] for h in results['history']] == ['finetune'] and results['history'][-1]['step'] == 4
    assert len(spy.lrs) == 4
    given_state = given.state_dict()
    for key, value in spy.initial.items():
        assert torch.equal(value, given_state[key]), key
    assert lrs_of(spy, 'new') == pytest.approx([0.05] * 4) and lrs_of(spy, 'backbone') == pytest.approx([0.004] * 4)
    final = load_file(str(tmp_path / 'run' / 'model.safetensors'))
    for name, head in given.heads.items():  # 4 small steps from 0.25, not from a Xavier draw
        moved = (final[f'heads.{name}.weight'] - head.weight).abs().max().item()
        assert 0 < moved < 0.05, (name, moved)


# --- bf16 and channels-last through the engine -----------------------------------------------------------
def independent_eval(run_dir, results):
    """The run's saved weights in a fresh model (eval, channels-last, bf16 autocast as the run evaluated) on its
    synthetic test split made again here, in one batch: (top-1 %, mean loss). The loss is that of the stage the run
    ended in: its loss terms, each times the model's loss weight (all terms: `loss`, for a stage that names none)."""
    cfg = results['config']
    model = timm.create_model(results['model'], num_classes=results['num_classes'], **results['model_args'])
    model.load_state_dict(load_file(str(run_dir / 'model.safetensors')))
    model = model.eval().to(memory_format=torch.channels_last)
    test = make_synthetic_fgvc(num_classes=cfg['synthetic_classes'], train_per_class=cfg['synthetic_train_per_class'],
                               test_per_class=cfg['synthetic_test_per_class'], image_size=cfg['synthetic_image_size'],
                               seed=cfg['seed'])['test']
    mean, std = results['data_config']['mean'], results['data_config']['std']
    images = torch.stack([normalize(to_tensor(image.convert('RGB')), mean, std) for image in test['image']])
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.tensor(test['label'])
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        top1 = 100.0 * (model(images).argmax(-1) == labels).float().mean().item()
        losses = model.loss(model.forward_train(images, labels), labels)
    stage = next(s for s in model.training_stages() if s.name == results['history'][-1]['stage'])
    if stage.loss_terms is None:
        return top1, losses['loss'].float().item()
    return top1, sum(model.loss_weights.get(k[len('loss_'):], 1.) * losses[k].float().item()
                     for k in stage.loss_terms)


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_bf16_channels_last_training_of_every_method(tmp_path, spy, name):
    """3 steps of each method's tiny variant in bf16 autocast with channels-last weights and inputs: the layers
    compute in bf16, the losses are finite, the weights move, and the final evaluation is what the saved weights
    score here (bf16, one batch of the 8 test images)."""
    torch.manual_seed(0)
    results = train(config(tmp_path, dict(PLAIN, model=name, synthetic_train_per_class=6, synthetic_test_per_class=4,
                                          synthetic_image_size=64, batch_size=4, eval_batch_size=8, lr=0.01,
                                          stage_epochs=[1.]),
                           mixed_precision='bf16', channels_last=True, max_steps=3))
    assert len(spy.lrs) == 3
    assert torch.bfloat16 in spy.dtypes
    assert spy.channels_last and all(spy.channels_last)
    final = results['final']
    losses = [v for k, v in final.items() if k.startswith('train_loss')] + [final['eval_loss']]
    assert all(math.isfinite(v) for v in losses), final
    saved = load_file(str(tmp_path / 'model.safetensors'))
    assert any(not torch.equal(saved[k], v) for k, v in spy.initial.items())
    top1, loss = independent_eval(tmp_path, results)
    assert final['eval_samples'] == 8
    assert final['eval_top1'] == pytest.approx(top1, abs=1e-6)
    assert final['eval_loss'] == pytest.approx(loss, rel=1e-4)


# --- seeded augmentation ---------------------------------------------------------------------------------
@pytest.fixture
def transformed(monkeypatch):
    """Every (epoch, index, tensor) the training transform (`SeededTransform`) makes in this process."""
    seen = []
    real = loading.SeededTransform.__call__

    def call(self, image, index):
        out = real(self, image, index)
        seen.append((self.epoch, int(index), out.clone()))
        return out
    monkeypatch.setattr(loading.SeededTransform, '__call__', call)
    return seen


def per_epoch(seen):
    images = {}
    for epoch, index, tensor in seen:
        images.setdefault(epoch, {})[index] = tensor
    return images


@pytest.mark.parametrize('augment', [True, False])
def test_augmentation_draws_anew_each_epoch_and_only_with_augment(tmp_path, transformed, augment):
    """Two epochs of 8 images (resized to 37 px, then cropped to 32): with --augment a sample's crop and flip differ
    from epoch 0 to 1; without it every sample is the same tensor in both epochs."""
    train(config(tmp_path, synthetic_train_per_class=4, batch_size=4, epochs=2, crop_pct=0.875, augment=augment))
    images = per_epoch(transformed)
    assert sorted(images) == [0, 1] and sorted(images[0]) == sorted(images[1]) == list(range(8))
    same = [torch.equal(images[0][i], images[1][i]) for i in range(8)]
    if augment:
        assert sum(same) <= 2, same
    else:
        assert all(same)


def test_the_training_batches_are_the_same_with_0_or_2_workers(tmp_path, monkeypatch):
    """Augmented training on 8 images for 2 epochs: the batches the model gets (pixels and labels, in order) and
    the final weights are identical with the images loaded in the main process or by 2 worker processes."""
    real = trainer.forward_batch
    runs = {}
    for workers in (0, 2):
        batches = []

        def forward_batch(accelerator, step_module, batch, cfg, batches=batches):
            if step_module.training:
                batches.append((batch['pixel_values'].clone(), batch['labels'].clone()))
            return real(accelerator, step_module, batch, cfg)
        monkeypatch.setattr(trainer, 'forward_batch', forward_batch)
        train(config(tmp_path / str(workers), synthetic_train_per_class=4, batch_size=4, epochs=2, crop_pct=0.875,
                     num_workers=workers))
        runs[workers] = (batches, load_file(str(tmp_path / str(workers) / 'model.safetensors')))
    (batches0, weights0), (batches2, weights2) = runs[0], runs[2]
    assert len(batches0) == len(batches2) == 4
    for (x0, y0), (x2, y2) in zip(batches0, batches2):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(batches0[0][0], batches0[2][0])  # epoch 1's first batch is not epoch 0's
    assert all(torch.equal(weights0[k], weights2[k]) for k in weights0)
