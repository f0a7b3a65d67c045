"""Hub configs, MODEL_CARDS.md and the exported model card (SPEC §1, §3, §5)."""
import io
import shutil

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard

import timm_fgvc  # noqa: F401  (registers the methods)
from timm_fgvc.cards import (NOT_MEASURED, check_model_cards, load_hub_config, load_hub_configs,
                             record_measurement, render_model_cards, write_model_cards)
from timm_fgvc.cli import main as cli_main
from timm_fgvc.catalog import DATASETS
from timm_fgvc.engine.config import TrainConfig
from timm_fgvc.hub import export_model, export_run
from timm_fgvc.models import HUB_ORG, PUBLISHED_WEIGHTS


@pytest.fixture
def repo_copy(tmp_path, repo_root):
    """hub_configs/, bench/results/ and MODEL_CARDS.md copied, so tests can change them."""
    shutil.copytree(repo_root / 'hub_configs', tmp_path / 'hub_configs')
    shutil.copytree(repo_root / 'bench' / 'results', tmp_path / 'bench' / 'results')
    shutil.copy(repo_root / 'MODEL_CARDS.md', tmp_path / 'MODEL_CARDS.md')
    return tmp_path


@pytest.fixture(scope='module')
def cub_model():
    torch.manual_seed(0)
    return timm.create_model('s3n_resnet18', num_classes=DATASETS['cub200'].num_classes).eval()


def _table(card_text: str, header_start: str):
    """Rows (as lists of cells) of the Markdown table whose header starts with `header_start`."""
    lines = card_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip('|').split('|')]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip('|').split('|')))))
    return rows


# --- hub configs <-> the timm registry -------------------------------------------------------------
def test_hub_configs_match_the_registry(repo_root):
    configs = load_hub_configs(repo_root)
    assert configs, 'no hub configs found'
    pretrained = set(timm.list_pretrained())
    for cfg in configs:
        assert cfg['model'] in pretrained, f'{cfg["model"]} is not a registered timm tag'
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg['model'])
        assert pretrained_cfg.num_classes == DATASETS[cfg['dataset']].num_classes, cfg['model']
        assert pretrained_cfg.hf_hub_id == cfg['hub_id']
        assert cfg['published'] == (cfg['hub_id'] in PUBLISHED_WEIGHTS), cfg['model']
        assert cfg['train']['model'] == cfg['model'].split('.')[0]
    registered = {name for name in pretrained
                  if (timm.models.get_pretrained_cfg(name).hf_hub_id or '').startswith(HUB_ORG + '/')}
    assert registered == {cfg['model'] for cfg in configs}, 'every timm-fgvc tag needs a hub config and vice versa'
    assert set(PUBLISHED_WEIGHTS) <= {cfg['hub_id'] for cfg in configs}


@pytest.mark.parametrize('field, value, message', [
    ('model', 's3n_resnet50.cars', 'file name stem'),
    ('hub_id', 'someone/s3n_resnet50.cub200', 'hub_id'),
    ('dataset', 'imagenet', 'unknown dataset'),
    ('published', 'yes', 'published'),
    ('measured', {'top1': None}, 'missing key'),
])
def test_load_hub_config_validates(repo_copy, field, value, message):
    path = repo_copy / 'hub_configs' / 's3n_resnet50.cub200.yaml'
    data = yaml.safe_load(path.read_text())
    data[field] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message):
        load_hub_configs(repo_copy)


def test_a_hub_config_of_an_uncatalogued_method_says_where_to_add_it(repo_copy):
    data = yaml.safe_load((repo_copy / 'hub_configs' / 's3n_resnet50.cub200.yaml').read_text())
    data.update(model='twoview_resnet50.cub200', hub_id='timm-fgvc/twoview_resnet50.cub200', method='twoview')
    (repo_copy / 'hub_configs' / 'twoview_resnet50.cub200.yaml').write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="'twoview_resnet50.cub200' is not a catalogued method.*catalog.py"):
        load_hub_configs(repo_copy)


# --- MODEL_CARDS.md ------------------------------------------------------------------------------
def test_model_cards_are_in_sync(repo_root):
    stream = io.StringIO()
    assert check_model_cards(repo_root, stream=stream), stream.getvalue()


def test_model_cards_go_stale_when_a_config_changes(repo_copy):
    assert check_model_cards(repo_copy, stream=io.StringIO())
    path = repo_copy / 'hub_configs' / 's3n_resnet50.cars.yaml'
    path.write_text(path.read_text().replace('top1: 94.7', 'top1: 94.9'))
    stream = io.StringIO()
    assert not check_model_cards(repo_copy, stream=stream)
    assert '-| [`s3n_resnet50.cars`]' in stream.getvalue() and '94.9' in stream.getvalue()
    assert cli_main(['cards', '--check', '--root', str(repo_copy)]) == 1
    assert cli_main(['cards', '--root', str(repo_copy)]) == 0
    assert check_model_cards(repo_copy, stream=io.StringIO())


def test_model_cards_show_the_benchmark_results(repo_copy):
    """A changed throughput result makes MODEL_CARDS.md stale; regenerated, the card shows the new overhead."""
    import json

    path = repo_copy / 'bench' / 'results' / 'throughput_cpu.json'
    data = json.loads(path.read_text())
    entry = next(e for e in data['entries'] if e['variant'] == 's3n_resnet50')
    entry['inference']['overhead'] = 1.37
    path.write_text(json.dumps(data))
    stream = io.StringIO()
    assert not check_model_cards(repo_copy, stream=stream)
    assert 'bench/results' in stream.getvalue()
    write_model_cards(repo_copy)
    text = (repo_copy / 'MODEL_CARDS.md').read_text()
    card = text.split('## s3n_resnet50.cub200')[1].split('\n## ')[0]
    assert 'Speed measured here: inference 1.37x' in card
    rows = _table(text.split('## Benchmarks measured here')[1], '| Method | Variant |')
    row = next(r for r in rows if r['Variant'] == '`s3n_resnet50`')
    assert row['Inference overhead'].startswith('1.37 (**above**')
    # without bench/results (an installed package) there is no benchmark section
    assert '## Benchmarks measured here' not in render_model_cards(load_hub_configs(repo_copy))


def test_bench_report_is_in_sync(repo_root):
    """README.md, bench/README.md and MODEL_CARDS.md show what bench/results/*.json hold."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(repo_root / 'bench' / 'report.py'), '--check'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_model_cards_table_keeps_paper_and_measured_apart(repo_root):
    configs = load_hub_configs(repo_root)
    text = render_model_cards(configs)
    assert text.startswith('<!--') and 'timm-fgvc cards' in text.splitlines()[0]
    rows = {r['Model'].split('`')[1]: r for r in _table(text, '| Model |')}
    assert sorted(rows) == sorted(c['model'] for c in configs)
    assert rows['s3n_resnet50.cub200']['Paper top-1'] == '88.5'
    assert rows['s3n_resnet50.cub200']['Measured top-1'] == NOT_MEASURED
    assert rows['s3n_resnet50.cub200']['Backbone'] == 'resnet50'
    assert render_model_cards(list(reversed(configs))) == text  # deterministic


def _outside_measured(text: str):
    """The lines of a hub config outside its `measured:` block (comments included)."""
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.startswith('measured:'):
            inside = True
        elif inside and not line.startswith(' '):
            inside = False
        if not inside:
            out.append(line)
    return out


# --- recording a measurement ---------------------------------------------------------------------
def test_record_writes_measured_and_keeps_the_rest(repo_copy, make_run, cub_model):
    path = repo_copy / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    before = path.read_text()
    run = make_run(cub_model, eval_top1=71.2345, dataset='bentrevett/caltech-ucsd-birds-200-2011',
                   config={'img_size': 64, 'epochs': 2})
    assert cli_main(['record', '--run', str(run), '--hub-config', str(path)]) == 0
    after = path.read_text()
    data, old = yaml.safe_load(after), yaml.safe_load(before)
    assert data['measured']['top1'] == 71.23
    assert data['measured']['device'] == 'cpu'
    assert isinstance(data['measured']['date'], str) and len(data['measured']['date']) == 10
    command = data['measured']['command']
    assert command.startswith('accelerate launch train_fgvc.py --config hub_configs/s3n_resnet18.cub200.yaml')
    assert '--img-size 64' in command and '--epochs 2' in command
    assert {k: v for k, v in data.items() if k != 'measured'} == {k: v for k, v in old.items() if k != 'measured'}
    # comments and every line outside `measured:` survive
    assert _outside_measured(after) == _outside_measured(before)
    assert not check_model_cards(repo_copy, stream=io.StringIO())
    write_model_cards(repo_copy)
    rows = {r['Model'].split('`')[1]: r for r in _table((repo_copy / 'MODEL_CARDS.md').read_text(), '| Model |')}
    # the run left the recipe (64 px for 448, 2 epochs for 60...): the number says so where it is shown
    assert 'img_size 64 (recipe: 448)' in data['measured']['recipe_changes']
    assert 'epochs 2 (recipe: 60)' in data['measured']['recipe_changes']
    assert rows['s3n_resnet18.cub200']['Measured top-1'] == '71.23 (off its recipe)'
    assert rows['s3n_resnet18.cub200']['Paper top-1'] == 'not reported'
    assert '- Off its recipe: ' in (repo_copy / 'MODEL_CARDS.md').read_text()


def test_record_of_a_run_that_followed_the_recipe_says_nothing_off_it(repo_copy, make_run, cub_model):
    """The hub config's recipe on two processes with half the batch each is the same recipe (the same effective
    batch); a run that followed it replaces an earlier record's changes."""
    path = repo_copy / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    # a recipe as YAML reads it (`lr: 1e-3` is a string there, `stage_epochs: 2` a scalar) against the cast run
    text = path.read_text().replace('  lr: 0.01\n', '  lr: 1e-2\n')
    path.write_text(text.replace('  epochs: 60\n', '  epochs: 60\n  stage_epochs: 60\n'))
    recipe = yaml.safe_load(path.read_text())['train']
    assert recipe['lr'] == '1e-2' and recipe['stage_epochs'] == 60
    recipe = TrainConfig(**recipe).to_dict()
    off = make_run(cub_model, name='off', dataset=recipe['dataset'], config=dict(recipe, img_size=64))
    assert record_measurement(off, path)['recipe_changes'] == 'img_size 64 (recipe: 448)'
    run = make_run(cub_model, dataset=recipe['dataset'], num_processes=2,
                   config=dict(recipe, batch_size=recipe['batch_size'] // 2, seed=3, output_dir='elsewhere'))
    assert record_measurement(run, path)['recipe_changes'] is None
    assert yaml.safe_load(path.read_text())['measured']['recipe_changes'] is None


def test_record_writes_the_split_and_refuses_a_held_out_part_of_training(repo_copy, make_run, cub_model):
    """A Hub test split with hidden labels is passed over and part of train held out instead: that number is not a
    test-set number, so it is not recorded beside the paper's; a test split's is, with its name."""
    path = repo_copy / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    before = path.read_text()
    held = make_run(cub_model, name='held', dataset='bentrevett/caltech-ucsd-birds-200-2011',
                    data={'eval_split': "0.2 of 'train' held out (seed 0)", 'eval_held_out': True})
    with pytest.raises(ValueError, match="held out.*not on a test split"):
        record_measurement(held, path)
    assert path.read_text() == before
    test = make_run(cub_model, name='test', dataset='bentrevett/caltech-ucsd-birds-200-2011',
                    data={'eval_split': 'test', 'eval_held_out': False})
    record_measurement(test, path)
    assert yaml.safe_load(path.read_text())['measured']['split'] == 'test'


def test_record_refuses_a_run_of_another_dataset(repo_copy, make_run):
    path = repo_copy / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    before = path.read_text()
    run = make_run(timm.create_model('s3n_resnet18', num_classes=5))  # the 5-class synthetic set
    with pytest.raises(ValueError, match='200'):
        record_measurement(run, path)
    assert path.read_text() == before


@pytest.mark.parametrize('case, backbone, overrides, message', [
    ('another backbone', 'test_resnet', {}, "backbone is 'test_resnet'"),
    ('cut short', None, dict(config={'max_steps': 2, 'max_eval_samples': 16}), 'max_steps=2, max_eval_samples=16'),
    ('a local folder named like the Hub id', None, dict(dataset_path='/data/bentrevett/caltech-ucsd-birds-200-2011'),
     '--same-dataset'),
    ('another Hub dataset of as many classes', None, dict(dataset='someone/birds-200'),  # export took it as CUB
     "read 'someone/birds-200'.*--same-dataset"),
])
def test_record_and_export_refuse_a_run_that_is_not_the_hub_model(repo_copy, make_run, cub_model, case, backbone,
                                                                  overrides, message, monkeypatch):
    """A number in MODEL_CARDS.md and a card's claims belong to the hub model: its backbone, trained through, on
    its dataset (a local copy is credited only with --same-dataset). Export refuses before it builds the model."""
    path = repo_copy / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    before = path.read_text()
    model = timm.create_model('s3n_resnet18', num_classes=200, backbone=backbone) if backbone else cub_model
    run = make_run(model, **{'dataset': 'bentrevett/caltech-ucsd-birds-200-2011', **overrides})
    with pytest.raises(ValueError, match=message):
        record_measurement(run, path)
    assert path.read_text() == before
    if backbone:  # exported without the hub config, its card names the backbone it has
        card = (export_run(run, repo_copy / 'plain_export') / 'README.md').read_text()
        assert f'with a `{backbone}` backbone' in card
    import timm_fgvc.hub as hub

    def not_built(*args, **kwargs):
        raise AssertionError('the model was built before the run was checked against the hub config')
    monkeypatch.setattr(hub.timm, 'create_model', not_built)
    with pytest.raises(ValueError, match=message):
        export_run(run, repo_copy / 'export', hub_config=path)


def test_every_hub_models_own_run_matches_it_and_one_with_another_backbone_does_not(repo_root):
    """Names like s3n_resnet50_authors or caa_swin_tiny do not spell their timm backbone: the check reads it from
    the model the hub config builds (on the meta device)."""
    from timm_fgvc.cards import run_mismatch
    for cfg in load_hub_configs(repo_root):
        with torch.device('meta'):
            model = timm.create_model(cfg['model'].split('.')[0], **(cfg['train'].get('model_args') or {}))
        results = dict(model=cfg['train']['model'], num_classes=DATASETS[cfg['dataset']].num_classes,
                       dataset=cfg['train'].get('dataset', DATASETS[cfg['dataset']].hub_id),
                       init_args=getattr(model, 'init_args', None), model_args=cfg['train'].get('model_args'),
                       config=dict(cfg['train']))
        assert run_mismatch(results, cfg) is None, cfg['model']
        if results['init_args']:
            other = dict(results, init_args=dict(results['init_args'], backbone='test_resnet'))
            assert "backbone is 'test_resnet'" in run_mismatch(other, cfg)


def test_record_takes_a_run_fine_tuned_from_the_hub_by_the_architecture_it_built(repo_copy, make_run, cub_model):
    path = repo_copy / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    run = make_run(cub_model, dataset='bentrevett/caltech-ucsd-birds-200-2011', config={'model': 'hf-hub:me/birds'},
                   source_config={'architecture': 's3n_resnet18', 'pretrained_cfg': {}, 'model_args': {}})
    assert record_measurement(run, path)['top1'] == 61.25


# --- the exported model card ---------------------------------------------------------------------
def _paper_sentinel_config(repo_root):
    """The real s3n_resnet18.cub200 hub config with a paper number (the paper has none for ResNet-18)."""
    cfg = load_hub_config(repo_root / 'hub_configs' / 's3n_resnet18.cub200.yaml')
    cfg['paper'] = dict(cfg['paper'], top1=77.7)
    return cfg


def test_card_without_measurement_has_no_model_index(tmp_path, repo_root, cub_model):
    folder = export_model(cub_model, tmp_path / 'export', hub_config=_paper_sentinel_config(repo_root))
    card = ModelCard.load(folder / 'README.md')
    data = card.data
    assert data.library_name == 'timm'
    assert {'image-classification', 'timm', 'fine-grained', 's3n'} <= set(data.tags)
    assert data.datasets == ['bentrevett/caltech-ucsd-birds-200-2011']
    assert data.license == 'apache-2.0'
    assert data.base_model == 'timm/resnet18.a1_in1k'  # the hub config trains from ImageNet backbone weights
    assert not data.eval_results and 'model-index' not in card.content.split('\n---', 1)[0]
    assert "timm.create_model('hf-hub:timm-fgvc/s3n_resnet18.cub200', pretrained=True)" in card.text
    assert 'import timm_fgvc' in card.text
    [row] = _table(card.text, '| Dataset |')
    assert row['Paper top-1 (reported)'] == '77.7'
    assert row['Measured top-1 (timm-fgvc)'] == NOT_MEASURED
    assert '77.7' not in yaml.safe_dump(data.to_dict())


def test_card_with_measurement_builds_model_index(tmp_path, repo_root, make_run, cub_model):
    run = make_run(cub_model, eval_top1=64.5, dataset='bentrevett/caltech-ucsd-birds-200-2011',
                   config={'pretrained_backbone': False})
    folder = export_run(run, tmp_path / 'export', hub_config=_paper_sentinel_config(repo_root))
    card = ModelCard.load(folder / 'README.md')
    data = card.data
    assert data.library_name == 'timm'
    assert data.base_model is None  # the run did not start from ImageNet weights
    results = {r.metric_name: r for r in data.eval_results}
    top1 = results['Top-1 accuracy']
    assert top1.metric_value == 64.5 and top1.metric_type == 'accuracy'
    assert top1.dataset_type == 'bentrevett/caltech-ucsd-birds-200-2011' and top1.verified is False
    assert results['Top-5 accuracy'].metric_value == 100.0
    assert [r.metric_value for r in data.eval_results] == [64.5, 100.0]  # never the paper's 77.7
    [row] = _table(card.text, '| Dataset |')
    assert row['Paper top-1 (reported)'] == '77.7' and row['Measured top-1 (timm-fgvc)'] == '64.5'


def test_weights_exported_without_their_run_are_not_credited_with_the_hub_configs_measurement(tmp_path, repo_root,
                                                                                                 cub_model):
    """A hub config's `measured:` is of the run `record` read; weights exported without a run (any weights of the
    architecture, even untrained ones) are not that run's, so their card says they are not measured."""
    cfg = load_hub_config(repo_root / 'hub_configs' / 's3n_resnet18.cub200.yaml')
    cfg['measured'] = dict(top1=70.1, command='accelerate launch train_fgvc.py --config x.yaml',
                           date='2025-01-02', device='cuda:0')
    folder = export_model(cub_model, tmp_path / 'export', hub_config=cfg)
    card = ModelCard.load(folder / 'README.md')
    assert not card.data.eval_results and '70.1' not in card.text
    [row] = _table(card.text, '| Dataset |')
    assert row['Measured top-1 (timm-fgvc)'] == NOT_MEASURED


@pytest.mark.parametrize('with_hub_config', [True, False])
def test_the_cards_training_command_parses_back_to_the_runs_recipe(repo_root, monkeypatch, with_hub_config):
    """The command a card and `record` give reproduces the run: a field the run left unset (None) where the hub
    config sets one is written `none` and must override the file, not fall back to it."""
    import shlex

    from timm_fgvc.cards import _NOT_RECIPE, train_command
    from timm_fgvc.engine.config import TrainConfig, load_yaml_config, parse_args
    monkeypatch.chdir(repo_root)
    path = 'hub_configs/s3n_resnet18.cub200.yaml'
    base = load_yaml_config(path)
    run = TrainConfig(**dict(base, img_size=None, crop_pct=None, backbone_lr=None, lr=0.003, stage_epochs=[1.0, 2.0],
                             model_args={'backbone': 'test_resnet'}, pretrained_backbone=False)).to_dict()
    command = (train_command(run, base=base, base_path=path) if with_hub_config else train_command(run))
    parts = shlex.split(command)
    assert parts[:3] == ['accelerate', 'launch', 'train_fgvc.py'] and ('--config' in parts) == with_hub_config
    parsed = parse_args(parts[3:]).to_dict()
    assert {k: v for k, v in parsed.items() if k not in _NOT_RECIPE} == \
        {k: v for k, v in run.items() if k not in _NOT_RECIPE}


def test_a_card_of_a_model_fine_tuned_from_the_hub_names_its_parent(tmp_path, make_run, cub_model):
    """The Hub's lineage field (`base_model`): the Hub model a run fine-tuned, rebuilt without reaching it."""
    source = {'architecture': 's3n_resnet18', 'pretrained_cfg': dict(cub_model.pretrained_cfg), 'model_args': {}}
    run = make_run(cub_model, config={'model': 'hf-hub:someone/s3n_resnet18.birds@main', 'pretrained': True},
                   source_config=source)
    card = ModelCard.load(export_run(run, tmp_path / 'export') / 'README.md')
    assert card.data.base_model == 'someone/s3n_resnet18.birds'
    assert '[`someone/s3n_resnet18.birds`](https://huggingface.co/someone/s3n_resnet18.birds)' in card.text
    assert 'resolve_model_data_config(model, use_test_size=True)' in card.text  # the size it was measured at
