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
