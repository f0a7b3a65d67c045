"""The README's usage snippets run as written: every ```python block, and the ```bash blocks marked
`<!-- readme-test: run -->`, in a folder holding what they refer to (the main job's `output/run` from a tiny run,
`photos/`). A block marked `<!-- readme-test: skip (reason) -->` needs the network: it is not run, and the test
checks it does need the Hub."""
import re
from pathlib import Path
import shlex

import pytest

from timm_fgvc.cli import main
from timm_fgvc.data.synthetic import render_sample
from timm_fgvc.engine.config import parse_args
from timm_fgvc.engine.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[1]

BLOCK = re.compile(r'(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```', re.S)


def readme_blocks(lang: str):
    """(mark, code) of every ```lang block of README.md; mark is '' when the block has no readme-test marker."""
    text = (REPO_ROOT / 'README.md').read_text()
    return [(m['mark'] or '', m['code']) for m in BLOCK.finditer(text) if m['lang'] == lang]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A folder with what the snippets use: output/run (a 2-step run of the main job's model) and photos/."""
    root = tmp_path_factory.mktemp('readme')
    train(parse_args(['--synthetic-classes', '4', '--synthetic-train-per-class', '4', '--synthetic-test-per-class',
                      '2', '--synthetic-image-size', '64', '--batch-size', '8', '--max-steps', '2',
                      '--output-dir', str(root / 'output' / 'run')]))
    (root / 'photos').mkdir()
    for i, name in enumerate(('a.png', 'b.png')):
        render_sample(i, num_classes=4, image_size=64)['image'].save(root / 'photos' / name)
    return root


def test_readme_python_snippets_run(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    blocks = readme_blocks('python')
    ran = 0
    for i, (mark, code) in enumerate(blocks):
        if mark.startswith('skip'):
            assert 'hf-hub:' in code or 'pretrained_backbone=True' in code, f'block {i} is skipped without need'
            continue
        exec(compile(code, f'README.md python block {i}', 'exec'), {'__name__': '__readme__'})
        ran += 1
    assert ran >= 2 and (workdir / 'attention.png').is_file()


def test_readme_shell_commands_marked_run_succeed(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    commands = [line for mark, code in readme_blocks('bash') if mark == 'run'
                for line in code.replace('\\\n', ' ').splitlines() if line.strip()]
    assert {c.split()[1] for c in commands} == {'predict', 'explain', 'eval'}
    for command in commands:
        argv = shlex.split(command.split('#')[0])
        assert argv[0] == 'timm-fgvc' and main(argv[1:]) == 0, command
    assert (workdir / 'preds.csv').is_file() and (workdir / 'eval' / 'report.json').is_file()
