"""Helpers of the offline Hub tests (SPEC §5): an export laid out as huggingface_hub's cache, and the environment
of a subprocess that loads from that cache only (huggingface_hub reads these variables at import)."""
import os
import shutil
from pathlib import Path

import timm_fgvc

REVISION = '0123456789abcdef0123456789abcdef01234567'


def to_hf_cache(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Lay an export out as huggingface_hub's cache does after a download of `repo_id` at REVISION."""
    repo = hf_home / 'hub' / ('models--' + repo_id.replace('/', '--'))
    snapshot = repo / 'snapshots' / REVISION
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copy(path, snapshot / path.name)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(REVISION)


def offline_env(hf_home: Path) -> dict:
    """Offline, one thread (the parent compares with one thread too), this checkout importable."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1',
               OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([str(Path(timm_fgvc.__file__).resolve().parents[1]),
                                                                os.environ.get('PYTHONPATH', '')]))
    env.pop('HF_HUB_CACHE', None)
    env.pop('HUGGINGFACE_HUB_CACHE', None)
    return env


def run_offline(script: str, args, hf_home: Path):
    """Run `script` (python -c) offline against the cache in `hf_home` with `args`; it prints a JSON line last and
    saves tensors to `args[1]`. Returns (that JSON, those tensors)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file
    proc = subprocess.run([sys.executable, '-c', script, *map(str, args)], env=offline_env(hf_home),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), load_file(str(args[1]))
