"""The training engine behind `train_fgvc.py` (SPEC §4): one loop for every method and plain timm models.

Accelerate handles devices, mixed precision, gradient accumulation, DDP/FSDP, trackers and
`save_state`/`load_state`. A method's `forward_train` + `loss` are wrapped in `TrainStep`, so the wrapped
module's `forward` is what DDP sees. Stages (`model.training_stages()`) run in order on one optimizer and
one schedule: a stage switches which parameters train, which loss terms count and the learning rates.

One output folder holds one run (`checkpoint.check_output_dir`); checkpoints are saved atomically with a
manifest, and `--resume latest` takes the newest complete one. The console shows one progress bar and one line
per epoch; `results.json`, `model.safetensors` and `curves.png` are written at the end.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.models._hub import load_model_config_from_hf, load_model_config_from_path
from torchvision import transforms as T
from tqdm.auto import tqdm

from ..catalog import split_model_name
from ..data.loading import SeededTransform, attach_transform, collate, load_fgvc_dataset
from ..models._base import TrainingStage, slot_mean
from ..models._builder import ModelBuildError, create_model_or_explain
from ..optim import parameter_groups
from ..models._weights import (is_method_state, load_backbone_weights, load_fine_tune_weights,
                               state_dict_keys)
from .checkpoint import (accelerate_state_folder, check_checkpoint_config, check_output_dir, check_resume_steps,
                         clear_run_outputs, data_signature, find_checkpoint, load_weights, read_training_state,
                         rng_restore_problem, run_folder_lock, save_checkpoint, warn_loudly, write_run_config)
from .config import TrainConfig
from .curves import plot_curves

__all__ = ['TrainStep', 'train', 'evaluate', 'build_model', 'default_label_smoothing', 'model_kwargs',
           'build_transforms', 'parameter_groups', 'resolve_stage_epochs', 'stage_schedule', 'format_record']

_logger = logging.getLogger(__name__)


class TrainStep(nn.Module):
    """`forward(x, target)` -> named logits and loss terms; the unit Accelerate prepares (and DDP wraps)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing  # a plain model's; a method's heads take theirs from the model
        self.loss_terms: Optional[Sequence[str]] = None  # set per stage
        self.frozen_norms: List[nn.Module] = []  # set per stage: norm layers whose parameters the stage freezes

    def train(self, mode: bool = True):
        # a frozen part keeps its normalisation statistics too: its BatchNorm layers stay in eval mode
        super().train(mode)
        for module in self.frozen_norms:
            module.train(False)
        return self

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> Dict[str, Dict[str, torch.Tensor]]:
        if hasattr(self.model, 'forward_train'):
            output = self.model.forward_train(x, target)
            logits, main = output.logits, output.main
            # per-region / per-part logits count only the slots the method filled (e.g. regions NMS kept)
            masks = {k: output.extras[f'{k}_mask'] for k, v in logits.items()
                     if v.ndim == 3 and f'{k}_mask' in output.extras}
        else:  # a plain timm model: the baseline
            logits, main, masks = {'main': self.model(x)}, 'main', {}
        result = {'logits': dict(logits), 'main': main, 'masks': masks}
        if target is not None:
            if hasattr(self.model, 'loss'):
                losses = self.model.loss(output, target)
            else:
                losses = {'loss_main': F.cross_entropy(logits['main'].float(), target,
                                                       label_smoothing=self.label_smoothing)}
                losses['loss'] = losses['loss_main']
            if self.loss_terms is not None:  # the stage's terms, each times the model's loss_weights
                missing = [k for k in self.loss_terms if k not in losses]
                if missing:
                    raise ValueError(f'The stage sums loss terms {missing}, which {type(self.model).__name__}.loss '
                                     f'does not return (it returns {sorted(losses)}): fix training_stages().')
                losses['loss'] = self.model.weighted_sum({k: losses[k] for k in self.loss_terms})
            result['losses'] = losses
        return result


@dataclass
class TrainState:
    """Counters saved with every checkpoint (in its `training_state.json`)."""
    step: int = 0
    history: List[dict] = field(default_factory=list)
    # the current epoch's summed losses and batch counts (all, and per loss term: a term of one stage is averaged
    # over that stage's batches): a resume mid-epoch averages the whole epoch
    epoch_losses: Dict[str, float] = field(default_factory=dict)
    epoch_batches: int = 0
    epoch_term_batches: Dict[str, int] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {'step': self.step, 'history': json.dumps(self.history),
                'epoch_losses': json.dumps(self.epoch_losses), 'epoch_batches': self.epoch_batches,
                'epoch_term_batches': json.dumps(self.epoch_term_batches)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state['step'])
        self.history = json.loads(state['history'])
        self.epoch_losses = json.loads(state.get('epoch_losses', '{}'))  # older checkpoints: from the resume on
        self.epoch_batches = int(state.get('epoch_batches', 0))
        # older checkpoints counted batches only: every term so far then ran in all of them
        self.epoch_term_batches = json.loads(state.get('epoch_term_batches', 'null')) or {
            name: self.epoch_batches for name in self.epoch_losses}


def training_state(scheduler, state: TrainState) -> dict:
    """What a checkpoint saves beside Accelerate's state (`read_training_state` reads it back), as JSON."""
    return {'scheduler': scheduler.state_dict(), 'train_state': state.state_dict()}  # lr_lambdas: None each


def model_kwargs(cfg: TrainConfig) -> Dict:
    """`timm.create_model` kwargs of the run: `--model-args` plus `--output-stride` (in the backbone of a method,
    on the model itself for a plain timm model); what export records as the model's arguments."""
    kwargs = dict(cfg.model_args)
    if cfg.output_stride:
        if is_fgvc_model(cfg.model):
            kwargs['backbone_args'] = {**kwargs.get('backbone_args', {}), 'output_stride': cfg.output_stride}
        else:
            kwargs['output_stride'] = cfg.output_stride
    return kwargs


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    kwargs = model_kwargs(cfg)
    fgvc = is_fgvc_model(cfg.model)
    if cfg.pretrained_backbone and cfg.pretrained_path:
        raise ValueError('Give --pretrained-backbone (timm Hub weights) or --pretrained-path (a local file), not both.')
    check_pretrained_path(cfg)
    method_weights = bool(cfg.pretrained_path) and fgvc and is_method_state(state_dict_keys(cfg.pretrained_path))
    if cfg.pretrained_backbone:
        if not fgvc:
            raise ValueError(f'--pretrained-backbone is for timm-fgvc methods; {cfg.model} is a plain timm model: '
                             'use --pretrained for its ImageNet weights.')
        kwargs['pretrained_backbone'] = True
    if cfg.pretrained_path and fgvc and not method_weights:
        kwargs['pretrained_backbone'] = cfg.pretrained_path  # every backbone of the method (CAA: each scale's)
    if timm.models.parse_model_name(cfg.model)[0] and not (cfg.pretrained or cfg.pretrained_path):
        warn_loudly(f'--model {cfg.model} without --pretrained: its architecture and preprocessing are used, its '
                    'weights are not (the model starts from random initialisation, as timm does with '
                    'pretrained=False). Pass --pretrained to fine-tune them.')
    model = timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, **kwargs)
    if method_weights:  # a trained method of the same architecture: all but a classifier that does not fit
        load_fine_tune_weights(model, cfg.pretrained_path)
    if cfg.pretrained_path and not fgvc:
        load_backbone_weights(model, cfg.pretrained_path)  # the baseline: all but a classifier that does not fit
    if cfg.initial_checkpoint:
        load_weights(model, cfg.initial_checkpoint)
    return model


def default_label_smoothing(model: nn.Module, value: float) -> None:
    """`--label-smoothing` for every head of a method whose recipe sets none (S3N's authors' recipe smooths its O
    and C heads itself); a plain model gets it in `TrainStep`."""
    if value and isinstance(getattr(model, 'label_smoothing', None), dict):
        for name in getattr(model, 'heads', {}):
            model.label_smoothing.setdefault(name, value)


def model_architecture(name: str) -> str:
    """The registered architecture `name` builds: its own without a tag, or for `hf-hub:` / `local-dir:` the one
    in its config.json (read as `timm.create_model` reads it)."""
    source, model_id = timm.models.parse_model_name(name)
    if source == 'hf-hub':
        model_id = load_model_config_from_hf(model_id)[1]
    elif source == 'local-dir':
        model_id = load_model_config_from_path(model_id)[1]
    return timm.models.split_model_name_tag(model_id)[0]


def is_fgvc_model(name: str) -> bool:
    """True for a method's model (one of `catalog.METHODS`, a plugin's too; also published on the Hub or exported
    to a folder), False for timm's own models."""
    architecture = model_architecture(name)
    return timm.models.is_model(architecture) and split_model_name(architecture)[0] is not None


def source_config(model: nn.Module, name: str) -> Optional[Dict]:
    """What rebuilds a model fine-tuned from `hf-hub:` / `local-dir:` `name` without that source (offline, or the
    folder moved): its architecture, pretrained_cfg and the source's constructor arguments. None for a registered
    name, which rebuilds from itself."""
    if timm.models.parse_model_name(name)[0] is None:
        return None
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in model.pretrained_cfg.items()
           if k not in ('label_names', 'label_descriptions')}  # the run records its own class names
    return {'architecture': cfg['architecture'], 'pretrained_cfg': cfg,
            'model_args': dict(getattr(model, 'pretrained_model_args', None) or {})}


def build_transforms(model: nn.Module, cfg: TrainConfig):
    """Train / eval transforms from the model's pretrained_cfg (timm), with size overrides from the run."""
    overrides = {}
    img_size, crop_pct = cfg.img_size, cfg.crop_pct
    if cfg.dataset == 'synthetic':  # generated at the size to use, with parts anywhere up to the border
        img_size, crop_pct = img_size or cfg.synthetic_image_size, crop_pct or 1.0
    if img_size:
        overrides['input_size'] = (3, img_size, img_size)
    if crop_pct:
        overrides['crop_pct'] = crop_pct
    data_cfg = resolve_data_config(overrides, model=model)
    size = data_cfg['input_size'][-1]
    if cfg.augment:
        # the FGVC recipe: resize to size / crop_pct, random crop, flip (timm's RandomResizedCrop would cut parts off)
        train_tf = T.Compose([
            T.Resize(int(round(size / data_cfg['crop_pct'])), interpolation=T.InterpolationMode.BILINEAR),
            T.RandomCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(data_cfg['mean'], data_cfg['std']),
        ])
    else:
        train_tf = create_transform(**data_cfg, is_training=False)
    return train_tf, create_transform(**eval_data_config(data_cfg, cfg), is_training=False), data_cfg


def eval_data_config(data_cfg: dict, cfg: TrainConfig) -> dict:
    """The data config evaluation uses: training's, at `--test-img-size` where the run set one."""
    if not cfg.test_img_size:
        return dict(data_cfg)
    return {**data_cfg, 'input_size': (data_cfg['input_size'][0], cfg.test_img_size, cfg.test_img_size)}


def resolve_backbone_lr(cfg: TrainConfig) -> float:
    """`--backbone-lr`, else lr / 10 for a pretrained backbone (the paper recipes) and lr when from scratch."""
    if cfg.backbone_lr is not None:
        return cfg.backbone_lr
    pretrained = cfg.pretrained or cfg.pretrained_backbone or cfg.pretrained_path or cfg.initial_checkpoint
    return cfg.lr * 0.1 if pretrained else cfg.lr


def resolve_stage_epochs(stages: Sequence[TrainingStage], cfg: TrainConfig, model_name: str = '') -> List[float]:
    """Epochs of each stage: `cfg.stage_epochs` (one value for every stage, or one per stage) over the model's own
    (the paper's) stage epochs, over `cfg.epochs`."""
    override = [float(e) for e in cfg.stage_epochs or []]
    if len(override) == 1:
        override = override * len(stages)
    if override and len(override) != len(stages):
        raise ValueError(f'--stage-epochs gives {len(override)} values but {model_name or "the model"} has '
                         f'{len(stages)} stage(s) {[s.name for s in stages]}: give one value per stage or a single '
                         'value for all of them.')
    if any(e <= 0 for e in override):
        raise ValueError(f'--stage-epochs must be positive, got {cfg.stage_epochs}.')
    return override or [float(s.epochs if s.epochs is not None else cfg.epochs) for s in stages]


def stages_to_run(model: nn.Module, cfg: TrainConfig) -> Tuple[List[TrainingStage], List[float]]:
    """The model's training stages from `--start-stage` on, with the epochs of each."""
    stages = model.training_stages() if hasattr(model, 'training_stages') else [TrainingStage('main')]
    check_stage_prefixes(model, stages)
    if not 0 <= cfg.start_stage < len(stages):
        raise ValueError(f'--start-stage {cfg.start_stage} out of range: {cfg.model} has {len(stages)} stage(s) '
                         f'{[s.name for s in stages]}.')
    return stages[cfg.start_stage:], resolve_stage_epochs(stages, cfg, cfg.model)[cfg.start_stage:]


def any_stage_freezes_parameters(model: nn.Module, stages: Sequence[TrainingStage]) -> bool:
    """Whether a stage leaves some parameter without a gradient. DDP is built once with every parameter, so it
    then has to look for unused ones in each step (`find_unused_parameters`, a graph walk per step that a model
    trained whole in one stage is spared; within a stage every trainable parameter gets a gradient, which
    tests/test_train.py checks for every method)."""
    names = [n for n, _ in model.named_parameters()]
    return any(not all(stage.is_trainable(n) for n in names) for stage in stages)


def check_stage_prefixes(model: nn.Module, stages: Sequence[TrainingStage]) -> None:
    """Every `trainable` prefix of every stage names parameters of the model: a misspelt one would leave its part
    frozen through the stage, silently."""
    names = [n for n, _ in model.named_parameters()]
    for stage in stages:
        unmatched = [p for p in stage.trainable if not any(n.startswith(p) for n in names)]
        if unmatched:
            tops = sorted({n.split('.')[0] + '.' for n in names})
            raise ValueError(f'Stage {stage.name!r} of {type(model).__name__} trains {unmatched}, which name no '
                             f'parameter (the model\'s start with {tops}): fix its training_stages().')


def check_pretrained_path(cfg: TrainConfig) -> None:
    if cfg.pretrained_path and not Path(cfg.pretrained_path).exists():
        raise FileNotFoundError(f'--pretrained-path {cfg.pretrained_path}: no such file (a .safetensors or .pth '
                                "state dict of a plain timm model, or a method's weights or exported folder).")


def check_model_up_front(cfg: TrainConfig) -> None:
    """A wrong model name, model argument, weights file or stage schedule fails here, before `--overwrite` clears
    the output folder or any image is read: the model is built on the meta device (no weights, no memory)."""
    check_pretrained_path(cfg)
    for key, flag in (('num_classes', "the dataset's classes"), ('pretrained', '--pretrained'),
                      ('pretrained_backbone', '--pretrained-backbone or --pretrained-path')):
        if key in cfg.model_args:
            raise ValueError(f'--model-args sets {key!r}, which the run sets from {flag}: leave it out.')
    try:
        with torch.device('meta'):
            model = create_model_or_explain(cfg.model, num_classes=2, **model_kwargs(cfg))
    except ModelBuildError:
        raise
    except Exception:  # noqa: BLE001 (a model that cannot be built on the meta device: the real build reports it)
        return
    stages_to_run(model, cfg)


def stage_schedule(stages: Sequence[TrainingStage], cfg: TrainConfig, steps_per_epoch: int,
                   stage_epochs: Optional[Sequence[float]] = None):
    """`(bounds, stage_of, factor)`: each stage's `(first, end)` optimizer steps, the stage index of a step, and
    `factor(step, group)`, the lr multiplier of a parameter group's base lr at a step (its stage's lr, warm-up
    and schedule)."""
    bounds, start = [], 0
    stage_epochs = list(stage_epochs) if stage_epochs is not None else resolve_stage_epochs(stages, cfg)
    for epochs in stage_epochs:
        length = max(1, int(round(epochs * steps_per_epoch)))
        bounds.append((start, start + length))
        start += length
    backbone_lr = resolve_backbone_lr(cfg)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    step_interval = cfg.step_epochs * steps_per_epoch

    def stage_of(step: int) -> int:
        return next((i for i, (a, b) in enumerate(bounds) if step < b), len(bounds) - 1)

    def factor(step: int, group: str) -> float:
        index = stage_of(step)
        stage, (a, b) = stages[index], bounds[index]
        local = step - a
        if cfg.scheduler == 'cosine':
            value = 0.5 * (1 + math.cos(math.pi * min(local / (b - a), 1.0)))
        elif cfg.scheduler == 'step':
            value = cfg.step_gamma ** math.floor(local / step_interval + 1e-9)  # 0.14 x 50 is 7.000000000000001
        elif cfg.scheduler in ('none', 'constant'):
            value = 1.0
        else:
            raise ValueError(f"Unknown scheduler {cfg.scheduler!r}; use 'cosine', 'step' or 'none'.")
        if local < warmup:
            value *= (local + 1) / (warmup + 1)
        if group == 'backbone' and stage.backbone_lr is not None:
            value *= stage.backbone_lr / backbone_lr
        elif group.startswith('new') and stage.lr is not None:
            value *= stage.lr / cfg.lr
        return value

    return bounds, stage_of, factor


def apply_stage(model: nn.Module, stage: TrainingStage) -> List[nn.Module]:
    """Freeze what the stage does not train and tell the model which stage runs; returns the BatchNorm layers
    the stage freezes (the engine keeps them in eval mode so their running statistics stay put; none where the
    stage has `frozen_norm_stats=False`)."""
    for name, param in model.named_parameters():
        param.requires_grad_(stage.is_trainable(name))
    if hasattr(model, 'set_training_stage'):
        model.set_training_stage(stage)
    if not stage.frozen_norm_stats:
        return []
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def _accuracy_counts(logits: torch.Tensor, target: torch.Tensor, k: int,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per sample: 1 if the target is in the top k; for `[B, K, C]` logits (per region/part), the share of the
    K predictions that have it, over the slots of `mask` `[B, K]` where given (`slot_mean`)."""
    k = min(k, logits.shape[-1])
    if logits.ndim == 3:
        return slot_mean((logits.topk(k, -1).indices == target[:, None, None]).any(-1).float(), mask, dim=-1)
    return (logits.topk(k, -1).indices == target[:, None]).any(-1)


def forward_batch(accelerator: Accelerator, step_module: nn.Module, batch: dict, cfg: TrainConfig) -> dict:
    """`step_module` on a loader batch, in the run's memory format and under its autocast."""
    images = batch['pixel_values']
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with accelerator.autocast():
        return step_module(images, batch['labels'])


@torch.no_grad()
def evaluate(accelerator: Accelerator, step_module: nn.Module, loader, cfg: TrainConfig) -> dict:
    """Top-1/top-5 of the main logits and top-1 of every head, gathered over processes."""
    with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training run's random stream
        return _evaluate(accelerator, step_module, loader, cfg)


def _evaluate(accelerator: Accelerator, step_module: nn.Module, loader, cfg: TrainConfig) -> dict:
    step_module.eval()
    correct: Dict[str, List[torch.Tensor]] = {}
    losses, diverged = [], []
    for batch in tqdm(loader, desc='eval', leave=False, disable=not accelerator.is_local_main_process):
        out = forward_batch(accelerator, step_module, batch, cfg)
        target = batch['labels']
        hits = {'top1': _accuracy_counts(out['logits'][out['main']], target, 1),
                'top5': _accuracy_counts(out['logits'][out['main']], target, 5)}
        for name, logits in out['logits'].items():
            hits[f'top1_{name}'] = _accuracy_counts(logits, target, 1, out['masks'].get(name))
        for name, value in accelerator.gather_for_metrics(hits).items():
            correct.setdefault(name, []).append(value.float())
        main_logits = out['logits'][out['main']].detach()
        diverged.append(accelerator.gather_for_metrics(~torch.isfinite(main_logits).flatten(1).all(1)))
        # per sample (its batch's mean), so the padding of a last uneven round is cut and batches weigh by size
        losses.append(accelerator.gather_for_metrics(out['losses']['loss'].detach().float().expand(len(target))))
    metrics = {f'eval_{k}': 100.0 * torch.cat(v).mean().item() for k, v in correct.items()}
    metrics['eval_loss'] = torch.cat(losses).mean().item() if losses else float('nan')
    if correct and (torch.cat(diverged).any() or not math.isfinite(metrics['eval_loss'])):
        step_module.train()
        bad = int(torch.cat(diverged).sum())
        what = (f'non-finite outputs for {bad} of {len(torch.cat(diverged))} eval images' if bad else
                f'a non-finite eval loss ({metrics["eval_loss"]})')
        raise FloatingPointError(f'The model gives {what}: its weights diverged, and a top-1 of them would mean '
                                 'nothing. Lower --lr and train again, or evaluate an earlier checkpoint.')
    metrics['eval_samples'] = int(torch.cat(correct['top1']).numel()) if correct else 0
    step_module.train()
    return metrics


def format_record(record: dict, total_epochs: Optional[int] = None) -> str:
    """One console line per epoch: losses and accuracies rounded to 2 decimals, learning rates in 2 digits."""
    epoch = f"epoch {record['epoch']}" + (f'/{total_epochs}' if total_epochs else '')
    parts = [f"{epoch} step {record['step']} [{record['stage']}]"]
    terms = {k[len('train_loss_'):]: v for k, v in record.items() if k.startswith('train_loss_')}
    if 'train_loss' in record:
        parts.append(f"loss {record['train_loss']:.2f}" + (
            ' (' + ', '.join(f'{k} {v:.2f}' for k, v in terms.items()) + ')' if terms else ''))
    if 'eval_top1' in record:
        heads = {k[len('eval_top1_'):]: v for k, v in record.items() if k.startswith('eval_top1_')}
        parts.append(f"eval top-1 {record['eval_top1']:.2f} top-5 {record['eval_top5']:.2f}"
                     + (' (' + ', '.join(f'{k} {v:.2f}' for k, v in heads.items()) + ')' if len(heads) > 1 else ''))
    parts.append(f"lr {record['lr']:.2e} backbone {record['lr_backbone']:.2e}")
    return ' | '.join(parts)


def accelerator_type(cpu: bool = False) -> str:
    """The device type a run trains on, as Accelerate picks it: 'cuda' (also ROCm), 'xpu' or 'mps' where present,
    else (or with `cpu`, `TrainConfig.cpu`) 'cpu'."""
    if cpu:
        return 'cpu'
    xpu, mps = getattr(torch, 'xpu', None), getattr(torch.backends, 'mps', None)
    return ('cuda' if torch.cuda.is_available() else 'xpu' if xpu and xpu.is_available()
            else 'mps' if mps and mps.is_available() else 'cpu')


def _has_accelerator() -> bool:
    """A device on which Accelerate runs fp16 autocast (CUDA/ROCm, XPU, MPS...)."""
    return accelerator_type() != 'cpu'


def new_accelerator(**kwargs) -> Accelerator:
    """An Accelerator for one run or eval. Accelerate keeps one state per process and refuses a second
    Accelerator with another mixed precision (a notebook that trains or evaluates a bf16 run after an fp32 one), so
    the per-run part of that state starts afresh; the process group (`PartialState`) is kept."""
    AcceleratorState._reset_state()
    return Accelerator(**kwargs)


def print_data_summary(data, print_fn) -> dict:
    """Print what was left out of the data and what is used; returns `data.description()`."""
    for left_out, what in ((data.bad_images, 'image(s) that cannot be read (--skip-bad-images)'),
                           (data.ignored_files, 'file(s) of the dataset folder')):
        if left_out:
            print_fn(f'Left out {len(left_out)} {what}: ' + '; '.join(left_out[:5]) + (' ...' if len(left_out) > 5
                                                                                       else ''))
    used = data.description()
    print_fn(f"Data: {used['train_samples']} training images of {used['train_split']!r}, "
             + (f"{used['eval_samples']} evaluated of {used['eval_split']!r}" if used['eval_split'] else
                'no evaluation (no eval split, --eval-fraction 0)')
             + f", {used['num_classes']} classes (columns {used['image_column']!r}, {used['label_column']!r})"
             + (f"; passed over {used['unlabelled_splits_passed_over']} (no labelled image)"
                if used['unlabelled_splits_passed_over'] else ''))
    return used


def train_data_loader(data, transform, cfg: TrainConfig, num_processes: int) -> torch.utils.data.DataLoader:
    """The shuffled training loader. Its worker base seed comes from its own generator, not the global RNG the model
    uses. An incomplete last round is dropped only when a full one exists: with fewer images than a batch per
    process, Accelerate pads the round (dropping it would leave every process with no batch)."""
    train_set = attach_transform(data.train, transform, data.image_column, data.label_column)
    return torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) >= cfg.batch_size * num_processes,
        collate_fn=collate, num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))


def eval_data_loader(data, transform, cfg: TrainConfig) -> torch.utils.data.DataLoader:
    """The evaluation loader of `data.eval`, in order (training's evaluation and `timm-fgvc eval` alike)."""
    eval_set = attach_transform(data.eval, transform, data.image_column, data.label_column)
    return torch.utils.data.DataLoader(
        eval_set, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, collate_fn=collate,
        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`--optimizer` over the model's parameter groups (`parameter_groups`: backbone, new, per-prefix rules)."""
    groups = parameter_groups(model, cfg.lr, resolve_backbone_lr(cfg), cfg.weight_decay)
    if cfg.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adamw'.")


def checkpoint_to_resume(cfg: TrainConfig) -> Tuple[Path, List[str], dict]:
    """The checkpoint `--resume` names, checked before the data work: it exists and is complete, belongs to this
    configuration and number of processes, and has steps left to train. Returns its path, the warnings to show
    and its training state (`read_training_state`)."""
    path, messages = find_checkpoint(Path(cfg.output_dir), cfg.resume)
    check_checkpoint_config(path, cfg, _world_size())
    saved = read_training_state(path)
    check_resume_steps(saved, cfg, path)
    return path, messages, saved


def resume_state(accelerator: Accelerator, cfg: TrainConfig, signature: dict, scheduler, state: TrainState,
                 checkpoint: Tuple[Path, List[str], dict]) -> Tuple[Path, List[str]]:
    """Load `checkpoint` (`checkpoint_to_resume`), once checked against this run's data, into the prepared
    objects, the lr `scheduler` and the `state` counters; returns its path and the warnings shown, a process's
    random state not restored among them."""
    path, messages, saved = checkpoint
    messages = list(messages)
    check_checkpoint_config(path, cfg, accelerator.num_processes, data=signature)
    with accelerate_state_folder(path) as folder:
        accelerator.load_state(str(folder))
    scheduler.load_state_dict(saved['scheduler'])
    state.load_state_dict(saved['train_state'])
    rng_problem = rng_restore_problem(path, accelerator.process_index)
    if rng_problem:
        messages.append(f'The random state of process {accelerator.process_index} was not restored from {path} '
                        f'({rng_problem}): the resumed run will not repeat the interrupted one exactly.')
    for message in messages:
        warn_loudly(message, accelerator.print)
    return path, messages


def enter_stage(step_module: TrainStep, optimizer, stages: Sequence[TrainingStage], index: int,
                begins: bool) -> None:
    """Switch the unwrapped `step_module` to stage `index`: what trains, the loss terms, the frozen BatchNorm layers.
    Where the stage `begins` (a first run, or a resume exactly at its start) the model's one-off initialisation
    runs too, and the optimizer forgets the state of the parameters it re-initialised."""
    model, stage = step_module.model, stages[index]
    frozen_norms = apply_stage(model, stage)
    if begins and hasattr(model, 'start_training_stage'):
        fresh = model.start_training_stage(stage, stages[index - 1] if index > 0 else None)
        optimizer_state = getattr(optimizer, 'optimizer', optimizer).state
        for param in fresh or []:
            optimizer_state.pop(param, None)
    step_module.loss_terms, step_module.frozen_norms = stage.loss_terms, frozen_norms


def per_process_weights_checksum(accelerator: Accelerator, model: nn.Module) -> Optional[List[float]]:
    """Each process's sum of its weights, gathered (a loud warning when they differ): data-parallel processes must
    end with the same weights, and the gathered metrics agree by construction, so they say nothing. None for
    FSDP / DeepSpeed, whose processes hold different shards by design."""
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    per_process = accelerator.gather(checksum.to(accelerator.device)).tolist()
    if len(set(per_process)) > 1:
        warn_loudly(f'The {accelerator.num_processes} processes ended with different weights (parameter sums '
                    f"{per_process}): the saved weights are the main process's.", accelerator.print)
    return per_process


def write_run_outputs(output_dir: Path, model: nn.Module, results: dict, title: str) -> None:
    """model.safetensors, results.json and curves.png of a finished run. Each file is whole or absent: a kill here
    never leaves new weights next to old results, or a torn file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    weights_tmp, results_tmp = output_dir / 'model.safetensors.tmp', output_dir / 'results.json.tmp'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_tmp))
    results_tmp.write_text(json.dumps(results, indent=2))
    (output_dir / 'results.json').unlink(missing_ok=True)  # no results.json beside weights of another run
    os.replace(weights_tmp, output_dir / 'model.safetensors')
    os.replace(results_tmp, output_dir / 'results.json')
    plot_curves(results['history'], output_dir / 'curves.png', title=title)


@contextlib.contextmanager
def user_warnings_on_one_process_per_machine():
    """A model's or a library's `UserWarning` says the same on every process: only each machine's first process
    (LOCAL_RANK 0) shows it. Warnings of another kind (the engine's own, e.g. a process's random state not restored
    on resume, are `RuntimeWarning`s) still show on every process."""
    with warnings.catch_warnings():
        if int(os.environ.get('LOCAL_RANK', '0')) != 0:
            warnings.filterwarnings('ignore', category=UserWarning)
        yield


def _world_size() -> int:
    return int(os.environ.get('WORLD_SIZE') or os.environ.get('PMI_SIZE') or os.environ.get('OMPI_COMM_WORLD_SIZE')
               or 1)


def _global_rank() -> int:
    """This process's rank as the launcher set it (torchrun / accelerate: RANK; MPI: PMI_RANK, OMPI_...)."""
    return int(os.environ.get('RANK') or os.environ.get('PMI_RANK') or os.environ.get('OMPI_COMM_WORLD_RANK') or 0)


def train(cfg: TrainConfig) -> dict:
    """Run a whole training job; returns the results that are also written to `results.json`."""
    first_process = _global_rank() == 0
    with user_warnings_on_one_process_per_machine(), (run_folder_lock(cfg.output_dir) if first_process
                                                      else contextlib.nullcontext()):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict:
    output_dir = Path(cfg.output_dir)
    check_output_dir(cfg)  # before anything is written: one folder, one run
    resume_from = checkpoint_to_resume(cfg) if cfg.resume else None  # before the data work
    if cfg.eval_split is not None and cfg.eval_split == cfg.train_split:  # `timm-fgvc eval --split` may score it
        raise ValueError(f'--eval-split {cfg.eval_split!r} is the training split: its top-1 would score images the '
                         'model trained on and be reported as its accuracy. Name another split, or leave '
                         '--eval-split out to hold out --eval-fraction of training.')
    if cfg.skip_bad_images and not cfg.check_images:
        raise ValueError('--skip-bad-images leaves out the images the load-time check finds, and --check-images '
                         'false turns that check off (a bad image would then stop the run mid-epoch): drop one.')
    check_model_up_front(cfg)
    distributed = _world_size() > 1
    ddp_kwargs = DistributedDataParallelKwargs()  # find_unused_parameters is set once the stages are known
    if cfg.mixed_precision == 'fp16' and (cfg.cpu or not _has_accelerator()):
        raise ValueError('--mixed-precision fp16 needs a GPU (Accelerate ignores it on the CPU, so the run would be '
                         'fp32): use --mixed-precision bf16 or no on the CPU.')
    accelerator = new_accelerator(
        cpu=cfg.cpu or (distributed and not torch.cuda.is_available()),  # CPU-only DDP needs gloo via cpu=True
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with=cfg.log_with or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / 'logs')),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[ddp_kwargs],
    )
    set_seed(cfg.seed)
    synthetic_args = dict(num_classes=cfg.synthetic_classes, train_per_class=cfg.synthetic_train_per_class,
                          test_per_class=cfg.synthetic_test_per_class, image_size=cfg.synthetic_image_size,
                          seed=cfg.seed)
    with accelerator.main_process_first():
        data = load_fgvc_dataset(
            cfg.dataset, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.image_column, cfg.label_column,
            cfg.eval_fraction, cfg.shots, cfg.seed, cfg.max_train_samples, cfg.max_eval_samples, synthetic_args,
            check_images=cfg.check_images, skip_bad_images=cfg.skip_bad_images)
    used = print_data_summary(data, accelerator.print)
    model = build_model(cfg, data.num_classes)
    if getattr(model, 'num_classes', data.num_classes) != data.num_classes:
        raise ValueError(f'Model {cfg.model} has {model.num_classes} classes but dataset {cfg.dataset!r} has '
                         f'{data.num_classes}.')
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_tf, eval_tf, data_cfg = build_transforms(model, cfg)
    train_tf = SeededTransform(train_tf, cfg.seed)
    train_loader = train_data_loader(data, train_tf, cfg, accelerator.num_processes)
    eval_loader = eval_data_loader(data, eval_tf, cfg) if data.eval is not None and len(data.eval) else None

    stages, stage_epochs = stages_to_run(model, cfg)
    if len(stages) > 1 or (not cfg.stage_epochs and stages[0].epochs is not None):
        # a staged method's epochs are its paper's unless --stage-epochs sets them, whatever --epochs says
        fixed = not cfg.stage_epochs and all(s.epochs is not None for s in stages)
        accelerator.print('Stages: ' + ', '.join(f'{s.name} {e:g}' for s, e in zip(stages, stage_epochs))
                          + ' epochs' + (f' (the paper\'s; --epochs {cfg.epochs} does not apply: set them with '
                                         '--stage-epochs)' if fixed else ''))
    optimizer = build_optimizer(model, cfg)
    group_names = [g['name'] for g in optimizer.param_groups]
    default_label_smoothing(model, cfg.label_smoothing)
    step_module = TrainStep(model, cfg.label_smoothing)
    ddp_kwargs.find_unused_parameters = any_stage_freezes_parameters(model, stages)
    step_module, optimizer, train_loader = accelerator.prepare(step_module, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if accelerator.num_processes > 1:  # the processes hold the same weights now: from here on each draws its own
        # model-internal random numbers (S3N's sampling, dropout); data order and augmentation are seeded apart
        torch.manual_seed(cfg.seed + 1_000_003 * accelerator.process_index)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.grad_accum_steps))
    bounds, stage_of, factor = stage_schedule(stages, cfg, steps_per_epoch, stage_epochs)
    total_steps = bounds[-1][1] if cfg.max_steps is None else min(bounds[-1][1], cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, g=g: factor(s, g) for g in group_names])
    state = TrainState()

    def trained_lr(group: str) -> float:
        """The lr of `group` at the last optimizer step (the optimizer's is already the next step's)."""
        return scheduler.base_lrs[group_names.index(group)] * factor(state.step - 1, group)

    signature = data_signature(data.train[data.label_column],
                               data.eval[data.label_column] if data.eval is not None else None, data.label_names)
    resume_path, resume_warnings = (resume_state(accelerator, cfg, signature, scheduler, state, resume_from)
                                    if resume_from else (None, []))
    if resume_path is not None:
        accelerator.print(f'Resumed from {resume_path} at step {state.step}')
    if accelerator.is_main_process:  # only now, with the data, model and any resume accepted: a typo in a flag
        if cfg.overwrite:  # leaves the old run whole
            clear_run_outputs(output_dir)
        write_run_config(cfg)
    accelerator.wait_for_everyone()

    run_config = cfg.to_dict() | {'num_classes': data.num_classes, 'stages': [s.name for s in stages]}
    accelerator.init_trackers('timm-fgvc', config={k: v for k, v in run_config.items()
                                                   if isinstance(v, (int, float, str, bool))})
    inner = accelerator.unwrap_model(step_module).model
    current_stage = -1
    start_time = time.time()
    total_epochs = math.ceil(total_steps / steps_per_epoch)
    step_module.train()
    while state.step < total_steps:
        epoch = state.step // steps_per_epoch
        epoch_start = epoch * steps_per_epoch
        progress = tqdm(total=min(steps_per_epoch, total_steps - epoch_start), initial=state.step - epoch_start,
                        desc=f'epoch {epoch + 1}/{total_epochs}', leave=False,
                        disable=not accelerator.is_local_main_process)
        skip_batches = (state.step - epoch_start) * cfg.grad_accum_steps
        train_loader.set_epoch(epoch)
        train_tf.epoch = epoch
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        step_before = state.step
        for batch in loader:
            index = stage_of(state.step)
            if index != current_stage:
                enter_stage(accelerator.unwrap_model(step_module), optimizer, stages, index,
                            begins=state.step == bounds[index][0])
                step_module.train()
                current_stage = index
            with accelerator.accumulate(step_module):
                out = forward_batch(accelerator, step_module, batch, cfg)
                loss = out['losses']['loss']
                if not torch.isfinite(loss):
                    raise FloatingPointError(f'Loss is {loss.item()} at step {state.step}: the run diverged. Lower '
                                             '--lr' + (' or use --mixed-precision no' if cfg.mixed_precision != 'no'
                                                       else '') + ' and start again (--overwrite).')
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_(step_module.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step() if accelerator.sync_gradients else None
                optimizer.zero_grad(set_to_none=True)
            names = sorted(out['losses'])
            values = torch.stack([out['losses'][k].detach().float() for k in names])
            if accelerator.num_processes > 1:  # the whole step's loss, the same on every process (and checkpoint)
                values = accelerator.reduce(values, reduction='mean')
            for name, value in zip(names, values.tolist()):
                state.epoch_losses[name] = state.epoch_losses.get(name, 0.) + value
                state.epoch_term_batches[name] = state.epoch_term_batches.get(name, 0) + 1
            state.epoch_batches += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{state.epoch_losses['loss'] / state.epoch_batches:.2f}",
                                 stage=stages[index].name)
            epoch_end = state.step >= total_steps or state.step % steps_per_epoch == 0
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and not epoch_end:
                # (an epoch's end saves below, with its record)
                save_checkpoint(accelerator, output_dir, state.step, cfg, cfg.keep_checkpoints, signature,
                                training_state(scheduler, state))
            if epoch_end:
                break
        progress.close()
        if state.step == step_before:  # never loop on an epoch that cannot train
            raise RuntimeError(f'Epoch {epoch + 1} gave no training step ({len(train_loader)} batches per process '
                               f'from {len(data.train)} images, batch size {cfg.batch_size}).')
        epoch_done = state.step % steps_per_epoch == 0 or state.step >= total_steps
        if not epoch_done:
            continue
        record = {'epoch': math.ceil(state.step / steps_per_epoch), 'step': state.step,
                  'stage': stages[stage_of(state.step - 1)].name,
                  'lr': trained_lr('new'), 'lr_backbone': trained_lr('backbone')}
        record.update({f'train_{k}': v / state.epoch_term_batches[k] for k, v in state.epoch_losses.items()})
        # a --max-steps stop inside an epoch: its record holds the batches so far; the sums run on, so a resume
        # replaces the record once the epoch is whole (the history an uninterrupted run writes)
        partial = state.step % steps_per_epoch != 0 and state.step < bounds[-1][1]
        if partial:
            record['partial_epoch'] = True
        else:
            state.epoch_losses, state.epoch_batches, state.epoch_term_batches = {}, 0, {}
        is_last = state.step >= total_steps
        if eval_loader is not None and (is_last or record['epoch'] % max(cfg.eval_every, 1) == 0):
            record.update(evaluate(accelerator, step_module, eval_loader, cfg))
        if state.history and state.history[-1].get('partial_epoch') and state.history[-1]['epoch'] == record['epoch']:
            state.history.pop()
        state.history.append(record)
        accelerator.log(record, step=state.step)
        accelerator.print(format_record(record, total_epochs))
        save_checkpoint(accelerator, output_dir, state.step, cfg, cfg.keep_checkpoints, signature,
                        training_state(scheduler, state))  # with its record

    final = dict(state.history[-1]) if state.history else {}
    per_process = per_process_weights_checksum(accelerator, inner)
    results = {
        'model': cfg.model, 'dataset': cfg.dataset, 'num_classes': data.num_classes,
        # a local folder given by a relative path: where it was, so eval finds it from any working directory
        'dataset_path': (str(Path(cfg.dataset).resolve())  # 'synthetic' is the embedded set, whatever folder is here
                         if cfg.dataset != 'synthetic' and Path(cfg.dataset).exists() else None),
        'label_names': data.label_names, 'data_config': {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in data_cfg.items()},
        'config': cfg.to_dict(), 'history': state.history, 'final': final,
        'per_process_weights_checksum': per_process, 'num_processes': accelerator.num_processes,
        # images per optimizer step (the data set itself when it is smaller than a whole step's batches)
        'effective_batch_size': min(cfg.batch_size * accelerator.num_processes * cfg.grad_accum_steps, len(data.train)),
        'train_seconds': time.time() - start_time, 'device': str(accelerator.device),
        'params': sum(p.numel() for p in inner.parameters()),
        'model_args': model_kwargs(cfg),
        'init_args': getattr(inner, 'init_args', None),  # every constructor argument: reloads survive new defaults
        'source_config': source_config(inner, cfg.model),  # a Hub / folder source: reloads need not reach it
        'config_fingerprint': cfg.fingerprint(),
        'data': used,  # the splits and columns used (a Hub dataset's may have been detected)
        'data_signature': signature,  # what `timm-fgvc eval` of these weights checks its data against
        'bad_images_skipped': len(data.bad_images), 'bad_images': data.bad_images,
        'files_ignored': len(data.ignored_files), 'ignored_files': data.ignored_files[:100],  # of an image folder
        'resume_warnings': resume_warnings, 'resumed_from': str(resume_path) if resume_path else None,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_run_outputs(output_dir, inner, results, title=f'{cfg.model} on {cfg.dataset}')
        accelerator.print((f"Final eval top-1 {final['eval_top1']:.2f}%" if 'eval_top1' in final else
                           f"Final train loss {final.get('train_loss', float('nan')):.4f} (no evaluation)")
                          + f' -> {output_dir}/results.json')
    accelerator.end_training()
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    """`train_fgvc.py`: quiet by default (INFO logs of Accelerate and datasets' bars only with --verbose)."""
    from .config import parse_args
    cfg = None
    try:
        cfg = parse_args(argv)
        logging.basicConfig(level=logging.INFO if cfg.verbose else logging.WARNING)
        if not cfg.verbose:
            import datasets
            datasets.disable_progress_bars()
            datasets.logging.set_verbosity_warning()
        return train(cfg)
    except (ValueError, OSError, FloatingPointError) as e:  # bad input or a diverged run: the message says what to
        # do; --verbose keeps the traceback
        if cfg is not None and cfg.verbose:
            raise
        print(f'train_fgvc.py: error: {e}', file=sys.stderr)
        sys.exit(2)
