"""The training engine: the CLI learns, resumes exactly, runs two processes, reads data and configs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timm_fgvc.data.loading import few_shot_indices, load_fgvc_dataset
from timm_fgvc.engine.config import TrainConfig, parse_args
from timm_fgvc.engine.trainer import apply_stage, resolve_stage_epochs, stage_schedule, train
from timm_fgvc.models import TrainingStage

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


def test_cli_training_lowers_the_loss(tmp_path):
    run_cli(SMALL + ['--epochs', '5', '--optimizer', 'adamw', '--lr', '3e-3', '--weight-decay', '0.05',
                     '--output-dir', str(tmp_path)])
    results = json.loads((tmp_path / 'results.json').read_text())
    losses = [h['train_loss'] for h in results['history']]
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0], losses  # measured 5.91 -> 4.99
    assert {'eval_top1', 'eval_top5', 'eval_top1_joint', 'eval_top1_original'} <= set(results['final'])
    assert results['final']['eval_samples'] == 12 and results['label_names'][0] == results['label_names'][0]
    state = load_file(str(tmp_path / 'model.safetensors'))
    assert state['heads.joint.weight'].shape[0] == 4


def test_resume_continues_at_the_same_step_with_the_same_optimizer_state(tmp_path):
    # uninterrupted: 6 steps, a checkpoint every 3
    full = train(small_config(tmp_path / 'full', epochs=2, max_steps=6, checkpoint_every=3, keep_checkpoints=5))
    # interrupted after 3 steps, then resumed to 6
    train(small_config(tmp_path / 'cut', epochs=2, max_steps=3, checkpoint_every=3, keep_checkpoints=5))
    resumed = train(small_config(tmp_path / 'cut', epochs=2, max_steps=6, checkpoint_every=3, keep_checkpoints=5,
                                 resume='latest'))
    assert resumed['history'][-1]['step'] == full['history'][-1]['step'] == 6
    opt_full = torch.load(tmp_path / 'full/checkpoints/step_00000003/optimizer.bin', weights_only=True)
    opt_cut = torch.load(tmp_path / 'cut/checkpoints/step_00000003/optimizer.bin', weights_only=True)
    for key, buffers in opt_full['state'].items():
        assert torch.equal(buffers['momentum_buffer'], opt_cut['state'][key]['momentum_buffer'])
    a = load_file(str(tmp_path / 'full/model.safetensors'))
    b = load_file(str(tmp_path / 'cut/model.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)  # nothing lost: the same weights as the uninterrupted run
    with pytest.raises(FileNotFoundError, match='No checkpoint'):
        train(small_config(tmp_path / 'empty', resume='latest'))


def test_two_processes_agree_on_the_evaluated_accuracy(tmp_path):
    launcher = ('accelerate', 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                '--mixed_precision', 'no', '--dynamo_backend', 'no')
    run_cli(SMALL + ['--max-steps', '2', '--output-dir', str(tmp_path)], launcher=launcher)
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['num_processes'] == 2
    top1 = results['per_process_eval_top1']
    assert len(top1) == 2 and top1[0] == top1[1]
    assert results['final']['eval_samples'] == 12  # every eval image counted once across the two shards


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
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No images found'):
        load_fgvc_dataset(str(tmp_path / 'empty'))
    with pytest.raises(ValueError, match='fewer than --shots'):
        few_shot_indices([0, 0, 1], shots=2, seed=0)


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
