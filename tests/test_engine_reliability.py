"""Engine reliability (issue 10): one run per output folder, atomic checkpoints with fallback, loud RNG-restore
failures, typed configs, --help, and clear errors. One tiny run (s3n_tiny, 3 steps) is shared by the tests that
read checkpoints; a test that damages files works on a copy."""
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

import timm_fgvc  # noqa: F401  (registers the methods)
from timm_fgvc.engine.checkpoint import (CHECKPOINT_INFO, find_checkpoint, list_checkpoints, load_weights,
                                         save_checkpoint)
from timm_fgvc.engine.config import TrainConfig, build_parser, parse_args
from timm_fgvc.engine.trainer import build_model, train

TINY = dict(model='s3n_tiny', synthetic_classes=3, synthetic_train_per_class=8, synthetic_test_per_class=2,
            synthetic_image_size=64, batch_size=8, optimizer='sgd', lr=0.02, weight_decay=1e-4, warmup_epochs=0,
            epochs=2, check_images=False)


def tiny_config(output_dir, **overrides) -> TrainConfig:
    return TrainConfig(**dict(TINY, output_dir=str(output_dir), **overrides))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A 3-step run (one epoch) with a checkpoint after every step: checkpoints/step_1..3, results.json,
    model.safetensors."""
    run = tmp_path_factory.mktemp('tiny') / 'run'
    results = train(tiny_config(run, max_steps=3, checkpoint_every=1, keep_checkpoints=5))
    return run, results


def copy_run(tiny_run, tmp_path) -> Path:
    target = tmp_path / 'run'
    shutil.copytree(tiny_run[0], target)
    return target


# --- one output folder, one run ---------------------------------------------------------------------------
def test_a_folder_holding_another_run_is_refused_and_names_what_differs(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    with pytest.raises(ValueError, match=r"another run.*lr: 0\.02 there, 0\.05 here.*--overwrite"):
        train(tiny_config(run, lr=0.05, max_steps=2))
    with pytest.raises(ValueError, match=r'a run of this configuration.*--resume latest.*--overwrite'):
        train(tiny_config(run, max_steps=2))
    with pytest.raises(ValueError, match=r'another configuration.*lr: 0\.02 there, 0\.05 here'):
        train(tiny_config(run, lr=0.05, max_steps=4, resume='latest'))
    with pytest.raises(ValueError, match='only one'):
        train(tiny_config(run, lr=0.05, resume='latest', overwrite=True))
    # the refusals left the old run as it was
    assert [p.name for p in list_checkpoints(run)] == ['step_00000001', 'step_00000002', 'step_00000003']


def test_a_checkpoint_of_another_configuration_is_refused(tiny_run, tmp_path):
    checkpoint = tiny_run[0] / 'checkpoints' / 'step_00000002'
    with pytest.raises(ValueError, match=r'belongs to another run configuration.*seed: 0 there, 1 here'):
        train(tiny_config(tmp_path / 'other', seed=1, resume=str(checkpoint), max_steps=3))


def test_overwrite_replaces_the_old_run_entirely(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / 'notes.txt').write_text('mine')  # not a run output: kept
    results = train(tiny_config(run, lr=0.05, max_steps=2, overwrite=True, keep_checkpoints=5))
    assert [p.name for p in list_checkpoints(run)] == ['step_00000002']  # no step 1 and 3 of the old run
    info = json.loads((run / 'checkpoints' / 'step_00000002' / CHECKPOINT_INFO).read_text())
    assert info['config']['lr'] == 0.05 and info['fingerprint'] == results['config_fingerprint']
    assert json.loads((run / 'results.json').read_text())['config']['lr'] == 0.05
    assert (run / 'notes.txt').read_text() == 'mine'


def test_a_wrong_model_or_schedule_fails_before_overwrite_clears_the_old_run(tiny_run, tmp_path):
    """Checked up front (the model built on the meta device): the old run is still whole afterwards."""
    run = copy_run(tiny_run, tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob('*'))
    for overrides, message in ((dict(model='s3n_tny'), "Unknown model 's3n_tny'"),
                               (dict(model_args={'not_an_argument': 1}), 'cannot be built with'),
                               (dict(stage_epochs=[1.0, 2.0]), '--stage-epochs gives 2 values'),
                               (dict(start_stage=3), '--start-stage 3 out of range'),
                               (dict(pretrained_path=str(tmp_path / 'missing.safetensors')), 'no such file'),
                               (dict(), 'No local folder or file')):  # only the data is wrong: read before clearing
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            train(tiny_config(run, lr=0.05, max_steps=2, overwrite=True, dataset=str(tmp_path / 'no_such_folder'),
                              **overrides))
    assert sorted(str(p.relative_to(run)) for p in run.rglob('*')) == before


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_file_is_not_a_folder(tiny_run, tmp_path, monkeypatch):
    """Two runs in one folder would delete and overwrite each other's checkpoints and results (each then credited
    with the other's top-1): the folder is locked while a run trains in it, and freed when it ends. A forked data
    worker does not keep it; a file system that cannot lock gets a warning and an unlocked run."""
    fcntl = pytest.importorskip('fcntl')  # Windows: no advisory locks, runs are not locked
    from timm_fgvc.engine.checkpoint import run_folder_lock
    trainer = os.fork()
    if trainer == 0:  # a run that forks a data worker, then is killed (no cleanup) while the worker lives on
        with run_folder_lock(tmp_path / 'forks'):
            if os.fork() == 0:
                time.sleep(3)
                os._exit(0)
            os._exit(0)
    os.waitpid(trainer, 0)
    with run_folder_lock(tmp_path / 'forks'):  # the dead run's worker does not hold the folder
        pass
    folder = tmp_path / 'busy'
    with run_folder_lock(folder):
        with pytest.raises(ValueError, match=rf'Another process \(pid {os.getpid()}\) is training in --output-dir'):
            train(tiny_config(folder, max_steps=1))
    assert not _holds_any_run_output(folder)
    train(tiny_config(folder, max_steps=1))  # freed
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(ValueError, match='is a file: name a folder'):
        train(tiny_config(tmp_path / 'a_file', max_steps=1))

    def no_locks(fd, operation):
        raise OSError(37, 'No locks available')  # ENOLCK: an NFS mount without lockd
    monkeypatch.setattr(fcntl, 'flock', no_locks)
    with pytest.warns(RuntimeWarning, match='cannot be locked'):
        assert train(tiny_config(tmp_path / 'nfs', max_steps=1))['final']['step'] == 1


def _holds_any_run_output(folder: Path) -> bool:
    return any((folder / name).exists() for name in ('checkpoints', 'results.json', 'model.safetensors',
                                                      'run_config.json'))


def test_a_resume_that_cannot_run_is_refused_before_the_data_is_read_and_leaves_nothing(tiny_run, tmp_path,
                                                                                      monkeypatch):
    """No checkpoint, another configuration's, or one past --max-steps (nothing would train, and results.json
    would file step-3 weights under a 2-step run): refused up front, with no run_config.json left to block the
    right resume."""
    import timm_fgvc.engine.trainer as trainer
    run = copy_run(tiny_run, tmp_path)

    def no_data(*args, **kwargs):
        raise AssertionError('the data was read before the resume was checked')
    monkeypatch.setattr(trainer, 'load_fgvc_dataset', no_data)
    with pytest.raises(FileNotFoundError, match='No checkpoint to resume from'):
        train(tiny_config(tmp_path / 'empty', resume='latest'))
    assert not _holds_any_run_output(tmp_path / 'empty')
    with pytest.raises(ValueError, match=r'step_00000003 is at step 3, past --max-steps 2'):
        train(tiny_config(run, max_steps=2, resume='latest'))
    with pytest.raises(ValueError, match=r'step_00000002 is at step 2, --max-steps 2 itself, saved inside an epoch'):
        train(tiny_config(run, max_steps=2, resume=str(run / 'checkpoints' / 'step_00000002')))
    with pytest.raises(ValueError, match=r'another run configuration.*lr: 0\.02 there, 0\.5 here'):
        train(tiny_config(tmp_path / 'other', lr=0.5, resume=str(run / 'checkpoints' / 'step_00000002')))
    assert not _holds_any_run_output(tmp_path / 'other')


def test_a_diverged_model_gets_no_top1_and_a_one_line_error(tmp_path, capsys):
    """A step that sends the weights to inf leaves every prediction NaN: the run stops with what to do, instead of
    reporting the top-1 of an argmax over NaN (a number `timm-fgvc record` would publish)."""
    from timm_fgvc.engine.trainer import main
    with pytest.raises(FloatingPointError, match=r'non-finite outputs for 6 of 6 eval images.*Lower --lr'):
        train(tiny_config(tmp_path / 'run', lr=1e12, max_steps=1))
    with pytest.raises(SystemExit) as stopped:
        main(['--model', 's3n_tiny', '--synthetic-classes', '3', '--synthetic-train-per-class', '8',
              '--synthetic-test-per-class', '2', '--synthetic-image-size', '64', '--batch-size', '8',
              '--optimizer', 'sgd', '--lr', '1e12', '--max-steps', '1', '--check-images', 'false',
              '--output-dir', str(tmp_path / 'cli')])
    assert stopped.value.code == 2 and 'Traceback' not in capsys.readouterr().err
    assert not (tmp_path / 'cli' / 'results.json').exists()


# --- atomic checkpoints and fallback ---------------------------------------------------------------------
class _KilledDuringSave:
    """An Accelerator stand-in whose save_state writes part of a checkpoint, then dies (as kill -9 would)."""
    is_main_process, num_processes = True, 1

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / 'model.safetensors').write_bytes(b'partial')
        raise KeyboardInterrupt('killed')


def test_a_killed_save_leaves_no_checkpoint_behind(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_KilledDuringSave(), run, 4, tiny_config(run), keep=5)
    assert [p.name for p in list_checkpoints(run)][-1] == 'step_00000003'
    assert find_checkpoint(run, 'latest') == (run / 'checkpoints' / 'step_00000003', [])


def test_latest_skips_damaged_checkpoints_and_names_the_file(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    checkpoints = run / 'checkpoints'
    (checkpoints / 'step_00000009').mkdir()  # what a killed save of the old engine left behind
    optimizer = checkpoints / 'step_00000003' / 'optimizer.bin'
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated
    (checkpoints / 'step_00000002' / 'random_states_0.pkl').write_bytes(b'')  # zero bytes
    path, notes = find_checkpoint(run, 'latest')
    assert path == checkpoints / 'step_00000001'
    text = ' '.join(notes)
    assert 'step_00000009' in text and CHECKPOINT_INFO in text
    assert 'step_00000003' in text and 'optimizer.bin' in text and 'truncated' in text
    assert 'step_00000002' in text and 'random_states_0.pkl' in text
    model = checkpoints / 'step_00000001' / 'model.safetensors'
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(FileNotFoundError, match=r'No complete checkpoint.*step_00000001: model\.safetensors'):
        find_checkpoint(run, 'latest')


def test_resume_falls_back_with_a_warning_and_continues_the_history(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    optimizer = run / 'checkpoints' / 'step_00000003' / 'optimizer.bin'
    optimizer.write_bytes(b'')
    with pytest.warns(RuntimeWarning, match=r'step_00000003.*optimizer\.bin.*previous complete checkpoint'):
        results = train(tiny_config(run, max_steps=4, checkpoint_every=1, keep_checkpoints=5, resume='latest'))
    # resumed at step 2, before the epoch record of step 3: the history is that of the uninterrupted run, its
    # losses the mean over the whole epoch (steps 1-2 from the checkpoint, step 3 after the resume)
    assert [h['step'] for h in results['history']] == [3, 4]
    uninterrupted = tiny_run[1]['history'][0]
    for key in (k for k in uninterrupted if k.startswith('train_')):
        assert results['history'][0][key] == pytest.approx(uninterrupted[key], rel=1e-5), key
    assert any('optimizer.bin' in w for w in results['resume_warnings'])
    assert find_checkpoint(run, 'latest') == (run / 'checkpoints' / 'step_00000004', [])  # step 3 saved again


def test_a_resume_from_an_older_checkpoint_drops_the_abandoned_later_ones(tiny_run, tmp_path):
    """Rotation by step number must not keep a damaged or abandoned later checkpoint over the one just saved."""
    run = copy_run(tiny_run, tmp_path)
    (run / 'checkpoints' / 'step_00000003' / 'optimizer.bin').write_bytes(b'')
    train(tiny_config(run, max_steps=2, checkpoint_every=1, keep_checkpoints=1,
                      resume=str(run / 'checkpoints' / 'step_00000001')))  # back past a damaged step 3
    # rotation by step number alone kept the damaged step 3 and deleted the step 2 just saved
    assert [p.name for p in list_checkpoints(run)] == ['step_00000002']
    assert find_checkpoint(run, 'latest') == (run / 'checkpoints' / 'step_00000002', [])


def test_a_random_state_that_cannot_be_restored_is_said_loudly(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    checkpoint = run / 'checkpoints' / 'step_00000002'
    (checkpoint / 'random_states_0.pkl').write_bytes(b'')
    with pytest.warns(RuntimeWarning, match='random state of process 0 was not restored'):
        results = train(tiny_config(run, max_steps=3, resume=str(checkpoint)))
    assert any('will not repeat' in w for w in results['resume_warnings'])
    assert 'WARNING: ' in capsys.readouterr().out



class _RunsCode:
    """A pickle that runs code when loaded (what a checkpoint shared or downloaded could hold)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), 'ran'))


def _rehash(checkpoint: Path) -> None:
    """Rewrite the manifest as whoever edits a checkpoint can: it proves completeness, not trust."""
    from timm_fgvc.engine.checkpoint import sha256_file
    info = json.loads((checkpoint / CHECKPOINT_INFO).read_text())
    info['files'] = {p.name: {'bytes': p.stat().st_size, 'sha256': sha256_file(p)}
                     for p in sorted(checkpoint.iterdir()) if p.is_file() and p.name != CHECKPOINT_INFO}
    (checkpoint / CHECKPOINT_INFO).write_text(json.dumps(info))


def test_a_resume_unpickles_nothing_that_runs_code_and_reads_older_checkpoints_plain_state(tiny_run, tmp_path):
    """The step counter and lr schedule are JSON; an older checkpoint's pickles of them are read with
    weights_only=True: plain numbers resume as before, a pickle that would run code is refused unrun."""
    run = copy_run(tiny_run, tmp_path)
    checkpoint = run / 'checkpoints' / 'step_00000002'
    saved = json.loads((checkpoint / 'training_state.json').read_text())
    assert saved['train_state']['step'] == 2 and not list(checkpoint.glob('custom_checkpoint_*'))
    (checkpoint / 'training_state.json').unlink()  # as the engine saved before: Accelerate's custom pickles
    torch.save(saved['scheduler'], checkpoint / 'custom_checkpoint_0.pkl')
    torch.save(saved['train_state'], checkpoint / 'custom_checkpoint_1.pkl')
    _rehash(checkpoint)
    resumed = train(tiny_config(tmp_path / 'resumed', max_steps=3, resume=str(checkpoint)))
    assert [h['step'] for h in resumed['history']] == [3]
    assert resumed['history'][0]['train_loss'] == pytest.approx(tiny_run[1]['history'][0]['train_loss'], rel=1e-5)
    marker = tmp_path / 'ran.txt'
    torch.save(_RunsCode(marker), checkpoint / 'custom_checkpoint_1.pkl')
    _rehash(checkpoint)
    with pytest.raises(ValueError, match='custom_checkpoint_1.pkl holds more than plain numbers'):
        train(tiny_config(tmp_path / 'refused', max_steps=3, resume=str(checkpoint)))
    assert not marker.exists()


def test_the_benchmark_runner_resumes_a_killed_run_from_its_last_complete_checkpoint(tiny_run, tmp_path, capsys):
    """`bench/accuracy.py --suites transfer --resume`: a run killed after step 2 (step 3's checkpoint torn, no
    results) continues from step 2 and ends where the uninterrupted run ended; a folder without a complete
    checkpoint starts again, and says so."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
    from transfer import resume_fields
    run = copy_run(tiny_run, tmp_path)
    (run / 'results.json').unlink()
    (run / 'model.safetensors').unlink()
    (run / 'checkpoints' / 'step_00000003' / 'optimizer.bin').write_bytes(b'')
    fields = resume_fields(run, resume=True)
    assert fields == {'resume': 'latest', 'overwrite': False}
    with pytest.warns(RuntimeWarning, match='step_00000003'):
        results = train(tiny_config(run, max_steps=3, checkpoint_every=1, keep_checkpoints=5, **fields))
    assert results['resumed_from'].endswith('step_00000002')
    resumed = load_file(str(run / 'model.safetensors'))
    uninterrupted = load_file(str(tiny_run[0] / 'model.safetensors'))
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for step in (1, 2, 3):
        (run / 'checkpoints' / f'step_{step:08d}' / 'optimizer.bin').write_bytes(b'')
    assert resume_fields(run, resume=True) == {'resume': None, 'overwrite': True}
    assert 'no complete checkpoint' in capsys.readouterr().out
    assert resume_fields(run, resume=False) == {'resume': None, 'overwrite': True}

# --- initial checkpoint, typed config, help, clear errors --------------------------------------------------
def test_initial_checkpoint_can_be_a_checkpoint_folder(tiny_run):
    checkpoint = tiny_run[0] / 'checkpoints' / 'step_00000002'
    model = build_model(TrainConfig(model='s3n_tiny', initial_checkpoint=str(checkpoint)), num_classes=3)
    saved = load_file(str(checkpoint / 'model.safetensors'))
    assert all(k.startswith('model.') for k in saved)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved['model.' + name]), name
    other = timm.create_model('s3n_tiny', num_classes=5)
    with pytest.raises(ValueError, match='trained for 3 classes'):
        load_weights(other, checkpoint)


def test_weights_of_an_unfinished_or_damaged_checkpoint_are_refused_by_eval_and_initial_checkpoint(tiny_run,
                                                                                                   tmp_path):
    """The manifest a resume checks guards eval, predict and --initial-checkpoint too: a killed save's
    `.tmp_step_*` folder or changed weights are refused, naming the newest complete checkpoint."""
    from timm_fgvc.inference import load_model
    run = copy_run(tiny_run, tmp_path)
    checkpoints = run / 'checkpoints'
    unfinished = checkpoints / '.tmp_step_00000004'
    shutil.copytree(checkpoints / 'step_00000003', unfinished)
    (unfinished / CHECKPOINT_INFO).unlink()
    with pytest.raises(ValueError, match=r'save did not finish.*newest complete checkpoint there is .*step_00000003'):
        load_model(checkpoint=unfinished, device='cpu')
    weights = checkpoints / 'step_00000003' / 'model.safetensors'
    state = load_file(str(weights))
    state = {k: v + 1 if k.endswith('heads.joint.bias') else v for k, v in state.items()}
    save_file(state, str(weights), metadata={'format': 'pt'})  # as Accelerate saves it: the same size, other values
    for load in (lambda: load_model(checkpoint=weights, device='cpu'),
                 lambda: build_model(TrainConfig(model='s3n_tiny', initial_checkpoint=str(weights.parent)), 3)):
        with pytest.raises(ValueError, match=r'damaged checkpoint .*step_00000003: model.safetensors content changed'
                                             r'.*newest complete checkpoint there is .*step_00000002'):
            load()
    assert load_model(checkpoint=checkpoints / 'step_00000002', device='cpu').run is not None  # intact: loads


def test_yaml_values_are_cast_by_field_type_and_errors_name_the_field(tmp_path):
    path = tmp_path / 'run.yaml'
    path.write_text(yaml.safe_dump({'train': {'lr': '1e-3', 'augment': 'no', 'epochs': '3', 'stage_epochs': 2,
                                              'log_with': 'tensorboard', 'max_steps': 'null'}}))
    assert yaml.safe_load('lr: 1e-3')['lr'] == '1e-3'  # PyYAML's reading, which used to reach torch.optim
    cfg = parse_args(['--config', str(path)])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.augment is False and cfg.epochs == 3 and cfg.stage_epochs == [2.0]
    assert cfg.log_with == ['tensorboard'] and cfg.max_steps is None
    path.write_text('train:\n  batch_size: many\n')
    with pytest.raises(ValueError, match=r"'batch_size' \(--batch-size\): expected an integer, got 'many'"):
        parse_args(['--config', str(path)])
    with pytest.raises(ValueError, match=r"'epochs'.*must be at least 1"):
        parse_args(['--epochs', '0'])
    with pytest.raises(ValueError, match=r"'optimizer'.*'adam' is not one of"):
        TrainConfig(optimizer='adam')
    cfg.weight_decay = '5e-4'  # setting a field later is checked too
    assert cfg.weight_decay == 5e-4
    with pytest.raises(ValueError, match="'augment'"):
        cfg.augment = 'maybe'
    with pytest.raises(AttributeError, match='no field'):
        cfg.learning_rate = 0.1


def test_help_gives_every_flag_its_meaning_and_default():
    import dataclasses
    fields = dataclasses.fields(TrainConfig)
    assert all(len(f.metadata['doc']) > 10 for f in fields)
    text = ''.join(build_parser().format_help().split())  # argparse wraps lines (also at hyphens)
    for f in fields:
        assert '--' + f.name.replace('_', '-') in text
        assert ''.join(f.metadata['doc'].split()) in text, f.name
    assert ''.join('learning rate of the new (method) parameters (default: 0.003)'.split()) in text
    assert ''.join('training epochs (per stage, unless the model or --stage-epochs says otherwise) (default: 8)'
                   .split()) in text


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match='fp16 needs a GPU.*bf16'):
        train(tiny_config(tmp_path / 'fp16', mixed_precision='fp16', cpu=True, max_steps=1))


# --- stage boundaries ------------------------------------------------------------------------------------------
def test_a_resume_at_a_stage_boundary_equals_the_uninterrupted_run(tmp_path):
    """HSM re-initialises its head when step 2 follows step 1: a run killed exactly at the boundary (its last
    checkpoint is the one saved there) and resumed must do that too, and end with the uninterrupted run's weights."""
    staged = dict(model='hsm_tiny', stage_epochs=[1, 1], epochs=2, max_steps=None)
    full = train(tiny_config(tmp_path / 'full', **staged))
    steps_per_stage = full['history'][0]['step']
    train(tiny_config(tmp_path / 'cut', **dict(staged, max_steps=steps_per_stage)))
    resumed = train(tiny_config(tmp_path / 'cut', **dict(staged, resume='latest')))
    assert [h['step'] for h in resumed['history']] == [steps_per_stage, 2 * steps_per_stage]
    a = load_file(str(tmp_path / 'full/model.safetensors'))
    b = load_file(str(tmp_path / 'cut/model.safetensors'))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    # and the head really was re-initialised at the boundary: it differs from the one step 1 trained
    step_one = load_file(str(sorted((tmp_path / 'cut/checkpoints').glob('step_*'))[0] / 'model.safetensors'))
    head = next(k for k in step_one if k.startswith('model.heads.') and k.endswith('weight'))
    assert not torch.allclose(step_one[head], a[head[len('model.'):]], atol=1e-3)


@pytest.mark.parametrize('text, message', [
    ('train:\n  lr: 0.1\nepochs: 2\n', r"\['epochs'\] outside `train:`"),
    ('- lr: 0.1\n', 'holds a list'),
    ('train:\n', '`train:` should map'),
    ('lr: [0.1\n', 'not valid YAML'),
])
def test_a_malformed_config_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / 'config.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_args(['--config', str(path)])


def test_every_hub_config_parses_as_a_training_config(repo_root):
    for path in sorted((repo_root / 'hub_configs').glob('*.yaml')):
        assert parse_args(['--config', str(path)]).model == yaml.safe_load(path.read_text())['train']['model']


def test_a_resume_on_changed_data_is_refused(tmp_path):
    """Images added to a class between the kill and the resume: the steps per epoch and the held-out draw would
    change under the run, so the resume says so instead of mixing two data sets."""
    from timm_fgvc.data.synthetic import render_sample
    root = tmp_path / 'birds'

    def add_images(cls, start, count):
        (root / f'class_{cls}').mkdir(parents=True, exist_ok=True)
        for i in range(start, start + count):
            render_sample(cls + 2 * i, num_classes=2, image_size=48)['image'].save(root / f'class_{cls}' / f'{i}.png')
    add_images(0, 0, 6), add_images(1, 0, 6)
    config = dict(TINY, dataset=str(root), img_size=48, batch_size=4, eval_fraction=0.25, max_steps=2,
                  checkpoint_every=1, check_images=True)
    train(TrainConfig(**dict(config, output_dir=str(tmp_path / 'run'))))
    add_images(0, 6, 4)
    with pytest.raises(ValueError, match=r"other data.*train_images 9 there, 12 here"):
        train(TrainConfig(**dict(config, output_dir=str(tmp_path / 'run'), max_steps=3, resume='latest')))
