"""Shared helpers of the benchmark scripts: method discovery, run metadata, results files.

The scripts in `bench/` are run as files (`python bench/throughput.py ...`), not imported as a package, so
this module is imported by path (`bench/` is on `sys.path` when a script in it runs).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / 'bench' / 'results'
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import timm  # noqa: E402
import timm_fgvc  # noqa: E402,F401  (registers the methods with timm)
from timm_fgvc.catalog import split_model_name  # noqa: E402

# method prefix -> (paper backbone, paper resolution), SPEC §6 and the papers' experiment sections: what the benches
# need beside the method's display name (timm_fgvc.catalog.METHODS); a method the benches run is listed here
PAPER_SETUP: Dict[str, tuple] = {
    's3n': ('resnet50', 448),
    'lfd': ('resnet50', 448),
    'caa': ('resnet50', 448),
    'hsm': ('resnet152', 224),
    'ssanet': ('resnet50', 448),
}
SMALL_BACKBONE, SMALL_RESOLUTION = 'resnet18', 224


def registered_variants(methods: Optional[Sequence[str]] = None) -> List[str]:
    """Every registered `<method>_<backbone>` (no tags) of the given method prefixes, from the timm registry."""
    methods = list(methods) if methods else list(PAPER_SETUP)
    unknown = [m for m in methods if m not in PAPER_SETUP]
    if unknown:
        raise SystemExit(f'Unknown method(s) {unknown}; known: {list(PAPER_SETUP)} (a new method needs its paper\'s '
                         'backbone and resolution in bench/_common.py PAPER_SETUP).')
    return sorted(n for n in timm.list_models() if n.split('_')[0] in methods)


def split_variant(name: str) -> tuple:
    """`'s3n_resnet50'` -> `('s3n', 'resnet50')` (the catalogue's `split_model_name` without the tag)."""
    return split_model_name(name)[:2]


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'{model} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})'


def git_revision() -> Optional[str]:
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(  # edited or new code; results files change under running jobs and are not code
            ['git', 'status', '--porcelain', '--untracked-files=all', '--', '.', ':(exclude)bench/results'], cwd=REPO,
            capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ('-dirty' if dirty else '')) or None
    except (OSError, subprocess.SubprocessError):
        return None


# A run executes the code its process imported, so it is credited to the revision at start: a long run that ends
# after a later commit (or with uncommitted edits made meanwhile) would otherwise name code it never ran.
REVISION_AT_START = git_revision()


def command_line() -> str:
    """The command as typed, relative to the repo root, for the README's 'command' column."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return ' '.join(['python', shlex.quote(str(script))] + [shlex.quote(a) for a in sys.argv[1:]])


def run_metadata(device: torch.device) -> dict:
    return {
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'device': device_name(device),
        'device_type': device.type,
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_fgvc': getattr(timm_fgvc, '__version__', None),
        'git': REVISION_AT_START,
        'command': command_line(),
    }


@contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `path` (its `.lock` sibling) while it is read and written back: jobs run in
    parallel (`bench/sweep.py`) share results files, the CUB subset and HSM's source steps. Not re-entrant: a
    process that takes it again for the same path waits for itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_results(path: Path, entries: List[dict], key_fields: Sequence[str]) -> List[dict]:
    """Add `entries` to the JSON list in `path` (under its lock), replacing older entries with the same key; returns
    the list."""
    with locked(path):
        old = []
        if path.exists():  # an unreadable file is refused, not overwritten with the new entries alone
            try:
                old = json.loads(path.read_text())['entries']
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f'{path} is not a results file ({{"entries": [...]}}): {e}. Mend it (git checkout '
                                 f'{path.name}) or move it aside; nothing was written.') from e
        key = lambda e: tuple(json.dumps(e.get(k), sort_keys=True) for k in key_fields)  # noqa: E731
        new_keys = {key(e) for e in entries}
        merged = [e for e in old if key(e) not in new_keys] + list(entries)
        write_atomic(path, json.dumps({'entries': merged}, indent=2) + '\n')
    return merged


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling and rename it over `path`: a reader, or a job killed mid-write, never
    leaves or sees a half-written results file."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
