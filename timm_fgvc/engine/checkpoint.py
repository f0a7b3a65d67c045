"""Checkpoints and run folders: safe weight loading, atomic saves, damaged-checkpoint fallback, one run per folder.

A checkpoint is Accelerate's `save_state` folder written under a temporary name and renamed to `step_<N>` only
when complete, with a `checkpoint.json` manifest (size and sha256 of every file, the step, and the run's
configuration) and the engine's own state (step counter, history, lr schedule) as JSON in `training_state.json`:
nothing in a checkpoint is unpickled beyond what `torch.load(weights_only=True)` allows. `latest` is the newest
checkpoint whose manifest holds; a damaged one is named and skipped.
An output folder holds one run: `run_config.json` records its configuration, and another configuration is
refused there unless `--overwrite` is given.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from accelerate.utils import load as accelerate_load

from ..models._weights import classifier_names, model_state, read_state_dict
from .config import TrainConfig, config_differences

__all__ = ['sha256_file', 'read_state_dict', 'load_weights', 'save_checkpoint', 'list_checkpoints',
           'checkpoint_problems', 'find_checkpoint', 'check_checkpoint_config', 'check_output_dir', 'clear_run_outputs',
           'write_run_config', 'rng_restore_problem', 'data_signature', 'read_training_state',
           'accelerate_state_folder', 'run_folder_lock', 'check_resume_steps', 'check_checkpoint_weights',
           'CHECKPOINT_INFO',
           'RUN_CONFIG', 'TRAINING_STATE']

CHECKPOINT_INFO = 'checkpoint.json'
TRAINING_STATE = 'training_state.json'
# where checkpoints before `training_state.json` kept the lr scheduler's and the step counter's state dicts (Accelerate
# `register_for_checkpointing`, which unpickles them with weights_only=False)
_LEGACY_STATE_FILES = {'scheduler': 'custom_checkpoint_0.pkl', 'train_state': 'custom_checkpoint_1.pkl'}
RUN_CONFIG = 'run_config.json'
LOCK_FILE = '.timm_fgvc.lock'  # held by the process training in the folder (`run_folder_lock`)
_TMP_PREFIX = '.tmp_step_'
# what a run writes into its output folder (`--overwrite` removes exactly these)
_RUN_OUTPUTS = ('checkpoints', 'results.json', 'model.safetensors', 'curves.png', RUN_CONFIG, 'logs')
_RNG_PREFIX = 'random_states_'


# --- weights ------------------------------------------------------------------------------------------
def load_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """Load a state dict into `model`; a head-size mismatch says which num_classes the file was made for.

    `path` may be a weights file, an exported folder, or a run's `checkpoints/step_*` folder (whose keys carry the
    training wrapper's `model.` prefix).
    """
    check_checkpoint_weights(path)
    state = model_state(read_state_dict(path), model)  # a train_fgvc.py checkpoint: TrainStep.model's keys
    own = model.state_dict()
    heads = classifier_names(model)
    for name, tensor in state.items():
        if name not in own or own[name].shape == tensor.shape:
            continue
        if any(name.startswith(h + '.') for h in heads):
            raise ValueError(f'Checkpoint {path} was trained for {tensor.shape[0]} classes but the model has '
                             f'{own[name].shape[0]} (tensor {name}). Build the model with '
                             f'num_classes={tensor.shape[0]}, or load it first and call reset_classifier().')
        raise ValueError(f'Checkpoint {path} does not fit this model: {name} is {tuple(tensor.shape)} in the '
                         f'file and {tuple(own[name].shape)} in the model. Was it made for another architecture?')
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f'Checkpoint {path} does not match the model: missing {missing[:5]}, unexpected '
                         f'{unexpected[:5]}. Was it made for another architecture or backbone?')


# --- saving -------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """The file's SHA-256 hex digest, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: Path) -> Optional[int]:
    try:
        return int(path.name[len('step_'):]) if path.name.startswith('step_') else None
    except ValueError:
        return None


def list_checkpoints(output_dir: Union[str, Path]) -> List[Path]:
    """`checkpoints/step_*` folders of a run, oldest first (by step number; temporary folders excluded)."""
    folder = Path(output_dir) / 'checkpoints'
    found = [p for p in folder.glob('step_*') if p.is_dir() and checkpoint_step(p) is not None] \
        if folder.is_dir() else []
    return sorted(found, key=checkpoint_step)


def save_checkpoint(accelerator, output_dir: Union[str, Path], step: int, cfg: TrainConfig, keep: int,
                    data: Optional[dict] = None, training_state: Optional[dict] = None) -> Path:
    """`accelerator.save_state` into a temporary folder, `training_state` (JSON: the engine's counters and lr
    schedule, `read_training_state`), a manifest, then an atomic rename to `step_<step>`; the
    oldest checkpoints beyond `keep` are removed, and so are checkpoints of later steps (left by a trajectory the run
    went back from: a resume from an older or fallback checkpoint), so `latest` is always this trajectory's newest.
    `data` (`data_signature`) is recorded so that a resume can tell the data changed. Every process calls this (each
    saves its own RNG state)."""
    folder = Path(output_dir) / 'checkpoints'
    final = folder / f'step_{step:08d}'
    tmp = folder / f'{_TMP_PREFIX}{step:08d}'
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if training_state is not None:
            (tmp / TRAINING_STATE).write_text(json.dumps(training_state))
        files = {}
        for path in sorted(p for p in tmp.iterdir() if p.is_file()):
            _fsync(path)
            files[path.name] = {'bytes': path.stat().st_size, 'sha256': sha256_file(path)}
        info = {'step': step, 'num_processes': accelerator.num_processes, 'fingerprint': cfg.fingerprint(),
                'config': cfg.fingerprinted(), 'data': data, 'files': files}
        (tmp / CHECKPOINT_INFO).write_text(json.dumps(info, indent=1))
        _fsync(tmp / CHECKPOINT_INFO)
        if final.exists():  # a damaged or stale checkpoint of the same step (a resume went back past it)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for abandoned in list_checkpoints(output_dir):  # later steps of a trajectory this run went back from
            if checkpoint_step(abandoned) > step:
                shutil.rmtree(abandoned, ignore_errors=True)
        if keep > 0:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --- checking and choosing a checkpoint -----------------------------------------------------------------
def _read_info(path: Path) -> Optional[dict]:
    try:
        info = json.loads((path / CHECKPOINT_INFO).read_text())
        return info if isinstance(info, dict) and isinstance(info.get('files'), dict) else None
    except (OSError, ValueError):
        return None


def checkpoint_problems(path: Union[str, Path], only: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """`{file name: what is wrong}` for a checkpoint folder (of the files named in `only`, else all); empty when
    every file is as it was saved."""
    path = Path(path)
    if not path.is_dir():
        return {str(path): 'no such checkpoint folder'}
    info = _read_info(path)
    if info is None:
        return {CHECKPOINT_INFO: 'missing or unreadable: the save did not finish (or the checkpoint was written '
                                 'before timm-fgvc saved checkpoints atomically)'}
    problems = {}
    for name, expected in info['files'].items():
        file = path / name
        if only is not None and name not in only:
            continue
        if not file.is_file():
            problems[name] = 'missing'
        elif file.stat().st_size != expected['bytes']:
            problems[name] = f'{file.stat().st_size} bytes, {expected["bytes"]} when saved (truncated or damaged)'
        elif sha256_file(file) != expected['sha256']:
            problems[name] = 'content changed since it was saved (sha256 differs)'
    return problems


def check_checkpoint_weights(path: Union[str, Path]) -> None:
    """Weights read from a run's `checkpoints/` folder (eval, predict, --initial-checkpoint) must be a checkpoint
    whose save finished, as saved (its manifest): a killed save's `.tmp_step_*` or a damaged file is refused, a
    folder without a manifest is warned of."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if folder.parent.name != 'checkpoints' or not folder.name.startswith(('step_', _TMP_PREFIX)):
        return
    def hint() -> str:  # looked for only when something is wrong: it hashes other checkpoints' weights
        complete = next((p for p in reversed(list_checkpoints(folder.parent.parent))
                         if p != folder and not checkpoint_problems(p, only=['model.safetensors'])), None)
        return f' The newest complete checkpoint there is {complete}.' if complete else ''
    if folder.name.startswith(_TMP_PREFIX):
        raise ValueError(f'{folder} is a checkpoint whose save did not finish (the run was stopped while saving): '
                         f'its weights may be partial.{hint()}')
    problems = checkpoint_problems(folder, only=['model.safetensors'])
    if CHECKPOINT_INFO in problems:  # copied by hand, or saved before checkpoints had manifests
        warnings.warn(f'{folder} has no {CHECKPOINT_INFO}: its weights cannot be checked against what was saved (a '
                      f'killed save leaves none).{hint()}', stacklevel=3)
    elif problems:
        raise ValueError(f'Cannot load the weights of damaged checkpoint {_describe(folder, problems)}.{hint()}')


def _describe(path: Path, problems: Dict[str, str]) -> str:
    return f'{path}: ' + '; '.join(f'{name} {reason}' for name, reason in problems.items())


def find_checkpoint(output_dir: Union[str, Path], resume: str) -> Tuple[Path, List[str]]:
    """The checkpoint to resume from and the warnings to show.

    `latest`: the newest complete checkpoint in `output_dir`; newer damaged ones are named in the warnings.
    A folder: that checkpoint; damage is an error, except in the random-state files only (the run resumes, and
    the warning says it will not repeat the interrupted run exactly).
    """
    output_dir = Path(output_dir)
    if resume == 'latest':
        candidates = list_checkpoints(output_dir)
        if not candidates:
            raise FileNotFoundError(f"No checkpoint to resume from at {resume!r} (looked in "
                                    f"{output_dir / 'checkpoints'}).")
        damaged = []
        for path in reversed(candidates):
            problems = checkpoint_problems(path)
            if not problems:
                notes = [f'Checkpoint {_describe(p, d)}. Resuming from the previous complete checkpoint {path} '
                         'instead.' for p, d in damaged]
                return path, notes
            damaged.append((path, problems))
        raise FileNotFoundError('No complete checkpoint to resume from in '
                                f"{output_dir / 'checkpoints'}: " + ' | '.join(_describe(p, d) for p, d in damaged)
                                + '. Start again with --overwrite.')
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f'No checkpoint to resume from at {resume!r}.')
    problems = checkpoint_problems(path)
    if problems and all(name.startswith(_RNG_PREFIX) for name in problems):
        return path, [f'Checkpoint {_describe(path, problems)}: the random state cannot be restored.']
    if problems:
        earlier = [p for p in list_checkpoints(path.parent) if p != path and not checkpoint_problems(p)]
        hint = f' The newest complete one there is {earlier[-1]}.' if earlier else ''
        raise ValueError(f'Cannot resume from damaged checkpoint {_describe(path, problems)}.{hint}')
    return path, []


def data_signature(train_labels: Sequence[int], eval_labels: Optional[Sequence[int]],
                   label_names: Sequence[str]) -> dict:
    """What a resume compares to tell the data changed: the class names, the size of each split and a hash of
    its labels in order (an image added, removed or moved between classes changes it)."""
    def digest(labels) -> str:
        return hashlib.sha256(','.join(map(str, labels)).encode()).hexdigest()[:16]
    return {'classes': list(label_names), 'train_images': len(train_labels), 'train_labels': digest(train_labels),
            'eval_images': len(eval_labels or []), 'eval_labels': digest(eval_labels or [])}


def check_checkpoint_config(path: Union[str, Path], cfg: TrainConfig, num_processes: Optional[int] = None,
                            data: Optional[dict] = None) -> None:
    """Refuse a checkpoint made by another configuration, naming what differs; also one saved by another number
    of processes (steps per epoch, the stage bounds and the data shards all depend on it), or on other data
    (`data_signature`: images added or removed since, another held-out draw)."""
    info = _read_info(Path(path)) or {}
    saved_data = info.get('data')
    if data is not None and saved_data is not None and saved_data != data:
        changed = [k for k in data if saved_data.get(k) != data[k]]
        sizes = ', '.join(f'{k} {saved_data.get(k)} there, {data[k]} here' for k in ('train_images', 'eval_images')
                          if saved_data.get(k) != data[k])
        raise ValueError(f'Checkpoint {path} was trained on other data: {changed} differ'
                         + (f' ({sizes})' if sizes else '') + '. Resuming would mix two data sets (and held-out '
                         'images could have been trained on). Restore the data as it was, or start a new run.')
    saved = info.get('num_processes')
    if num_processes is not None and saved is not None and int(saved) != num_processes:
        raise ValueError(f'Checkpoint {path} was saved by {saved} process(es) but this run has {num_processes}: its '
                         'step counter means another place in the schedule. Resume with the same number of '
                         'processes, or start a new run from its weights with --initial-checkpoint.')
    differences = config_differences(info.get('config') or {}, cfg.fingerprinted())
    if differences:
        raise ValueError(f'Checkpoint {path} belongs to another run configuration; it differs in: '
                         + '; '.join(differences) + '. Resume with the same settings, or start this run in a new '
                         '--output-dir.')


def read_training_state(path: Union[str, Path]) -> dict:
    """The engine's state saved with a checkpoint: `{'scheduler': ..., 'train_state': ...}` state dicts, from
    `training_state.json`, or from an older checkpoint's pickles read with `weights_only=True` (plain numbers and
    strings; a pickle that needs more is refused, never run)."""
    path = Path(path)
    if (path / TRAINING_STATE).is_file():
        return json.loads((path / TRAINING_STATE).read_text())
    if not all((path / name).is_file() for name in _LEGACY_STATE_FILES.values()):
        raise ValueError(f'Checkpoint {path} holds no {TRAINING_STATE} (the step counter and lr schedule): it cannot '
                         'be resumed. Start a new run from its weights with --initial-checkpoint.')
    state = {}
    for key, name in _LEGACY_STATE_FILES.items():
        try:
            state[key] = torch.load(path / name, map_location='cpu', weights_only=True)
        except Exception as e:  # torch's UnpicklingError for anything beyond plain data
            raise ValueError(f'Checkpoint {path / name} holds more than plain numbers ({type(e).__name__}); it is '
                             'not loaded (unpickling runs code). Start a new run from the checkpoint\'s weights '
                             'with --initial-checkpoint.') from e
    return state


def _link_or_copy(source: Path, target: Path) -> None:
    """A symlink, else a hard link, else a copy (Windows without symlink rights; another file system)."""
    for make in (os.symlink, os.link):
        try:
            make(source, target)
            return
        except OSError:
            continue
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)


@contextlib.contextmanager
def accelerate_state_folder(path: Union[str, Path]):
    """`path` for `accelerator.load_state`, or for an older checkpoint a temporary folder linking every file but the
    custom-state pickles: Accelerate would unpickle those with weights_only=False (`read_training_state` reads them
    safely instead)."""
    path = Path(path)
    if not any((path / name).exists() for name in _LEGACY_STATE_FILES.values()):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix='timm_fgvc_resume_') as folder:
        for file in path.iterdir():
            if file.name not in _LEGACY_STATE_FILES.values():
                _link_or_copy(file.resolve(), Path(folder) / file.name)
        yield Path(folder)


def rng_restore_problem(path: Union[str, Path], process_index: int) -> Optional[str]:
    """None when this process's RNG now holds the state saved in the checkpoint, else why it does not
    (Accelerate only logs an INFO line when it cannot load the random states)."""
    file = Path(path) / f'{_RNG_PREFIX}{process_index}.pkl'
    if not file.is_file():
        return f'{file.name} is missing (was the checkpoint saved by fewer processes?)'
    try:
        states = accelerate_load(file, map_location='cpu')  # weights_only=True with Accelerate's numpy allow-list
        saved = states['torch_manual_seed']
    except Exception as e:  # a damaged pickle raises many types
        return f'{file.name} cannot be read ({type(e).__name__}: {e})'
    if not torch.equal(torch.get_rng_state(), saved):
        return f'the torch random state differs from {file.name} after loading'
    return None


# --- one folder, one run --------------------------------------------------------------------------------
def _stored_config(output_dir: Path) -> Optional[dict]:
    """The configuration of the run already in `output_dir` (run_config.json, results.json or a checkpoint)."""
    for source, key in ((output_dir / RUN_CONFIG, 'config'), (output_dir / 'results.json', 'config')):
        try:
            return json.loads(source.read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for path in reversed(list_checkpoints(output_dir)):
        info = _read_info(path)
        if info and info.get('config'):
            return info['config']
    return None


def _holds_run(output_dir: Path) -> bool:
    return bool(list_checkpoints(output_dir)) or (output_dir / 'results.json').exists() or \
        (output_dir / 'model.safetensors').exists()


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse to mix two runs in one folder: a folder holding a run (checkpoints, results or weights) needs
    `--resume` (same configuration) or `--overwrite`; a resume checks the folder's configuration."""
    output_dir = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ValueError('--resume continues the run in --output-dir and --overwrite deletes it: give only one.')
    if cfg.overwrite or not output_dir.is_dir():
        return
    stored = _stored_config(output_dir)
    differences = config_differences(stored, cfg.fingerprinted()) if stored is not None else None
    if cfg.resume:
        if differences:
            raise ValueError(f'--output-dir {output_dir} holds a run of another configuration; it differs in: '
                             + '; '.join(differences) + '. Resume with the same settings, or use a new --output-dir.')
        return
    if not _holds_run(output_dir):
        return
    checkpoints = list_checkpoints(output_dir)
    where = f' (checkpoints up to step {checkpoint_step(checkpoints[-1])})' if checkpoints else ''
    if differences is None or differences:
        what = ('it differs in: ' + '; '.join(differences)) if differences else 'its configuration is unknown'
        raise ValueError(f'--output-dir {output_dir} already holds another run{where}; {what}. Use a new '
                         '--output-dir, or pass --overwrite to replace that run.')
    raise ValueError(f'--output-dir {output_dir} already holds a run of this configuration{where}. Pass --resume '
                     'latest to continue it, or --overwrite to start again.')


_held_lock_fds: List[int] = []  # lock descriptors of this process, closed in forked children (DataLoader workers)


def _close_held_locks_in_child() -> None:
    for fd in _held_lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


@contextlib.contextmanager
def run_folder_lock(output_dir: Union[str, Path]):
    """Hold `output_dir` for one training process: a second run started into it is refused at once (two runs would
    delete and overwrite each other's checkpoints and results). The lock goes with its process (forked workers do
    not inherit it): a killed run holds none, so its resume is not blocked. A file system without locks (some
    NFS / Lustre mounts) gets a warning and an unlocked run; so does Windows."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f'--output-dir {output_dir} is a file: name a folder (a new one, or a run\'s).')
    try:
        import fcntl
    except ImportError:  # no advisory locks on Windows
        yield
        return
    first_created = next((p for p in reversed([output_dir, *output_dir.parents]) if not p.exists()), None)
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or '?'
            raise ValueError(f'Another process (pid {holder}) is training in --output-dir {output_dir}: wait for it '
                             'to finish (its data workers may take a few seconds to exit after it), or use another '
                             '--output-dir.') from None
        except OSError as e:  # the file system cannot lock (ENOLCK, EOPNOTSUPP)
            warnings.warn(f'--output-dir {output_dir} cannot be locked ({e}): nothing stops a second run from '
                          'writing into it at the same time.', RuntimeWarning, stacklevel=3)
            locked = False
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            _held_lock_fds.append(fd)
        try:
            yield
        finally:
            if fd in _held_lock_fds:
                _held_lock_fds.remove(fd)
            if first_created is not None and [p.name for p in output_dir.iterdir()] == [LOCK_FILE]:
                with contextlib.suppress(OSError):  # refused before it wrote anything: leave no folder behind
                    (output_dir / LOCK_FILE).unlink()
                    for folder in [output_dir, *output_dir.parents]:
                        folder.rmdir()
                        if folder == first_created:
                            break
    finally:
        os.close(fd)  # releases the lock


def check_resume_steps(saved: dict, cfg: TrainConfig, path: Union[str, Path]) -> None:
    """A checkpoint at or past `--max-steps` trains nothing: past it, results.json would file its weights under the
    shorter run's configuration; at it, only a checkpoint that carries its step's evaluated record (the end of an
    epoch or of the run) can finish the run, as a run killed after its last save does."""
    if cfg.max_steps is None:
        return
    step = int(saved['train_state']['step'])
    history = json.loads(saved['train_state'].get('history') or '[]')
    if step > cfg.max_steps:
        why = f'past --max-steps {cfg.max_steps}'
    elif step == cfg.max_steps and (not history or history[-1].get('step') != step):
        why = f'--max-steps {cfg.max_steps} itself, saved inside an epoch: its weights were never evaluated'
    else:
        return
    raise ValueError(f'Checkpoint {path} is at step {step}, {why}, and nothing would train. Resume with a larger '
                     '--max-steps, or name an earlier checkpoint folder with --resume.')


def clear_run_outputs(output_dir: Union[str, Path]) -> None:
    """What `--overwrite` removes: the outputs a run writes, nothing else in the folder."""
    for name in _RUN_OUTPUTS:
        path = Path(output_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_config(cfg: TrainConfig) -> None:
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_CONFIG).write_text(json.dumps(
        {'fingerprint': cfg.fingerprint(), 'config': cfg.fingerprinted(), 'full_config': cfg.to_dict()}, indent=1))


def warn_loudly(message: str, print_fn=print) -> None:
    """A warning that a user cannot miss: a `warnings.warn` and a framed line on stdout."""
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    print_fn('!' * 80 + f'\nWARNING: {message}\n' + '!' * 80)
