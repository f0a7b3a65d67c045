"""Hub export and reload (SPEC §5): the real timm -> huggingface_hub path, offline, nothing mocked."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file

import timm_fgvc  # noqa: F401  (registers the methods)
from hub_cache import offline_env, run_offline, to_hf_cache
from timm_fgvc.cli import main as cli_main
from timm_fgvc.hub import export_model, export_run, push
from timm_fgvc.models import UnpublishedWeightsError

LABELS = ['acadian_flycatcher', 'baird_sparrow', 'cape_may_warbler', 'gray_catbird', 'indigo_bunting']
DATA_CONFIG = {'input_size': (3, 64, 64), 'crop_pct': 0.9, 'interpolation': 'bilinear',
               'mean': (0.5, 0.4, 0.3), 'std': (0.2, 0.25, 0.3)}



def _random_model(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would show in the outputs
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_export_reloads_through_hf_hub_offline(tmp_path):
    s3n = _random_model('s3n_resnet18', pretrained_backbone=False)
    s3n._model_args['pretrained_backbone'] = True  # as recorded by a run built with ImageNet backbone weights
    baseline = _random_model('resnet18')
    lfd = _random_model('lfd_resnet18', backbone='test_resnet')  # a method with a backbone override
    repos = {'timm-fgvc/s3n_resnet18.synthetic': s3n, 'timm-fgvc/lfd_resnet18.synthetic': lfd,
             'someone/resnet18.birds5': baseline}

    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    save_file({'x': x}, str(tmp_path / 'input.safetensors'))
    hf_home = tmp_path / 'hf_home'
    for repo_id, model in repos.items():
        folder = export_model(model, tmp_path / repo_id.replace('/', '__'), label_names=LABELS,
                              data_config=DATA_CONFIG, repo_id=repo_id)
        assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
        config = json.loads((folder / 'config.json').read_text())
        assert 'pretrained_backbone' not in config['model_args']
        to_hf_cache(folder, hf_home, repo_id)
    assert s3n._model_args['pretrained_backbone'] is True  # the caller's model is left as it was

    script = textwrap.dedent(f"""
        import json, sys
        import torch, timm, timm_fgvc
        from safetensors.torch import load_file, save_file
        torch.set_num_threads(1)
        x = load_file(sys.argv[1])['x']
        outputs, cfgs = {{}}, {{}}
        for repo_id in {list(repos)!r}:
            model = timm.create_model('hf-hub:' + repo_id, pretrained=True).eval()
            with torch.no_grad():
                outputs[repo_id] = model(x)
            cfg = model.pretrained_cfg
            cfgs[repo_id] = dict(label_names=list(cfg['label_names']), num_classes=cfg['num_classes'],
                                 model_classes=model.num_classes, input_size=list(cfg['input_size']),
                                 mean=list(cfg['mean']), hf_hub_id=cfg['hf_hub_id'])
        from timm_fgvc.inference import load_model
        try:
            load_model('hf-hub:timm-fgvc/s3n_resnet18.typo')
        except OSError as e:
            cfgs['typo'] = str(e)
        save_file(outputs, sys.argv[2])
        print(json.dumps(cfgs))
    """)
    cfgs, reloaded = run_offline(script, [tmp_path / 'input.safetensors', tmp_path / 'output.safetensors'], hf_home)

    assert "'timm-fgvc/s3n_resnet18.typo'" in cfgs['typo'] and 'HF_HUB_OFFLINE is set' in cfgs['typo']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess's thread count, so float sums run in the same order
    try:
        for repo_id, model in repos.items():
            with torch.no_grad():
                expected = model(x)
            torch.testing.assert_close(reloaded[repo_id], expected, rtol=0, atol=1e-6)
            assert cfgs[repo_id] == dict(label_names=LABELS, num_classes=5, model_classes=5, input_size=[3, 64, 64],
                                         mean=[0.5, 0.4, 0.3], hf_hub_id=repo_id)
    finally:
        torch.set_num_threads(threads)  # later tests keep the session's setting



def test_model_card_usage_snippet_runs_as_written(tmp_path):
    """The card's Python block, copied as a user would, on an exported 3-class tiny model (fewer than 5 classes:
    the snippet asks for the top 3) with an image.jpg beside it."""
    labels = LABELS[:3]
    repo_id = 'timm-fgvc/s3n_tiny.synthetic'
    folder = export_model(_random_model_with('s3n_tiny', num_classes=3), tmp_path / 'export', label_names=labels,
                          data_config=DATA_CONFIG, repo_id=repo_id)
    card = (folder / 'README.md').read_text()
    usage = card[card.index('## Usage'):]
    snippet = usage[usage.index('```python') + len('```python'):usage.index('```', usage.index('```python') + 3)]
    assert 'topk(3)' in snippet and 'topk(5)' not in snippet
    to_hf_cache(folder, tmp_path / 'hf_home', repo_id)
    work = tmp_path / 'user'
    work.mkdir()
    from PIL import Image
    Image.new('RGB', (80, 60), (200, 120, 40)).save(work / 'image.jpg')
    proc = subprocess.run([sys.executable, '-c', snippet], cwd=work, env=offline_env(tmp_path / 'hf_home'),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1]
    assert sum(label in printed for label in labels) == 3, printed


def _random_model_with(name, num_classes, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=num_classes, **kwargs).eval()


def test_unpublished_tag_says_how_to_train_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('tried to reach the network')

    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setattr(socket, 'create_connection', no_network)
    with pytest.raises(UnpublishedWeightsError) as info:
        timm.create_model('s3n_resnet50.cub200', pretrained=True)
    assert 'train_fgvc.py --config hub_configs/s3n_resnet50.cub200.yaml' in str(info.value)
    assert 'timm-fgvc/s3n_resnet50.cub200' in str(info.value)


def test_export_run_rebuilds_the_run(make_run, tmp_path):
    model = _random_model('s3n_resnet18')
    run = make_run(model, label_names=LABELS)
    folder = export_run(run, tmp_path / 'export')
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 's3n_resnet18' and config['num_classes'] == 5
    assert config['label_names'] == LABELS
    cfg = config['pretrained_cfg']
    # the run's preprocessing, not the architecture's default (448 px, ImageNet mean) or its `cub200` tag
    assert cfg['input_size'] == [3, 64, 64] and cfg['crop_pct'] == 0.9
    assert cfg['mean'] == [0.5, 0.4, 0.3] and cfg['std'] == [0.2, 0.25, 0.3]
    assert cfg['tag'] == 'synthetic'
    exported = load_file(str(folder / 'model.safetensors'))
    for name, tensor in model.state_dict().items():
        assert torch.equal(exported[name], tensor), name


def test_a_run_reloads_with_the_arguments_it_was_trained_with_after_a_default_changes(make_run, tmp_path):
    """A run trained when `attention_from='probabilities'` was CAA's default recorded no model args; it must
    still reload (load_model, export_run, and the export through timm) with M from the probabilities."""
    from timm_fgvc.runs import run_model_args
    from timm_fgvc.inference import load_model
    model = _random_model('caa_tiny', attention_from='probabilities')
    run = make_run(model, label_names=LABELS)  # results.json: model_args {} (it was the default), init_args
    assert json.loads((run / 'results.json').read_text())['model_args'] == {}
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        today = timm.create_model('caa_tiny', num_classes=5).eval()  # today's default reading of M
        today.load_state_dict(model.state_dict())
        assert not torch.allclose(today(x), expected, atol=1e-4)  # so the recorded argument matters
        loaded = load_model(checkpoint=run).model
        assert loaded.attention_from == 'probabilities'
        torch.testing.assert_close(loaded(x), expected)
        folder = export_run(run, tmp_path / 'export')
        config = json.loads((folder / 'config.json').read_text())
        assert config['model_args']['attention_from'] == 'probabilities'
        reloaded = timm.create_model('local-dir:' + str(folder), pretrained=True).eval()
        torch.testing.assert_close(reloaded(x), expected)
    assert run_model_args({'model_args': {'otsu_bins': 64}, 'init_args': model.init_args})['otsu_bins'] == 64


def test_export_run_rejects_corrupt_weights(make_run, tmp_path):
    run = make_run(_random_model('s3n_resnet18'))
    (run / 'model.safetensors').write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match='corrupt'):
        export_run(run, tmp_path / 'export')
    assert not (tmp_path / 'export' / 'model.safetensors').exists()


def test_export_run_names_what_is_missing(make_run, tmp_path):
    with pytest.raises(FileNotFoundError, match='No training run folder'):
        export_run(tmp_path / 'nowhere', tmp_path / 'export')
    run = make_run(_random_model('resnet18'))
    (run / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match='no model.safetensors'):
        export_run(run, tmp_path / 'export')
    (run / 'results.json').unlink()
    with pytest.raises(FileNotFoundError, match='no results.json'):
        export_run(run, tmp_path / 'export')
    (run / 'results.json').write_text('{"model": "resnet18"')
    (run / 'model.safetensors').write_bytes(b'')
    with pytest.raises(ValueError, match='not valid JSON'):
        export_run(run, tmp_path / 'export')


def test_export_checks_the_hub_config_matches(tmp_path, repo_root):
    model = _random_model('s3n_resnet18')  # 5 classes, not CUB's 200
    with pytest.raises(ValueError, match='200 classes'):
        export_model(model, tmp_path / 'export', hub_config=repo_root / 'hub_configs' / 's3n_resnet18.cub200.yaml')
    with pytest.raises(ValueError, match="'s3n_resnet50'"):
        export_model(model, tmp_path / 'export', hub_config=repo_root / 'hub_configs' / 's3n_resnet50.cub200.yaml')


def test_cli_export_and_its_errors(make_run, tmp_path, capsys):
    run = make_run(_random_model('resnet18'), label_names=LABELS)
    assert cli_main(['export', '--run', str(run), '--out', str(tmp_path / 'export')]) == 0
    assert json.loads((tmp_path / 'export' / 'config.json').read_text())['label_names'] == LABELS
    assert cli_main(['export', '--run', str(tmp_path / 'missing'), '--out', str(tmp_path / 'x')]) == 2
    assert 'No training run folder' in capsys.readouterr().err
    # an earlier export is exported over; a folder with anything else in it is refused, and left as it was
    assert cli_main(['export', '--run', str(run), '--out', str(tmp_path / 'export')]) == 0
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'README.md').write_text('# my project')
    (project / 'train.py').write_text('')
    assert cli_main(['export', '--run', str(run), '--out', str(project)]) == 2
    assert 'holds other files (train.py)' in capsys.readouterr().err
    assert (project / 'README.md').read_text() == '# my project' and not (project / 'config.json').exists()
    assert cli_main(['export', '--run', str(run), '--out', str(tmp_path / 'y'), '--repo-id', 'bad id!/x y']) == 2
    assert 'is not a Hub repo id' in capsys.readouterr().err and not (tmp_path / 'y').exists()


def test_a_run_on_a_local_folder_is_never_published_as_the_catalog_dataset_it_is_named_like(make_run, tmp_path,
                                                                                             repo_root):
    """A local folder at `tanganke/stanford_cars` is the user's data: the card names it by its folder name (not the
    machine's path) and claims no catalog dataset; with a hub config it is credited only with --same-dataset."""
    local = str(tmp_path / 'tanganke' / 'stanford_cars')
    run = make_run(_random_model('resnet18'), label_names=LABELS, dataset='tanganke/stanford_cars',
                   dataset_path=local)
    folder = export_run(run, tmp_path / 'export')
    text = (folder / 'README.md').read_text()
    card = ModelCard.load(folder / 'README.md')
    assert str(tmp_path) not in text and 'Stanford Cars' not in text and not card.data.datasets
    assert "**Training data:** a local folder stanford_cars: its own terms apply" in text
    assert [(r.dataset_name, r.metric_name) for r in card.data.eval_results] == [  # no top-5 of 5 classes: 100%
        ('local folder stanford_cars', 'Top-1 accuracy')]
    assert 'tag' not in json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    cub = make_run(timm.create_model('s3n_resnet18', num_classes=200, backbone='resnet18'), name='cub',
                   dataset='bentrevett/caltech-ucsd-birds-200-2011', dataset_path='/data/cub')
    config = repo_root / 'hub_configs' / 's3n_resnet18.cub200.yaml'
    with pytest.raises(ValueError, match='local folder /data/cub.*--same-dataset'):
        export_run(cub, tmp_path / 'cub_export', hub_config=config)
    card = ModelCard.load(export_run(cub, tmp_path / 'cub_export', hub_config=config, same_dataset=True) / 'README.md')
    assert card.data.datasets == ['bentrevett/caltech-ucsd-birds-200-2011']


def test_push_refuses_incomplete_or_pickled_folders(make_run, tmp_path):
    """Checked before any Hub call: these raise without a token or network."""
    with pytest.raises(FileNotFoundError, match='README.md'):
        push(tmp_path, 'someone/model')
    run = make_run(_random_model('resnet18'))
    folder = export_run(run, tmp_path / 'export')
    (folder / 'pytorch_model.bin').write_bytes(b'pickle')
    with pytest.raises(ValueError, match='pickle'):
        push(folder, 'someone/model')
    with pytest.raises(ValueError, match='run folder'):  # its checkpoints/ hold pickles (optimizer, RNG states)
        export_run(run, run)


def test_push_fails_in_one_line_without_a_token_or_the_hub(make_run, tmp_path):
    """Through the CLI in a fresh process with an empty HF_HOME: no token is a clear error before any Hub call;
    with a token but the Hub unreachable (offline), one line and exit 2, not a traceback."""
    folder = export_run(make_run(_random_model('resnet18')), tmp_path / 'export', repo_id='someone/model')

    def push_cli(**env):
        environment = {k: v for k, v in offline_env(tmp_path / 'hf_home').items() if k != 'HF_TOKEN'}
        return subprocess.run([sys.executable, '-m', 'timm_fgvc.cli', 'push', '--folder', str(folder), '--repo-id',
                               'someone/model'], env=dict(environment, **env), capture_output=True, text=True,
                              timeout=120)
    no_token = push_cli()
    assert no_token.returncode == 2 and 'token' in no_token.stderr and 'Traceback' not in no_token.stderr
    offline = push_cli(HF_TOKEN='hf_not_a_real_token')
    assert offline.returncode == 2 and 'Traceback' not in offline.stderr
    assert 'someone/model failed' in offline.stderr and 'HF_HUB_OFFLINE' in offline.stderr


class _HubWithoutNetwork(HfApi):
    """huggingface_hub's own client with only its HTTP calls replaced (recorded): `upload_folder` still picks the
    files to send with its real folder walk and filters (its single-commit path)."""
    calls: list = []

    def _validate_yaml(self, content, *args, **kwargs):  # the Hub checks a model card's metadata before upload
        assert content.startswith('---')

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(('create_commit', repo_id, sorted(op.path_in_repo for op in operations), kwargs))
        return 'commit'


def test_push_sends_the_three_export_files_through_huggingface_hubs_upload(make_run, tmp_path, monkeypatch):
    """Files beside the export (an optimizer pickle in a subfolder, a copied results file with a home path) stay on
    the machine: `upload_folder`'s own selection with push's patterns sends the export's three files, to a repo
    created private when asked, with the token and commit message given."""
    import huggingface_hub.hf_api

    from timm_fgvc.hub import EXPORT_FILES
    folder = export_run(make_run(_random_model('resnet18')), tmp_path / 'export', repo_id='someone/model')
    (folder / 'notes').mkdir()
    (folder / 'notes' / 'optimizer.pkl').write_bytes(b'pickle')
    (folder / 'results_copy.json').write_text('{"dataset_path": "/home/me"}')
    monkeypatch.setattr(huggingface_hub.hf_api, 'is_xet_available', lambda: False)  # the single-commit path
    monkeypatch.setattr('timm_fgvc.hub.HfApi', _HubWithoutNetwork)
    monkeypatch.setattr(_HubWithoutNetwork, 'calls', [])
    assert push(folder, 'someone/model', token='hf_x', private=True, commit_message='v1') == 'commit'
    (_, repo, repo_args), (_, commit_repo, sent, commit_args) = _HubWithoutNetwork.calls
    assert repo == commit_repo == 'someone/model' and repo_args == {'private': True, 'exist_ok': True}
    assert sent == sorted(EXPORT_FILES) and commit_args['commit_message'] == 'v1'


def test_a_method_fine_tuned_from_an_export_takes_output_stride_and_reloads_and_exports_without_the_export(tmp_path):
    """`--model local-dir:<export>` (as `hf-hub:<repo>`): `--output-stride` reaches the method's backbone, and the
    fine-tuned run reloads from its own folder once the export is gone (as a Hub model offline would be)."""
    import shutil

    from safetensors.torch import load_file as load_weights_file

    from timm_fgvc.engine.config import TrainConfig
    from timm_fgvc.engine.trainer import train
    from timm_fgvc.inference import load_model
    tiny = dict(synthetic_classes=3, synthetic_train_per_class=4, synthetic_test_per_class=1, synthetic_image_size=64,
                img_size=64, batch_size=6, optimizer='sgd', lr=0.02, warmup_epochs=0, epochs=1, max_steps=2,
                check_images=False)
    train(TrainConfig(**tiny, model='s3n_tiny', output_dir=str(tmp_path / 'source')))
    folder = export_run(tmp_path / 'source', tmp_path / 'export', repo_id='timm-fgvc/s3n_tiny.synthetic')
    run = tmp_path / 'fine_tuned'
    with pytest.warns(RuntimeWarning, match='without --pretrained'):  # as timm's pretrained=False: said aloud
        train(TrainConfig(**tiny, model=f'local-dir:{folder}', output_dir=str(tmp_path / 'from_scratch')))
    train(TrainConfig(**tiny, model=f'local-dir:{folder}', pretrained=True, output_stride=16, output_dir=str(run)))
    shutil.rmtree(folder)

    loaded = load_model(checkpoint=run, device='cpu')
    expected = timm.create_model('s3n_tiny', num_classes=3, backbone_args={'output_stride': 16}).eval()
    expected.load_state_dict(load_weights_file(str(run / 'model.safetensors')))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded.model.backbone.forward_features(x).shape[-1] == 4  # stride 16; test_resnet's own is 32
        torch.testing.assert_close(loaded.model(x), expected(x), rtol=1e-5, atol=1e-5)
    assert loaded.label_names == json.loads((run / 'results.json').read_text())['label_names']
    again = export_run(run, tmp_path / 'export_fine_tuned', repo_id='timm-fgvc/s3n_tiny.synthetic')
    with torch.no_grad():
        torch.testing.assert_close(timm.create_model(f'local-dir:{again}', pretrained=True).eval()(x), expected(x),
                                   rtol=1e-5, atol=1e-5)


def test_fine_tuned_weights_keep_the_license_of_the_weights_they_started_from(make_run, tmp_path):
    """torchvision's resnet18 weights are bsd-3-clause: a baseline fine-tuned from them is not apache-2.0 (the
    architecture cfg's default) on its card."""
    run = make_run(_random_model('resnet18'), label_names=LABELS,
                   config={'model': 'resnet18.tv_in1k', 'pretrained': True})
    card = ModelCard.load(export_run(run, tmp_path / 'export') / 'README.md')
    assert card.data.base_model == 'timm/resnet18.tv_in1k' and card.data.license == 'bsd-3-clause'
    assert 'fine-tuned on timm-fgvc synthetic parts' in card.text
    scratch = make_run(_random_model('resnet18'), name='scratch', label_names=LABELS)
    card = ModelCard.load(export_run(scratch, tmp_path / 'scratch_export') / 'README.md')
    assert card.data.license == 'apache-2.0' and 'trained from scratch on timm-fgvc synthetic parts' in card.text
    assert '**Training data:** timm-fgvc synthetic parts, apache-2.0' in card.text


def test_a_card_names_the_terms_of_the_data_the_weights_were_trained_on(make_run, tmp_path):
    """The card's license is the weights'; CUB-200-2011's own terms (not a license the card could claim) are named
    with a link to its dataset card."""
    run = make_run(_random_model_with('resnet18', 200), dataset='bentrevett/caltech-ucsd-birds-200-2011',
                   config={'model': 'resnet18.tv_in1k', 'pretrained': True})
    card = ModelCard.load(export_run(run, tmp_path / 'export') / 'README.md')
    assert card.data.license == 'bsd-3-clause'
    assert ('**Training data:** [CUB-200-2011](https://huggingface.co/datasets/bentrevett/caltech-ucsd-birds-200-2011)'
            ', under its own terms of use (see its dataset card)') in card.text
