"""Training configuration: one typed dataclass, YAML files (hub_configs/*.yaml `train:` section), CLI overrides.

Every field is a `--flag` (underscores become dashes) whose `--help` line is the field's doc; a YAML file given
with `--config` sets defaults and flags given on the command line override it. Every value is cast to its
field's type and checked when it is set (YAML's `lr: 1e-3` is a string to PyYAML; `augment: "no"` means False),
and a bad value is an error that names the field.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ['TrainConfig', 'parse_args', 'load_yaml_config', 'build_parser', 'config_differences',
           'NOT_FINGERPRINTED']

# fields that say how to run, not what the run is: they may change between a run and its resumption
NOT_FINGERPRINTED = ('output_dir', 'resume', 'overwrite', 'verbose', 'check_images', 'skip_bad_images', 'max_steps',
                     'checkpoint_every', 'keep_checkpoints', 'eval_every', 'eval_batch_size', 'log_with',
                     'num_workers', 'cpu')


def _arg(default: Any, doc: str, check: Optional[Callable[[Any], bool]] = None, rule: str = '',
         choices: Optional[tuple] = None):
    """A field with its `--help` text and an optional check (`rule` says what it requires)."""
    metadata = {'doc': doc, 'check': check, 'rule': rule, 'choices': choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(v) -> bool:
    return v is None or v > 0


def _non_negative(v) -> bool:
    return v is None or v >= 0


@dataclass
class TrainConfig:
    """Defaults train S3N-tiny from scratch on the synthetic set (the README's main job); the paper recipes
    live in hub_configs/*.yaml."""
    # model
    model: str = _arg('s3n_tiny', 'timm model name: a timm-fgvc method (s3n_resnet50, ...) or any timm model '
                      '(the baseline)')
    pretrained: bool = _arg(False, "load the model's own pretrained weights through timm (needs the Hub)")
    pretrained_backbone: bool = _arg(False, "a method's backbone(s) start from timm's ImageNet weights (needs the Hub)")
    pretrained_path: Optional[str] = _arg(None, "a plain timm model's weights (local .safetensors/.pth) for the "
                                          "backbone(s) of a method or the baseline; or a trained method's weights "
                                          '(file, exported folder or checkpoint) for the same method: all but a '
                                          'classifier of another size')
    output_stride: Optional[int] = _arg(None, "dilate the backbone's last stage to this stride (e.g. 16)",
                                        _positive, 'a positive integer')
    model_args: Dict[str, Any] = _arg({}, 'extra timm.create_model arguments, a JSON object (e.g. \'{"backbone": '
                                      '"resnet34"}\')')
    initial_checkpoint: Optional[str] = _arg(None, 'weights to start from: a .safetensors/.pth file, an exported '
                                             'folder or a checkpoints/step_* folder of a run')
    # data
    dataset: str = _arg('synthetic', "Hub dataset id, local image folder, save_to_disk folder, parquet folder, or "
                        "'synthetic' (the embedded set)")
    dataset_config: Optional[str] = _arg(None, 'configuration name of a Hub dataset')
    train_split: str = _arg('train', 'split to train on')
    eval_split: Optional[str] = _arg(None, 'split to evaluate on (default: test/validation/val when present, else a '
                                     'held-out part of the train split)')
    image_column: Optional[str] = _arg(None, 'image column (default: detected)')
    label_column: Optional[str] = _arg(None, 'label column (default: detected)')
    eval_fraction: float = _arg(0.2, 'held-out share of train when the dataset has no eval split',
                                lambda v: 0 <= v < 1, 'in [0, 1)')
    shots: Optional[int] = _arg(None, 'few-shot protocol: k training images per class, drawn with --seed',
                                _positive, 'a positive integer')
    max_train_samples: Optional[int] = _arg(None, 'use at most this many training images', _positive,
                                            'a positive integer')
    max_eval_samples: Optional[int] = _arg(None, 'evaluate on at most this many images', _positive,
                                           'a positive integer')
    synthetic_classes: int = _arg(10, 'classes of the synthetic set', lambda v: v >= 2, 'at least 2')
    synthetic_train_per_class: int = _arg(100, 'training images per class of the synthetic set', _positive,
                                          'a positive integer')
    synthetic_test_per_class: int = _arg(20, 'test images per class of the synthetic set', _non_negative,
                                         'zero or more')
    synthetic_image_size: int = _arg(96, 'side of the synthetic images (px)', lambda v: v >= 16, 'at least 16')
    img_size: Optional[int] = _arg(None, "training input size (px); default: the model's pretrained_cfg (the "
                                   "synthetic set: its own size)", _positive, 'a positive integer')
    test_img_size: Optional[int] = _arg(None, 'evaluation input size (px); default: --img-size', _positive,
                                        'a positive integer')
    crop_pct: Optional[float] = _arg(None, "resize to size / crop_pct, then crop; default: the model's",
                                     lambda v: v is None or 0 < v <= 2, 'in (0, 2]')
    augment: bool = _arg(True, 'random crop and flip while training')
    check_images: bool = _arg(True, 'check every image file when the dataset is loaded (fast header check)')
    skip_bad_images: bool = _arg(False, 'leave unreadable images out (counted in results.json) instead of stopping')
    num_workers: int = _arg(0, 'data loader worker processes', _non_negative, 'zero or more')
    # optimisation
    epochs: int = _arg(8, 'training epochs (per stage, unless the model or --stage-epochs says otherwise)',
                       _positive, 'at least 1 (to evaluate a trained model without training, use `timm-fgvc eval`)')
    batch_size: int = _arg(32, 'images per step and process', _positive, 'a positive integer')
    eval_batch_size: Optional[int] = _arg(None, 'images per evaluation batch (default: --batch-size)', _positive,
                                          'a positive integer')
    optimizer: str = _arg('adamw', 'optimizer of every parameter group', choices=('sgd', 'adamw'))
    lr: float = _arg(3e-3, 'learning rate of the new (method) parameters', _positive, 'positive')
    backbone_lr: Optional[float] = _arg(None, 'learning rate of the backbone (default: lr / 10 with pretrained '
                                        'weights, lr from scratch)', _non_negative, 'zero or more')
    momentum: float = _arg(0.9, 'SGD momentum', lambda v: 0 <= v < 1, 'in [0, 1)')
    weight_decay: float = _arg(0.05, 'weight decay', _non_negative, 'zero or more')
    scheduler: str = _arg('cosine', 'learning-rate schedule within each stage',
                          choices=('cosine', 'step', 'none', 'constant'))
    step_epochs: float = _arg(30, "epochs between lr drops of the 'step' schedule", _positive, 'positive')
    step_gamma: float = _arg(0.1, "lr factor at each drop of the 'step' schedule", _positive, 'positive')
    warmup_epochs: float = _arg(1., 'linear warm-up at the start of each stage, in epochs', _non_negative,
                                'zero or more')
    label_smoothing: float = _arg(0., "cross-entropy label smoothing (a plain model's head, and every head of a "
                                  'method that its recipe does not set)', lambda v: 0 <= v < 1, 'in [0, 1)')
    grad_accum_steps: int = _arg(1, 'batches accumulated per optimizer step', _positive, 'a positive integer')
    clip_grad: Optional[float] = _arg(None, 'clip the gradient norm to this value', _positive, 'positive')
    mixed_precision: str = _arg('no', 'Accelerate mixed precision (fp16 needs a GPU; on a CPU bf16 pays only '
                                'with AMX: resnet18 step 3x faster than fp32 with it, 1.4x slower without)',
                                choices=('no', 'fp16', 'bf16', 'fp8'))
    cpu: bool = _arg(False, 'train on the CPU even when a GPU is present')
    channels_last: bool = _arg(False, 'channels-last memory format')
    start_stage: int = _arg(0, "start at this training stage (HSM, CAA, SSANet train in stages)", _non_negative,
                            'zero or more')
    stage_epochs: List[float] = _arg([], "epochs of each stage (one value: every stage); default: the model's "
                                     '(the paper\'s) stage epochs', lambda v: all(e > 0 for e in v),
                                     'positive values')
    seed: int = _arg(0, 'random seed (model init, data order, augmentation, few-shot draw)')
    max_steps: Optional[int] = _arg(None, 'stop after this many optimizer steps', _positive, 'a positive integer')
    # output, checkpoints and logging
    output_dir: str = _arg('output/run', 'folder of this run: checkpoints, results.json, model.safetensors, '
                           'curves.png (one folder, one run)')
    overwrite: bool = _arg(False, "replace another run's outputs in --output-dir")
    checkpoint_every: int = _arg(0, 'also save a checkpoint every N steps (one is saved after every epoch)',
                                 _non_negative, 'zero or more')
    keep_checkpoints: int = _arg(2, 'keep the newest N checkpoints (0: all)', _non_negative, 'zero or more')
    resume: Optional[str] = _arg(None, "'latest' (the newest complete checkpoint in --output-dir) or a checkpoint "
                                 'folder')
    log_with: List[str] = _arg([], 'Accelerate trackers, e.g. tensorboard wandb')
    eval_every: int = _arg(1, 'evaluate every N epochs (and always at the end)', _positive, 'a positive integer')
    verbose: bool = _arg(False, 'show INFO logs (Accelerate, datasets) and every progress bar')

    def __setattr__(self, name: str, value: Any) -> None:
        spec = _FIELDS.get(name)
        if spec is None:
            raise AttributeError(f'TrainConfig has no field {name!r}.')
        super().__setattr__(name, _validate(spec, value))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprinted(self) -> Dict[str, Any]:
        """The fields that define the run (what a checkpoint must match to be resumed), JSON-normalised."""
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k not in NOT_FINGERPRINTED},
                                     sort_keys=True))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprinted(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _FieldSpec:
    name: str
    hint: Any
    optional: bool
    base: Any
    check: Optional[Callable]
    rule: str
    choices: Optional[tuple]


def _make_specs() -> Dict[str, _FieldSpec]:
    hints = get_type_hints(TrainConfig)
    specs = {}
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        optional = get_origin(hint) is Union and type(None) in get_args(hint)
        base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
        specs[f.name] = _FieldSpec(f.name, hint, optional, base, f.metadata.get('check'), f.metadata.get('rule', ''),
                                   f.metadata.get('choices'))
    return specs


_TRUE = ('1', 'true', 'yes', 'y', 'on')
_FALSE = ('0', 'false', 'no', 'n', 'off')
_NONE = ('none', 'null', '~', '')


class _CastError(ValueError):
    pass


def _cast(base: Any, value: Any) -> Any:
    if base is Any:
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _CastError('a boolean (true/false, yes/no, 1/0)')
    if base is int:
        if isinstance(value, bool):
            raise _CastError('an integer')
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    raise _CastError('an integer') from None
                if number.is_integer():
                    return int(number)
        raise _CastError('an integer')
    if base is float:
        if isinstance(value, bool):
            raise _CastError('a number')
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _CastError('a number')
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, Path):
            return str(value)
        raise _CastError('a string')
    origin = get_origin(base)
    if origin in (list, List):
        item = (get_args(base) or (Any,))[0]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_cast(item, v) for v in items]
    if origin in (dict, Dict):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise _CastError('a JSON object') from None
        if isinstance(value, dict):
            return dict(value)
        raise _CastError('a mapping (a JSON object)')
    raise _CastError(f'a {base}')  # a field type this module does not know how to cast


def _validate(spec: _FieldSpec, value: Any) -> Any:
    flag = '--' + spec.name.replace('_', '-')
    where = f'TrainConfig field {spec.name!r} ({flag})'
    if spec.optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    if value is None and get_origin(spec.base) in (list, List, dict, Dict):
        return [] if get_origin(spec.base) in (list, List) else {}  # YAML `field:` (null) means empty
    if value is None:
        raise ValueError(f'{where} cannot be None.')
    try:
        value = _cast(spec.base, value)
    except _CastError as e:
        raise ValueError(f'{where}: expected {e}, got {value!r} ({type(value).__name__}).') from None
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f'{where}: {value!r} is not one of {", ".join(map(repr, spec.choices))}.')
    if spec.check is not None and not spec.check(value):
        raise ValueError(f'{where} must be {spec.rule}; got {value!r}.')
    return value


_FIELDS = _make_specs()


def config_differences(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """`field: stored -> current` for every field whose value differs (a field one side lacks counts as its
    default, so a field added to TrainConfig later does not make old checkpoints foreign)."""
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    lines = []
    for key in sorted(set(stored) | set(current)):
        if key in NOT_FINGERPRINTED:
            continue
        a, b = stored.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if a != b:
            lines.append(f'{key}: {a!r} there, {b!r} here')
    return lines


def load_yaml_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The `train:` section of a hub config (or a whole flat YAML of TrainConfig fields)."""
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f'{path} is not valid YAML: {e}') from e
    if not isinstance(data, dict):
        raise ValueError(f'{path} holds a {type(data).__name__}; it should map training fields to values '
                         '(`lr: 0.01`), at the top level or under `train:`.')
    section = data.get('train', data)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: `train:` should map training fields to values (`lr: 0.01`), got {section!r}.")
    if 'train' in data:  # a hub config: its other sections are known; a training field outside `train:` is a slip
        stray = sorted(set(data) & {f.name for f in dataclasses.fields(TrainConfig)} - {'model', 'dataset'})
        if stray:
            raise ValueError(f'{path}: {stray} outside `train:` would be ignored; indent them under `train:`.')
    unknown = set(section) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f'Unknown training field(s) {sorted(unknown)} in {path}.')
    return section


def _str2bool(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean, got {value!r}')


def _optional(cast):
    def parse(value: str):
        return None if value.lower() in _NONE else cast(value)
    parse.__name__ = getattr(cast, '__name__', 'value')  # argparse names the type in its errors
    return parse


def _help(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    doc = f.metadata.get('doc', '')
    choices = f.metadata.get('choices')
    if choices:
        doc += f' ({" | ".join(choices)})'
    if 'default:' not in doc:  # a doc that explains its default itself keeps that
        doc += f' (default: {default!r})'
    return doc.replace('%', '%%')


_METAVARS = {int: 'N', float: 'X', str: 'STR'}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train a timm-fgvc method (or any timm model, the baseline) with Accelerate.',
        epilog='Every flag is a TrainConfig field (timm_fgvc.engine.config); a YAML file given with --config sets '
               'them too, and flags on the command line win.')
    parser.add_argument('--config', default=None,
                        help='YAML file with training fields (e.g. hub_configs/<model>.yaml).')
    for f in dataclasses.fields(TrainConfig):
        spec = _FIELDS[f.name]
        flag = '--' + f.name.replace('_', '-')
        base = spec.base
        help_text = _help(f)
        if base is bool:
            parser.add_argument(flag, type=_str2bool, nargs='?', const=True, default=argparse.SUPPRESS,
                                metavar='BOOL', help=help_text)
        elif get_origin(base) in (dict, Dict):
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, metavar='JSON', help=help_text)
        elif get_origin(base) in (list, List):
            item = (get_args(base) or (str,))[0]
            parser.add_argument(flag, nargs='*', type=item, default=argparse.SUPPRESS,
                                metavar=_METAVARS.get(item, 'VALUE'), help=help_text)
        else:
            parser.add_argument(flag, type=_optional(base) if spec.optional else base, default=argparse.SUPPRESS,
                                metavar=_METAVARS.get(base, 'VALUE'), help=help_text)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    values: Dict[str, Any] = {}
    config_path = args.pop('config')
    if config_path:
        values.update(load_yaml_config(config_path))
    values.update(args)  # only the flags given (an explicit `none` overrides the file's value)
    return TrainConfig(**values)
