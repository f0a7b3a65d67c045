"""bench/_common.py run metadata: a run is credited to the code it ran."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / 'bench'


def git(repo, *args):
    return subprocess.run(['git', '-C', str(repo), '-c', 'user.email=t@t', '-c', 'user.name=t', '-c',
                           'commit.gpgsign=false', *args], check=True, capture_output=True, text=True).stdout.strip()


def repo_with_common(tmp_path, files=()):
    """A git repo holding a copy of bench/_common.py (and `files`, path -> text), all committed; its HEAD."""
    repo = tmp_path / 'repo'
    (repo / 'bench').mkdir(parents=True)
    shutil.copy(BENCH / '_common.py', repo / 'bench' / '_common.py')
    for path, text in dict(files).items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, 'init', '-q')
    git(repo, 'add', '.')
    git(repo, 'commit', '-qm', 'start')
    return repo, git(repo, 'rev-parse', '--short', 'HEAD')


def test_a_run_is_credited_to_the_revision_it_started_at_not_the_one_it_ends_at(tmp_path):
    """A long benchmark run that ends after a later commit still names the commit whose code it imported."""
    repo, started = repo_with_common(tmp_path)
    ready, go = tmp_path / 'ready', tmp_path / 'go'
    code = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import torch\n"
            "import _common\n"
            "Path(sys.argv[2]).touch()\n"
            "while not Path(sys.argv[3]).exists(): time.sleep(0.02)\n"  # the run trains while HEAD moves on
            "print(_common.run_metadata(torch.device('cpu'))['git'])")
    proc = subprocess.Popen([sys.executable, '-c', code, str(repo / 'bench'), str(ready), str(go)],
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), f'the run never started (exit status {proc.poll()})'
    (repo / 'bench' / 'later.txt').write_text('a later commit\n')
    git(repo, 'add', '.')
    git(repo, 'commit', '-qm', 'later')
    assert git(repo, 'rev-parse', '--short', 'HEAD') != started
    go.touch()
    out, _ = proc.communicate(timeout=120)
    assert out.strip() == started


def test_a_revision_is_dirty_for_edited_or_new_code_not_for_results_files_written_by_running_jobs(tmp_path):
    repo, head = repo_with_common(tmp_path, {'bench/results/accuracy_x.json': '{}\n', '.gitignore': '__pycache__/\n'})
    code = "import sys; sys.path.insert(0, sys.argv[1]); import _common; print(_common.git_revision())"

    def revision():
        return subprocess.run([sys.executable, '-c', code, str(repo / 'bench')], check=True, capture_output=True,
                              text=True).stdout.strip()

    (repo / 'bench' / 'results' / 'accuracy_x.json').write_text('{"runs": []}\n')  # a job recorded a run
    (repo / 'bench' / 'results' / 'accuracy_y.json').write_text('{"runs": []}\n')  # a new results file
    assert revision() == head
    (repo / 'bench' / 'new_probe.py').write_text('# a module a run may import, not committed yet\n')
    assert revision() == head + '-dirty'
    (repo / 'bench' / 'new_probe.py').unlink()
    assert revision() == head
    with open(repo / 'bench' / '_common.py', 'a') as f:
        f.write('# an edit\n')
    assert revision() == head + '-dirty'
