"""Training configuration: one dataclass, YAML files (hub_configs/*.yaml `train:` section), CLI overrides.

Every field is a `--flag` (underscores become dashes); a YAML file given with `--config` sets defaults
and flags given on the command line override it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ['TrainConfig', 'parse_args', 'load_yaml_config']


@dataclass
class TrainConfig:
    """Defaults train S3N-tiny from scratch on the synthetic set (the README's main job); the paper recipes
    live in hub_configs/*.yaml."""
    # model
    model: str = 's3n_tiny'
    pretrained: bool = False
    pretrained_backbone: bool = False
    pretrained_path: Optional[str] = None  # a plain timm model's weights (local file) for the backbone(s)/baseline
    output_stride: Optional[int] = None  # e.g. 16: dilate the backbone's last stage (same for baseline and method)
    model_args: Dict[str, Any] = field(default_factory=dict)
    initial_checkpoint: Optional[str] = None
    # data
    dataset: str = 'synthetic'
    dataset_config: Optional[str] = None
    train_split: str = 'train'
    eval_split: Optional[str] = None
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    eval_fraction: float = 0.2
    shots: Optional[int] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    synthetic_classes: int = 10
    synthetic_train_per_class: int = 100
    synthetic_test_per_class: int = 20
    synthetic_image_size: int = 96
    img_size: Optional[int] = None  # default: the model's pretrained_cfg (the synthetic set: its own size)
    test_img_size: Optional[int] = None
    crop_pct: Optional[float] = None
    augment: bool = True
    num_workers: int = 0
    # optimisation
    epochs: int = 8
    batch_size: int = 32
    eval_batch_size: Optional[int] = None
    optimizer: str = 'adamw'
    lr: float = 3e-3
    backbone_lr: Optional[float] = None  # default: lr / 10 with a pretrained backbone, lr from scratch
    momentum: float = 0.9
    weight_decay: float = 0.05
    scheduler: str = 'cosine'
    step_epochs: float = 30
    step_gamma: float = 0.1
    warmup_epochs: float = 1.
    grad_accum_steps: int = 1
    clip_grad: Optional[float] = None
    mixed_precision: str = 'no'
    cpu: bool = False
    channels_last: bool = False
    start_stage: int = 0
    stage_epochs: List[float] = field(default_factory=list)  # per stage (one value: every stage); [] = the model's
    seed: int = 0
    max_steps: Optional[int] = None
    # output, checkpoints and logging
    output_dir: str = 'output/run'
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: Optional[str] = None
    log_with: List[str] = field(default_factory=list)
    eval_every: int = 1

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The `train:` section of a hub config (or a whole flat YAML of TrainConfig fields)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    section = data.get('train', data)
    unknown = set(section) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f'Unknown training field(s) {sorted(unknown)} in {path}.')
    return section


def _str2bool(value: str) -> bool:
    if value.lower() in ('1', 'true', 'yes', 'y', 'on'):
        return True
    if value.lower() in ('0', 'false', 'no', 'n', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean, got {value!r}')


def _optional(cast):
    def parse(value: str):
        return None if value.lower() in ('none', 'null', '') else cast(value)
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train a timm-fgvc method (or any timm model, the baseline) with Accelerate.')
    parser.add_argument('--config', help='YAML file with training fields (e.g. hub_configs/<model>.yaml).')
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        hint = hints[f.name]
        optional = get_origin(hint) is Union and type(None) in get_args(hint)
        base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
        if base is bool:
            parser.add_argument(flag, type=_str2bool, nargs='?', const=True, default=None)
        elif get_origin(base) in (dict, Dict):
            parser.add_argument(flag, type=json.loads, default=None, help='JSON object')
        elif get_origin(base) in (list, List):
            parser.add_argument(flag, nargs='*', type=(get_args(base) or (str,))[0], default=None)
        else:
            parser.add_argument(flag, type=_optional(base) if optional else base, default=None)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    values: Dict[str, Any] = {}
    config_path = args.pop('config')
    if config_path:
        values.update(load_yaml_config(config_path))
    values.update({k: v for k, v in args.items() if v is not None})
    return TrainConfig(**values)
