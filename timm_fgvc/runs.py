"""Reading a `train_fgvc.py` run folder (results.json + model.safetensors): checked, with clear errors.

Below `hub` and `cards` (both read runs) and above nothing of theirs, so neither imports the other for it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

__all__ = ['read_run', 'read_unfinished_run', 'run_device', 'run_data_config', 'run_train_config', 'run_held_out',
           'RUNTIME_MODEL_ARGS', 'run_model_args', 'run_create_args']

_RESULTS_KEYS = ('model', 'num_classes')

# factory kwargs that act when the model is built, not what the weights are: never replayed by a Hub load
# (`pretrained_backbone=True` would download the backbone's ImageNet weights under the fine-tuned ones)
RUNTIME_MODEL_ARGS = ('pretrained_backbone', 'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay',
                      'pretrained_strict', 'checkpoint_path', 'cache_dir')


def run_model_args(run: Dict[str, Any]) -> Dict[str, Any]:
    """`timm.create_model` kwargs that rebuild a run's model: every constructor argument it recorded (`init_args`,
    so a default changed since cannot change it; runs before it was recorded rebuild with today's defaults) under
    the run's `model_args`, without the arguments that only load weights."""
    args = {**(run.get('init_args') or {}), **(run.get('model_args') or {})}
    return {k: v for k, v in args.items() if k not in RUNTIME_MODEL_ARGS}


def run_create_args(run: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The `timm.create_model` name and kwargs (with pretrained=False) that rebuild a run's model for its weights.
    A model fine-tuned from `hf-hub:` / `local-dir:` is rebuilt from what the run recorded of that source
    (`source_config`), so the source need not be reachable (offline, or the folder moved)."""
    source = run.get('source_config')
    if not source:
        return run['model'], run_model_args(run)
    pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in source['pretrained_cfg'].items()}
    return source['architecture'], {**source['model_args'], **run_model_args(run), 'pretrained_cfg': pretrained_cfg}


def run_held_out(results: Dict[str, Any]) -> bool:
    """The run evaluated a held-out part of its training split (no eval split), not a split of its own."""
    data = results.get('data') or {}
    return bool(data.get('eval_held_out') or 'held out' in str(data.get('eval_split')))  # older runs: the name only


def read_run(run_dir: Union[str, Path], weights: bool = True) -> Dict[str, Any]:
    """A training run's results.json (checked), with clear errors for a missing or damaged run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f'No training run folder at {run_dir}.')
    results_path = run_dir / 'results.json'
    if not results_path.is_file():
        raise FileNotFoundError(f'Run folder {run_dir} has no results.json; train_fgvc.py writes it (with '
                                'model.safetensors) when training finishes. Is the run complete?')
    if weights and not (run_dir / 'model.safetensors').is_file():
        raise FileNotFoundError(f'Run folder {run_dir} has no model.safetensors (the final weights written by '
                                'train_fgvc.py). Is the run complete?')
    try:
        results = json.loads(results_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{results_path} is not valid JSON ({e}); the run folder is damaged.') from e
    if not isinstance(results, dict):
        raise ValueError(f'{results_path} does not hold a results object.')
    missing = [k for k in _RESULTS_KEYS if k not in results]
    if missing:
        raise ValueError(f'{results_path} lacks {missing}; it was not written by train_fgvc.py.')
    return results


def read_unfinished_run(checkpoint_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """For a step checkpoint of a run that did not finish (`<run>/checkpoints/step_N`, no results.json): what
    results.json would say of its model, from the run's `run_config.json` and the checkpoint's record of the data
    (model, model arguments, classes and names, the configuration); None when either is missing."""
    from .engine.checkpoint import CHECKPOINT_INFO, RUN_CONFIG
    from .engine.trainer import model_kwargs
    checkpoint_dir = Path(checkpoint_dir)
    run_dir = checkpoint_dir.parent.parent
    if checkpoint_dir.parent.name != 'checkpoints':
        return None
    try:
        config = json.loads((run_dir / RUN_CONFIG).read_text())['full_config']
        classes = json.loads((checkpoint_dir / CHECKPOINT_INFO).read_text())['data']['classes']
    except (OSError, ValueError, KeyError, TypeError):
        return None
    results = {'model': config['model'], 'num_classes': len(classes), 'label_names': classes, 'config': config,
               'unfinished': True}
    results['model_args'] = model_kwargs(run_train_config(results))
    return results


def run_device(results: Dict[str, Any]) -> str:
    """'cpu', 'cuda:0 x2 processes', ...: where a run was measured."""
    device, processes = str(results.get('device') or 'unknown device'), int(results.get('num_processes') or 1)
    return device + (f' x{processes} processes' if processes > 1 else '')


def run_data_config(results: Dict[str, Any]) -> Dict[str, Any]:
    """The preprocessing of a run (its eval transform), as a timm data config."""
    data = results.get('data_config') or {}
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
           if k in ('input_size', 'crop_pct', 'crop_mode', 'mean', 'std', 'interpolation')}
    test_size = (results.get('config') or {}).get('test_img_size')
    if test_size:
        channels = out.get('input_size', (3,))[0]
        out['test_input_size'] = (channels, test_size, test_size)
    return out


def run_train_config(results: Dict[str, Any]):
    """The run's `TrainConfig` (fields this version does not know are dropped; missing ones take defaults)."""
    from .engine.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in (results.get('config') or {}).items() if k in known})
