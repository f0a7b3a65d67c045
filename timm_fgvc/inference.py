"""Load a trained model for use (predict, eval, explain): the weights, its class names and its eval transform.

    loaded = load_model('s3n_tiny', checkpoint='output/run/model.safetensors')   # a train_fgvc.py run
    loaded = load_model('hf-hub:timm-fgvc/s3n_resnet50.cub200')                   # a published model
    loaded = load_model('local-dir:export/s3n_resnet50.cub200')                   # an exported folder

A checkpoint inside a run folder brings the run's `results.json`: the number of classes, the model arguments,
the class names and the preprocessing the run evaluated with (so `--model` may be left out). A Hub or exported
model carries the same in its `config.json` (`label_names`, `pretrained_cfg`), and its run's data
(`training_data`: which images the run held out for evaluation).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import create_transform, resolve_data_config

from . import models  # noqa: F401  (registers the methods with timm)
from .engine.checkpoint import load_weights
from .models._builder import create_model_or_explain
from .runs import read_run, read_unfinished_run, run_create_args, run_train_config

__all__ = ['LoadedModel', 'load_model', 'eval_transform', 'resolve_device']

_HUB_PREFIXES = ('hf-hub:', 'local-dir:')


@dataclass
class LoadedModel:
    """A model in eval mode with what is needed to use it."""
    model: nn.Module
    name: str
    label_names: Optional[List[str]] = None
    run: Optional[Dict[str, Any]] = None  # results.json of the run the weights come from
    checkpoint: Optional[str] = None
    training_data: Optional[Dict[str, Any]] = None  # an export's record of its run's data (`run_training_data`)

    @property
    def final_weights(self) -> bool:
        """The weights are their run's final ones (its results.json beside them), not a step checkpoint's."""
        return (self.run is not None and self.checkpoint is not None
                and _run_folder(Path(self.checkpoint)) == Path(self.checkpoint).parent)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def label(self, index: int) -> str:
        """The class name of `index` (the index itself when the model has no names)."""
        names = self.label_names
        return str(names[index]) if names and 0 <= index < len(names) else str(index)


def resolve_device(device: Optional[str] = None) -> torch.device:
    """`device`, or CUDA when there is one, else the CPU; a CUDA device without CUDA is a clear error."""
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except RuntimeError as e:  # torch lists every device type it knows
        raise ValueError(f"--device {device!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'.") from e
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: this machine has no CUDA device; use --device cpu.')
    return dev


def load_model(name: Optional[str] = None, checkpoint: Optional[Union[str, Path]] = None,
               num_classes: Optional[int] = None, model_args: Optional[Dict[str, Any]] = None,
               device: Optional[str] = None) -> LoadedModel:
    """Build `name` (a registered model, `hf-hub:<repo>` or `local-dir:<folder>`) with `checkpoint`'s weights.

    `checkpoint` may be a weights file or a run folder; a `results.json` beside the weights gives the defaults
    (model name, classes, model arguments, class names). Returns the model in eval mode on `device`.
    """
    run, weights = None, None
    folder = Path(name[len('local-dir:'):]) if name and name.startswith('local-dir:') else None
    if folder is not None and not (folder / 'config.json').is_file() and (folder / 'results.json').is_file():
        raise ValueError(f'{folder} is a training run folder, not an export: load it with --checkpoint {folder} '
                         '(Python: checkpoint=...), or export it first (timm-fgvc export).')
    if checkpoint is not None:
        weights = Path(checkpoint)
        if weights.is_dir():
            weights = weights / 'model.safetensors'
        if not weights.is_file():
            raise FileNotFoundError(f'No checkpoint at {checkpoint} (a model.safetensors file or a run folder).')
        run_dir = _run_folder(weights)
        if run_dir is not None:
            run = read_run(run_dir, weights=False)
        else:  # a step checkpoint of a run killed before it finished
            run = read_unfinished_run(weights.parent)
            if run is not None:
                warnings.warn(f'{weights.parent.name} of an unfinished run ({weights.parent.parent.parent}): its '
                              'model, classes and preprocessing come from run_config.json and the checkpoint.',
                              stacklevel=2)
    if name is None:
        if run is None:
            raise ValueError('Give --model (a registered name, hf-hub:<repo> or local-dir:<folder>), or a '
                             '--checkpoint inside a train_fgvc.py run folder (with its results.json).')
        name = _architecture(run['model'])
    elif run is not None and _architecture(name) != _architecture(run['model']):
        raise ValueError(f"--model {name} but the checkpoint's run trained {run['model']}: leave --model out to "
                         'load the run as it was trained, or give the checkpoint of a run of this model.')
    elif weights is not None and run is None and not name.startswith(_HUB_PREFIXES):
        warnings.warn(f'No results.json beside {weights} (nor in its run folder): {name} is built with its default '
                      'arguments and preprocessing and without class names. Give the run folder, or --model-args '
                      'and --num-classes as the run had them.', stacklevel=2)
    # with weights to load, no Hub weights are fetched; a run fine-tuned from the Hub is rebuilt without it
    build_name, kwargs = run_create_args(run) if run is not None else (name, {})
    if not (run or {}).get('source_config'):
        build_name = name  # as given: a tag picks its pretrained_cfg
    kwargs.update(model_args or {})
    if num_classes is None and run is not None:
        num_classes = int(run['num_classes'])
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    from_export = weights is None and name.startswith(_HUB_PREFIXES)
    model = create_model_or_explain(build_name, shown_as=name, pretrained=from_export, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    label_names = (run or {}).get('label_names') or (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if label_names is not None and len(label_names) != model.num_classes:
        label_names = None  # names of another head (e.g. before reset_classifier): show indices instead
    model.to(resolve_device(device)).eval()
    return LoadedModel(model=model, name=name, label_names=list(label_names) if label_names else None, run=run,
                       checkpoint=str(weights) if weights else None,
                       training_data=_export_config(name).get('training_data') if from_export else None)


def _export_config(name: str) -> Dict[str, Any]:
    """The config.json of `local-dir:<folder>` or `hf-hub:<repo>[@revision]`, which timm has just read (from the
    cache for the Hub, so this works offline)."""
    if name.startswith('local-dir:'):
        path = Path(name[len('local-dir:'):]) / 'config.json'
    else:
        from huggingface_hub import hf_hub_download
        repo, _, revision = name[len('hf-hub:'):].partition('@')
        path = Path(hf_hub_download(repo, 'config.json', revision=revision or None))
    return json.loads(path.read_text())


def _architecture(name: str) -> str:
    """A registered name without its pretrained tag (the tag names the dataset); Hub and folder names whole."""
    return name if ':' in name else name.split('.')[0]


def _run_folder(weights: Path) -> Optional[Path]:
    """The finished run whose `results.json` describes `weights`: beside them, or two folders up for a step
    checkpoint (`<run>/checkpoints/step_N/model.safetensors`)."""
    if (weights.parent / 'results.json').is_file():
        return weights.parent
    run_dir = weights.parent.parent.parent
    if weights.parent.parent.name == 'checkpoints' and (run_dir / 'results.json').is_file():
        return run_dir
    return None


def eval_transform(loaded: LoadedModel, img_size: Optional[int] = None) -> Tuple[Callable, Dict[str, Any]]:
    """(transform, data config): the eval transform the run used (timm's, from the model's `pretrained_cfg` with
    the run's size overrides, via `build_transforms`), or the model's own when it has no run."""
    if loaded.run is not None:
        from .engine.trainer import build_transforms, eval_data_config
        cfg = run_train_config(loaded.run)
        if img_size:
            cfg.img_size, cfg.test_img_size = img_size, None
        _, transform, data_cfg = build_transforms(loaded.model, cfg)
        return transform, eval_data_config(data_cfg, cfg)  # the size the transform gives, not training's
    overrides = {'input_size': (3, img_size, img_size)} if img_size else {}
    # an exported model's test size (`test_input_size`) is the size its run evaluated at
    data_cfg = resolve_data_config(overrides, model=loaded.model, use_test_size=not img_size)
    return create_transform(**data_cfg, is_training=False), data_cfg
