"""The training engine: the CLI learns, resumes exactly, runs two processes, reads data and configs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.functional import normalize, to_tensor

import timm_fgvc  # noqa: F401  (registers the methods)
from timm_fgvc.data.synthetic import make_synthetic_fgvc

from timm_fgvc.data.loading import few_shot_indices, load_fgvc_dataset
from timm_fgvc.engine.config import TrainConfig, parse_args
from timm_fgvc.engine.trainer import apply_stage, resolve_stage_epochs, stage_schedule, train
from timm_fgvc.models import TrainingStage
from method_variants import TINY_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SMALL = ['--synthetic-classes', '4', '--synthetic-train-per-class', '16', '--synthetic-test-per-class', '3',
         '--synthetic-image-size', '64', '--batch-size', '8', '--model', 's3n_tiny',
         '--optimizer', 'sgd', '--lr', '0.02', '--weight-decay', '1e-4', '--warmup-epochs', '0']


def small_config(output_dir, **overrides) -> TrainConfig:
    cfg = parse_args(SMALL + ['--output-dir', str(output_dir)])
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def run_cli(args, launcher=(sys.executable,), timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    proc = subprocess.run([*launcher, str(ROOT / 'train_fgvc.py'), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def saved_model_and_test_split(run_dir: Path):
    """The run's saved `model.safetensors` in a fresh timm model (eval mode), and its synthetic test split made again
    from the run's config with the run's mean/std, as one batch: (model, images, labels), without the engine."""
    results = json.loads((run_dir / 'results.json').read_text())
    cfg = results['config']
    model = timm.create_model(results['model'], num_classes=results['num_classes'], **results['model_args'])
    model.load_state_dict(load_file(str(run_dir / 'model.safetensors')))
    test = make_synthetic_fgvc(num_classes=cfg['synthetic_classes'], train_per_class=cfg['synthetic_train_per_class'],
                               test_per_class=cfg['synthetic_test_per_class'], image_size=cfg['synthetic_image_size'],
                               seed=cfg['seed'])['test']
    mean, std = results['data_config']['mean'], results['data_config']['std']
    images = torch.stack([normalize(to_tensor(image.convert('RGB')), mean, std) for image in test['image']])
    return model.eval(), images, torch.tensor(test['label'])


def independent_top1(run_dir: Path) -> float:
    """Top-1 of the run's saved weights on its test split, computed here in one batch."""
    model, images, labels = saved_model_and_test_split(run_dir)
    with torch.no_grad():
        return 100.0 * (model(images).argmax(-1) == labels).float().mean().item()


def independent_loss(run_dir: Path) -> float:
    """The run's eval loss recomputed in one batch of its whole test split (the mean over the images)."""
    model, images, labels = saved_model_and_test_split(run_dir)
    with torch.no_grad():
        return model.loss(model.forward_train(images, labels), labels)['loss'].item()


def test_cli_training_lowers_the_loss(tmp_path):
    proc = run_cli(SMALL + ['--epochs', '5', '--optimizer', 'adamw', '--lr', '3e-3', '--weight-decay', '0.05',
                            '--output-dir', str(tmp_path)])
    results = json.loads((tmp_path / 'results.json').read_text())
    losses = [h['train_loss'] for h in results['history']]
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0], losses  # measured 5.91 -> 4.99
    # each epoch records the lr its last step trained at (64 images, batch 8: steps 8, 16, ...), not the next one's
    cfg = parse_args(SMALL + ['--epochs', '5', '--optimizer', 'adamw', '--lr', '3e-3'])
    factor = stage_schedule([TrainingStage('main')], cfg, steps_per_epoch=8)[2]
    assert [h['lr'] for h in results['history']] == pytest.approx([3e-3 * factor(8 * e - 1, 'new') for e in
                                                                   range(1, 6)], rel=1e-6)
    assert results['history'][-1]['lr'] > 0
    assert {'eval_top1', 'eval_top5', 'eval_top1_joint', 'eval_top1_original'} <= set(results['final'])
    assert results['final']['eval_samples'] == 12 and len(results['label_names']) == 4
    state = load_file(str(tmp_path / 'model.safetensors'))
    assert state['heads.joint.weight'].shape[0] == 4
    # the reported accuracy is the saved weights' accuracy, recomputed here without the engine
    assert independent_top1(tmp_path) == pytest.approx(results['final']['eval_top1'], abs=1e-6)
    # quiet: one result line per epoch, values with 2 decimals; Accelerate's INFO lines only with --verbose
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith('epoch ')]
    assert [line.split()[1] for line in epoch_lines] == ['1/5', '2/5', '3/5', '4/5', '5/5']
    top1 = float(re.search(r'eval top-1 (\d+\.\d\d) ', epoch_lines[-1]).group(1))
    assert top1 == pytest.approx(round(results['final']['eval_top1'], 2))
    assert 'random states' not in proc.stdout + proc.stderr and 'INFO' not in proc.stderr
    # curves.png: a valid PNG next to results.json
    with Image.open(tmp_path / 'curves.png') as image:
        image.verify()
    with Image.open(tmp_path / 'curves.png') as image:
        assert image.format == 'PNG' and image.width > 600 and image.height > 200


def test_resume_continues_at_the_same_step_with_the_same_optimizer_state(tmp_path):
    # uninterrupted: 6 steps, a checkpoint every 3
    full = train(small_config(tmp_path / 'full', epochs=2, max_steps=6, checkpoint_every=3, keep_checkpoints=5))
    # interrupted after 3 steps, then resumed to 6
    cut = train(small_config(tmp_path / 'cut', epochs=2, max_steps=3, checkpoint_every=3, keep_checkpoints=5))
    resumed = train(small_config(tmp_path / 'cut', epochs=2, max_steps=6, checkpoint_every=3, keep_checkpoints=5,
                                 resume='latest'))
    # each --max-steps stop fell inside epoch 1: the interrupted run's record of it is partial, and the resumed run
    # replaces it with the record of steps 1-6, losses of all six batches: the uninterrupted run's history
    assert [h['step'] for h in cut['history']] == [3] and cut['history'][0]['partial_epoch']
    assert resumed['resumed_from'] and [h['step'] for h in resumed['history']] == [6]
    assert resumed['history'] == full['history']
    for step in ('00000003', '00000006'):  # the same optimizer state mid-way and at the end
        opt_full = torch.load(tmp_path / f'full/checkpoints/step_{step}/optimizer.bin', weights_only=True)
        opt_cut = torch.load(tmp_path / f'cut/checkpoints/step_{step}/optimizer.bin', weights_only=True)
        assert opt_full['state'].keys() == opt_cut['state'].keys() and opt_full['state']
        for key, buffers in opt_full['state'].items():
            assert torch.equal(buffers['momentum_buffer'], opt_cut['state'][key]['momentum_buffer'])
    a = load_file(str(tmp_path / 'full/model.safetensors'))
    b = load_file(str(tmp_path / 'cut/model.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)  # nothing lost: the same weights as the uninterrupted run
    with pytest.raises(FileNotFoundError, match='No checkpoint'):
        train(small_config(tmp_path / 'empty', resume='latest'))


def test_two_processes_agree_on_the_evaluated_accuracy(tmp_path):
    launcher = (sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no')
    run_cli(SMALL + ['--max-steps', '2', '--output-dir', str(tmp_path)], launcher=launcher)
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['num_processes'] == 2 and results['effective_batch_size'] == 16
    checksums = results['per_process_weights_checksum']
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert results['final']['eval_samples'] == 12  # every eval image counted once across the two shards
    # and the numbers are what one process measures for the saved weights: top-1, and the loss over the 12 images
    # (the second process's batch is 4 images padded with 4 repeats: they count only through that batch's mean,
    # 2e-5 here; counted as a batch of their own, as before, they moved it 4e-4)
    assert independent_top1(tmp_path) == pytest.approx(results['final']['eval_top1'], abs=1e-6)
    assert independent_loss(tmp_path) == pytest.approx(results['final']['eval_loss'], rel=1e-4)


def test_two_processes_train_a_set_smaller_than_a_batch_per_process_and_agree_through_a_head_reinit(tmp_path):
    """12 images, batch 8, 2 processes: a full round would need 16, so the round is padded (dropping it left each
    process no batch, and the run evaluated epoch 0 forever). HSM re-initialises its head at step 2 on every
    process alike, although each process draws its own random numbers: the weights agree at the end."""
    launcher = (sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no')
    run_cli(SMALL + ['--model', 'hsm_tiny', '--shots', '3', '--stage-epochs', '1', '1', '--output-dir', str(tmp_path)],
            launcher=launcher, timeout=240)
    results = json.loads((tmp_path / 'results.json').read_text())
    assert [(r['epoch'], r['stage']) for r in results['history']] == [(1, 'saliency'), (2, 'finetune')]
    assert results['effective_batch_size'] == 12  # the whole set per step, not 2 x 8
    checksums = results['per_process_weights_checksum']
    assert len(checksums) == 2 and checksums[0] == checksums[1]


def make_image_folder(root: Path, splits=('train', 'test'), classes=('a', 'b', 'c'), per_class=4):
    from PIL import Image
    for split in splits:
        for c_index, cls in enumerate(classes):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new('RGB', (40, 32), (40 * c_index, 10 * i, 100)).save(folder / f'{i}.png')


def test_image_folder_with_and_without_splits(tmp_path):
    make_image_folder(tmp_path / 'split')
    data = load_fgvc_dataset(str(tmp_path / 'split'))
    assert data.label_names == ['a', 'b', 'c'] and len(data.train) == 12 and len(data.eval) == 12
    make_image_folder(tmp_path / 'flat', splits=('',), per_class=5)
    data = load_fgvc_dataset(str(tmp_path / 'flat'), eval_fraction=0.2)
    assert len(data.train) == 12 and len(data.eval) == 3
    assert sorted(data.eval['label']) == [0, 1, 2]  # stratified hold-out
    few = load_fgvc_dataset(str(tmp_path / 'split'), shots=2, seed=1)
    assert sorted(few.train['label']) == [0, 0, 1, 1, 2, 2]


def test_bad_data_fails_with_what_to_do(tmp_path):
    make_image_folder(tmp_path / 'split')
    with pytest.raises(ValueError, match=r"Unknown label column 'species'.*columns found: image"):
        load_fgvc_dataset(str(tmp_path / 'split'), label_column='species')
    with pytest.raises(ValueError, match=r"no split 'validation'.*splits found"):
        load_fgvc_dataset(str(tmp_path / 'split'), eval_split='validation')
    for missing in (str(tmp_path / 'birds'), './birds', 'birds/'):  # a path is never a Hub id: not asked of the Hub
        with pytest.raises(FileNotFoundError, match='No local folder or file'):
            load_fgvc_dataset(missing)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No images found'):
        load_fgvc_dataset(str(tmp_path / 'empty'))
    with pytest.raises(ValueError, match='fewer than --shots'):
        few_shot_indices([0, 0, 1], shots=2, seed=0)
    with pytest.raises(ValueError, match=r"--eval-split 'train' is the training split"):
        train(small_config(tmp_path / 'self_eval', eval_split='train'))
    assert not (tmp_path / 'self_eval').exists()  # refused before the run wrote anything
    with pytest.raises(ValueError, match='--skip-bad-images leaves out.*--check-images false turns that check off'):
        train(small_config(tmp_path / 'unchecked', check_images=False, skip_bad_images=True))
    with pytest.raises(ValueError, match="--model-args sets 'num_classes'.*dataset's classes"):
        train(small_config(tmp_path / 'classes', model_args={'num_classes': 5}))


def test_yaml_config_with_cli_overrides():
    cfg = parse_args(['--config', str(ROOT / 'hub_configs/s3n_resnet50.cub200.yaml'), '--epochs', '3',
                      '--mixed-precision', 'no', '--log-with', 'tensorboard'])
    assert cfg.model == 's3n_resnet50' and cfg.img_size == 448 and cfg.batch_size == 16
    assert cfg.lr == 0.01 and cfg.backbone_lr == 0.001 and cfg.weight_decay == 1e-4
    assert cfg.epochs == 3 and cfg.mixed_precision == 'no' and cfg.log_with == ['tensorboard']


def test_stages_switch_trainable_parts_and_learning_rates():
    stages = [TrainingStage('saliency', trainable=('heads.',), epochs=2, lr=0.1),
              TrainingStage('finetune', epochs=1, lr=0.01, backbone_lr=0.001)]
    cfg = TrainConfig(lr=0.1, backbone_lr=0.01, scheduler='none', warmup_epochs=0)
    bounds, stage_of, factor = stage_schedule(stages, cfg, steps_per_epoch=5)
    assert bounds == [(0, 10), (10, 15)] and stage_of(9) == 0 and stage_of(10) == 1
    assert factor(3, 'new') == 1.0 and factor(12, 'new') == pytest.approx(0.1)
    assert factor(12, 'backbone') == pytest.approx(0.1)
    import timm
    model = timm.create_model('s3n_resnet18', num_classes=3, backbone='test_resnet')
    apply_stage(model, stages[0])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith('heads.') for n in trainable)
    apply_stage(model, stages[1])
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_every_stage_gives_each_parameter_it_trains_a_gradient(name):
    """DDP looks for unused parameters only where a stage freezes some (`any_stage_freezes_parameters`): a trainable
    parameter left without a gradient in any stage would hang or fail a multi-process run of a one-stage model."""
    from timm_fgvc.engine.trainer import TrainStep, any_stage_freezes_parameters
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    stages = model.training_stages() if hasattr(model, 'training_stages') else [TrainingStage('main')]
    size = model.pretrained_cfg['input_size'][-1]
    step, frozen_somewhere = TrainStep(model).train(), False
    for stage in stages:
        apply_stage(model, stage)
        frozen_somewhere |= not all(p.requires_grad for p in model.parameters())
        step.loss_terms = stage.loss_terms
        model.zero_grad(set_to_none=True)
        step(torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3]))['losses']['loss'].backward()
        idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not idle, (stage.name, idle[:5])
    assert any_stage_freezes_parameters(model, stages) == frozen_somewhere


def test_staged_method_trains_one_scale_after_another_through_the_engine(tmp_path):
    """CAA with two scales, one epoch each: the second stage trains scale 1's parts and leaves scale 0's alone,
    weights and BatchNorm statistics."""
    cfg = small_config(tmp_path, model='caa_tiny', model_args={'num_scales': 2}, stage_epochs=[1.0], epochs=1,
                       keep_checkpoints=5)
    results = train(cfg)
    assert [h['stage'] for h in results['history']] == ['scale_0', 'scale_1']
    checkpoints = sorted((tmp_path / 'checkpoints').glob('step_*'))
    after_first = {k[len('model.'):]: v for k, v in load_file(str(checkpoints[0] / 'model.safetensors')).items()}
    final = load_file(str(tmp_path / 'model.safetensors'))
    for key in ('heads.object_0.weight', 'heads.local_0.weight', 'backbone.conv1.0.weight',
                'backbone.conv1.1.running_mean'):
        assert torch.equal(after_first[key], final[key]), key
    for key in ('heads.object_1.weight', 'zoom_backbones.0.conv1.0.weight', 'zoom_backbones.0.conv1.1.running_mean'):
        assert not torch.equal(after_first[key], final[key]), key
    assert {'eval_top1_object_0', 'eval_top1_local_1', 'eval_top1_combined'} <= set(results['final'])


def test_a_checkpoint_from_before_per_term_counts_resumes_to_the_epochs_true_mean():
    """An older checkpoint summed 5 batches of loss 2.0 and counted batches only: after 5 more batches of 2.0 the
    epoch's mean is 2.0 (divided by 10 batches, not by the 5 after the resume)."""
    from timm_fgvc.engine.trainer import TrainState
    state = TrainState()
    state.load_state_dict({'step': 5, 'history': '[]', 'epoch_losses': '{"loss": 10.0}', 'epoch_batches': 5})
    for _ in range(5):  # as the training loop adds each batch
        state.epoch_losses['loss'] += 2.0
        state.epoch_term_batches['loss'] = state.epoch_term_batches.get('loss', 0) + 1
        state.epoch_batches += 1
    assert state.epoch_losses['loss'] / state.epoch_term_batches['loss'] == pytest.approx(2.0)


def test_a_loss_term_of_one_stage_is_averaged_over_that_stages_batches(tmp_path):
    """Two CAA scales of half an epoch each: scale 1's terms exist in the second half of the epoch only. Their record
    is their mean over those batches: a fresh 4-class head near ln 4 = 1.39, not diluted to half by the first
    stage's batches; the record's stage is the one the epoch ended in."""
    cfg = small_config(tmp_path, model='caa_tiny', model_args={'num_scales': 2}, stage_epochs=[0.5, 0.5], epochs=1,
                       lr=1e-4)
    record = train(cfg)['history'][-1]
    assert record['stage'] == 'scale_1'
    assert 1.1 < record['train_loss_object_1'] < 1.7 and 1.1 < record['train_loss_object_0'] < 1.7, record


def test_stage_epochs_override_the_papers_stage_lengths():
    stages = [TrainingStage('scale1', epochs=40), TrainingStage('scale2', epochs=40), TrainingStage('scale3')]
    assert resolve_stage_epochs(stages, TrainConfig(epochs=7)) == [40, 40, 7]
    assert resolve_stage_epochs(stages, TrainConfig(stage_epochs=[2])) == [2, 2, 2]
    cfg = TrainConfig(stage_epochs=[1, 0.5, 2], scheduler='none', warmup_epochs=0)
    bounds, _, _ = stage_schedule(stages, cfg, steps_per_epoch=10)
    assert bounds == [(0, 10), (10, 15), (15, 35)]
    with pytest.raises(ValueError, match='one value per stage'):
        resolve_stage_epochs(stages, TrainConfig(stage_epochs=[1, 2]))
    with pytest.raises(ValueError, match='positive'):
        resolve_stage_epochs(stages, TrainConfig(stage_epochs=[0]))
    assert parse_args(['--stage-epochs', '1', '0.5', '2']).stage_epochs == [1.0, 0.5, 2.0]


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_every_method_loss_takes_its_heads_label_smoothing_and_loss_weights(name):
    """A method with its own `loss` (CAA, SSANet) smooths and weights its terms as the base loss does."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).train()
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([0, 3])
    out = model.forward_train(x, y)
    plain = model.loss(out, y)
    assert all(f'loss_{head}' in plain for head in model.heads)  # every head is trained
    model.label_smoothing.update({head: 0.3 for head in model.heads})
    smoothed = model.loss(out, y)
    for head in model.heads:
        assert abs(smoothed[f'loss_{head}'].item() - plain[f'loss_{head}'].item()) > 1e-4, head
        logits = out.logits.get(head)
        is_cross_entropy = logits is not None and logits.ndim == 2 and torch.allclose(
            plain[f'loss_{head}'], F.cross_entropy(logits.float(), y), rtol=1e-5)  # not CAA's local loss (Eq. 2)
        if is_cross_entropy:
            expected = F.cross_entropy(logits.float(), y, label_smoothing=0.3)
            assert smoothed[f'loss_{head}'].item() == pytest.approx(expected.item(), rel=1e-5), head
    dropped = next(iter(model.heads))
    model.loss_weights[dropped] = 0.
    weighted = model.loss(out, y)['loss']
    assert weighted.item() == pytest.approx((smoothed['loss'] - smoothed[f'loss_{dropped}']).item(), rel=1e-5)


def test_a_stage_sums_its_loss_terms_with_the_model_loss_weights():
    from timm_fgvc.engine.trainer import TrainStep
    torch.manual_seed(0)
    model = timm.create_model('caa_tiny', num_classes=4)
    step = TrainStep(model).train()
    step.loss_terms = model.training_stages()[0].loss_terms  # scale 0: local_0 and object_0
    model.loss_weights['local_0'] = 0.
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([0, 3])
    losses = step(x, y)['losses']
    assert losses['loss_local_0'].item() > 0.1
    assert losses['loss'].item() == pytest.approx(losses['loss_object_0'].item(), rel=1e-5)


def test_a_misspelt_stage_fails_before_training_with_what_the_model_has(tmp_path, monkeypatch):
    """A stage's trainable prefix that names no parameter (its part would stay frozen, silently) fails up front;
    a loss term the model's loss does not return fails at the first step naming the terms it does return."""
    from timm_fgvc.engine.trainer import TrainStep
    from timm_fgvc.models import CAA
    stages = CAA.training_stages
    monkeypatch.setattr(CAA, 'training_stages', lambda self: [
        TrainingStage('scale_0', trainable=('backbone.', 'heads.objet_0.'), loss_terms=('loss_object_0',))])
    args = ['--model', 'caa_tiny', '--max-steps', '1', '--output-dir', str(tmp_path / 'run')]
    with pytest.raises(ValueError, match=r"trains \['heads.objet_0.'\], which name no parameter.*'heads.'"):
        train(parse_args(args))
    assert not (tmp_path / 'run').exists()  # found before the output folder or the data were touched
    monkeypatch.setattr(CAA, 'training_stages', stages)
    step = TrainStep(timm.create_model('caa_tiny', num_classes=4)).train()
    step.loss_terms = ('object_0',)
    with pytest.raises(ValueError, match=r"loss terms \['object_0'\].*'loss_object_0'"):
        step(torch.randn(2, 3, 96, 96), torch.tensor([0, 3]))


def test_label_smoothing_reaches_a_plain_model_and_the_method_heads_without_their_own():
    """`--label-smoothing`: a plain model's cross-entropy, and every method head its recipe leaves unsmoothed."""
    import torch.nn.functional as F
    from timm_fgvc.engine.trainer import TrainStep, default_label_smoothing
    torch.manual_seed(0)
    plain = timm.create_model('test_resnet', num_classes=4)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    smooth = TrainStep(plain, label_smoothing=0.3)(x, y)['losses']['loss']
    assert smooth.item() == pytest.approx(F.cross_entropy(plain(x), y, label_smoothing=0.3).item(), rel=1e-5)
    assert abs(smooth.item() - F.cross_entropy(plain(x), y).item()) > 1e-3
    s3n = timm.create_model('s3n_tiny', num_classes=4, recipe='authors')  # smooths O and C itself
    own = dict(s3n.label_smoothing)
    default_label_smoothing(s3n, 0.1)
    assert s3n.label_smoothing == {'original': own['original'], 'complementary': own['complementary'],
                                   'discriminative': 0.1, 'joint': 0.1}


def test_a_staged_method_says_its_stage_epochs_and_that_epochs_does_not_set_them(tmp_path, capsys):
    """CAA trains each scale for its paper's 40 epochs: `--epochs` does not shorten that, and the run says so (a
    smoke test with --epochs 1 would otherwise run for 120 epochs without a word); --stage-epochs sets them."""
    train(small_config(tmp_path / 'paper', model='caa_tiny', epochs=1, max_steps=1))
    assert "Stages: scale_0 40, scale_1 40, scale_2 40 epochs (the paper's; --epochs 1 does not apply" in \
        capsys.readouterr().out
    train(small_config(tmp_path / 'set', model='caa_tiny', stage_epochs=[1.0], max_steps=1))
    printed = capsys.readouterr().out
    assert 'Stages: scale_0 1, scale_1 1, scale_2 1 epochs\n' in printed


def test_a_user_error_is_one_line_with_exit_code_2_and_verbose_keeps_the_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    args = [sys.executable, str(ROOT / 'train_fgvc.py'), '--dataset', str(tmp_path / 'no_such_folder'),
            '--output-dir', str(tmp_path / 'run')]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('train_fgvc.py: error: No local folder or file')
    proc = subprocess.run(args + ['--verbose', '--overwrite'], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and 'Traceback' in proc.stderr and 'FileNotFoundError' in proc.stderr


def test_a_user_warning_shows_on_the_first_process_of_a_machine_only(monkeypatch):
    import warnings
    from timm_fgvc.engine.trainer import user_warnings_on_one_process_per_machine

    def warnings_seen(local_rank: str) -> list:
        monkeypatch.setenv('LOCAL_RANK', local_rank)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter('always')
            with user_warnings_on_one_process_per_machine():
                warnings.warn('a 1 x 1 feature map', UserWarning)  # the same on every process
                warnings.warn('process 1 random state not restored', RuntimeWarning)  # the engine's, per process
        return [(w.category, str(w.message)) for w in seen]

    assert [c for c, _ in warnings_seen('0')] == [UserWarning, RuntimeWarning]
    assert [c for c, _ in warnings_seen('1')] == [RuntimeWarning]


def test_top5_counts_a_hit_up_to_the_fifth_ranked_class_and_per_region_logits_over_their_mask():
    """With 10 classes, targets ranked 1st, 3rd, 5th and 6th give top-1 1/4 and top-5 3/4; `[B, K, C]` logits (a
    region per slot) count the share of the masked slots that have the target."""
    from timm_fgvc.engine.trainer import _accuracy_counts
    ranked = torch.arange(10, 0, -1).float()  # class c ranked c + 1
    logits, target = ranked.expand(4, 10), torch.tensor([0, 2, 4, 5])
    assert _accuracy_counts(logits, target, 1).tolist() == [True, False, False, False]
    assert _accuracy_counts(logits, target, 5).tolist() == [True, True, True, False]
    per_slot = torch.stack([ranked, ranked.roll(-1), ranked.roll(3)])[None]  # target 2 ranked 3rd, 4th, 10th
    mask = torch.tensor([[True, False, True]])
    assert _accuracy_counts(per_slot, torch.tensor([2]), 5, mask).tolist() == pytest.approx([0.5])
    assert _accuracy_counts(per_slot, torch.tensor([2]), 5).tolist() == pytest.approx([2 / 3])
    assert _accuracy_counts(per_slot, torch.tensor([2]), 1, mask).tolist() == pytest.approx([0.0])


def test_a_synthetic_run_records_no_local_folder_named_synthetic(tmp_path, monkeypatch):
    """'synthetic' is the embedded set even beside a folder of that name: the run must not record the folder as
    its data (eval from elsewhere would then open it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'synthetic').mkdir()
    results = train(small_config(tmp_path / 'run', max_steps=1))
    assert results['dataset'] == 'synthetic' and results['dataset_path'] is None


def test_the_engines_eval_reports_top5_of_the_main_logits_with_ten_classes():
    """The top-5 the engine reports is of the main head at k = 5: targets ranked 1st, 3rd, 5th and 6th of ten
    give top-1 25% and top-5 75% (with 4 classes or fewer, as in the runs above, top-5 is always 100%)."""
    from accelerate import Accelerator

    from timm_fgvc.engine.trainer import evaluate

    class Ranked(torch.nn.Module):
        def forward(self, images, labels):
            logits = torch.arange(10, 0, -1).float().expand(len(labels), 10)  # class c ranked c + 1
            return {'logits': {'main': logits, 'other': logits.flip(-1)}, 'main': 'main', 'masks': {},
                    'losses': {'loss': torch.tensor(1.0)}}
    batches = [{'pixel_values': torch.zeros(2, 3, 4, 4), 'labels': torch.tensor(pair)} for pair in ([0, 2], [4, 5])]
    metrics = evaluate(Accelerator(cpu=True), Ranked(), batches, small_config('unused'))
    assert metrics['eval_top1'] == pytest.approx(25.0) and metrics['eval_top5'] == pytest.approx(75.0)
    assert metrics['eval_top1_other'] == pytest.approx(0.0) and metrics['eval_samples'] == 4


def test_eval_every_evaluates_every_nth_epoch_and_always_the_last():
    """--eval-every 2 over 3 epochs: epoch 2 and the final epoch 3 carry eval numbers, epoch 1 none."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        results = train(small_config(folder, epochs=3, eval_every=2, max_steps=None, checkpoint_every=0))
    evaluated = [('eval_top1' in record) for record in results['history']]
    assert [r['epoch'] for r in results['history']] == [1, 2, 3] and evaluated == [False, True, True]
    assert results['final']['eval_top1'] == results['history'][-1]['eval_top1']
