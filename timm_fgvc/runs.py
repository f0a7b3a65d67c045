"""Reading a `train_fgvc.py` run folder (results.json + model.safetensors): checked, with clear errors.

Below `hub` and `cards` (both read runs) and above nothing of theirs, so neither imports the other for it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

__all__ = ['read_run', 'read_unfinished_run', 'run_device', 'run_data_config', 'run_train_config', 'run_held_out']

_RESULTS_KEYS = ('model', 'num_classes')


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
