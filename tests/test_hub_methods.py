"""End to end for CAA, HSM and SSANet: a real (2-step) `train()` run -> `export_run` -> `hf-hub:` reload, offline.

test_hub.py covers S3N and LFD from fabricated runs; here each method's weights come from the trainer itself (so
its results.json, model_args and preprocessing are the ones a user exports), and the reload happens in a fresh
process through timm + huggingface_hub with HF_HUB_OFFLINE=1, from a Hugging Face cache laid out under a temporary
HF_HOME. The expected logits come from the run's own model.safetensors loaded into a freshly built model here,
not from the export code.
"""
import json
import textwrap

import timm
import torch
from safetensors.torch import load_file, save_file

import timm_fgvc  # noqa: F401  (registers the methods)
from hub_cache import run_offline, to_hf_cache
from timm_fgvc.engine.config import TrainConfig
from timm_fgvc.engine.trainer import train
from timm_fgvc.hub import export_run

METHODS = ('caa_tiny', 'hsm_tiny', 'ssanet_tiny')
TINY = dict(synthetic_classes=3, synthetic_train_per_class=4, synthetic_test_per_class=1, synthetic_image_size=64,
            img_size=64, batch_size=6, optimizer='sgd', lr=0.02, weight_decay=1e-4, warmup_epochs=0, epochs=1,
            max_steps=2, check_images=False)




RELOAD = textwrap.dedent("""
    import json, sys
    import torch, timm, timm_fgvc
    from safetensors.torch import load_file, save_file
    torch.set_num_threads(1)
    x = load_file(sys.argv[1])['x']
    outputs, cfgs = {}, {}
    for repo_id in json.loads(sys.argv[3]):
        torch.manual_seed(123)  # a different init than any run: weights that failed to load would show
        model = timm.create_model('hf-hub:' + repo_id, pretrained=True).eval()
        with torch.no_grad():
            outputs[repo_id] = model(x)
        cfg = model.pretrained_cfg
        cfgs[repo_id] = dict(label_names=list(cfg['label_names']), num_classes=model.num_classes,
                             input_size=list(cfg['input_size']), architecture=cfg['architecture'])
    from timm_fgvc.inference import load_model  # its record of the run's data, read from the cached config.json
    cfgs['training_data'] = load_model('hf-hub:' + repo_id + '@main', device='cpu').training_data
    save_file(outputs, sys.argv[2])
    print(json.dumps(cfgs))
""")


def test_trained_caa_hsm_ssanet_export_and_reload_through_hf_hub_offline(tmp_path):
    hf_home = tmp_path / 'hf_home'
    runs, repos = {}, {}
    for name in METHODS:
        run = tmp_path / 'runs' / name
        results = train(TrainConfig(**dict(TINY, model=name, output_dir=str(run))))
        assert results['num_classes'] == 3
        repo_id = f'timm-fgvc/{name}.synthetic'
        folder = export_run(run, tmp_path / 'export' / name, repo_id=repo_id)
        assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
        config = json.loads((folder / 'config.json').read_text())
        assert config['architecture'] == name and config['num_classes'] == 3
        assert config['label_names'] == results['label_names']
        assert config['pretrained_cfg']['input_size'] == [3, 64, 64]  # the run's size, not the tiny default 96
        to_hf_cache(folder, hf_home, repo_id)
        runs[repo_id], repos[repo_id] = run, results

    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    save_file({'x': x}, str(tmp_path / 'input.safetensors'))
    cfgs, reloaded = run_offline(RELOAD, [tmp_path / 'input.safetensors', tmp_path / 'output.safetensors',
                                          json.dumps(list(runs))], hf_home)

    assert cfgs.pop('training_data') == {'dataset': 'synthetic', 'train_split': 'train'}  # a test split: no draw
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess's thread count, so float sums run in the same order
    try:
        for repo_id, run in runs.items():
            results = repos[repo_id]
            name = results['model']
            # the run's weights, loaded strictly into a model built here from the run's own model_args
            model_args = {k: v for k, v in results['model_args'].items() if k != 'pretrained_backbone'}
            model = timm.create_model(name, num_classes=3, **model_args).eval()
            state = load_file(str(run / 'model.safetensors'))
            model.load_state_dict(state, strict=True)
            with torch.no_grad():
                expected = model(x)
            assert torch.isfinite(expected).all() and expected.shape == (2, 3)
            torch.testing.assert_close(reloaded[repo_id], expected, rtol=0, atol=1e-6, msg=repo_id)
            torch.manual_seed(123)  # the subprocess's seed: had its weights not loaded, it would give these logits
            with torch.no_grad():
                unloaded = timm.create_model(name, num_classes=3, **model_args).eval()(x)
            assert not torch.allclose(unloaded, expected, atol=1e-3), repo_id
            assert cfgs[repo_id] == dict(label_names=results['label_names'], num_classes=3, input_size=[3, 64, 64],
                                         architecture=name)
    finally:
        torch.set_num_threads(threads)  # later tests keep the session's setting
