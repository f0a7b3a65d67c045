"""bench/caa_multiscale_baseline.py: the control's views are what they claim, and each scale starts from the last."""
import importlib.util
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parents[1] / 'bench'


def load_script():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location('bench_caa_multiscale_baseline', BENCH / 'caa_multiscale_baseline.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's register_model looks the module up
    spec.loader.exec_module(module)
    return module


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_centre_view_zooms_the_central_box_and_the_next_scale_starts_from_the_trained_one(tmp_path):
    script = load_script()
    source = save(timm.create_model('resnet18', num_classes=7), tmp_path / 'source.safetensors')
    # scale 1 sees a fixed central crop of half the width and a quarter of the height, zoomed to the input size
    view = timm.create_model('caa_view_resnet18', scale=1, box_fraction=[0.5, 0.25], num_classes=3, init=source)
    assert torch.equal(view.student.conv1.weight, script.read_state_dict(source)['conv1.weight'])  # source loaded
    image = torch.zeros(1, 3, 64, 64)
    image[..., 24:40, 16:48] = 1.0  # the central box: rows 24-40 (a quarter), columns 16-48 (half)
    image[..., 30:34, 30:34] = 2.0  # a 4 x 4 mark in its middle
    out = view.view(image)
    assert out.shape == image.shape
    assert out[..., 2:-2, 2:-2].min() >= 1.0 - 1e-4  # nothing outside the central box: it fills the view
    mark = out[0, 0] > 1.5
    rows, cols = mark.any(1).nonzero().squeeze(1), mark.any(0).nonzero().squeeze(1)
    assert 14 <= len(rows) <= 18 and 7 <= len(cols) <= 9  # magnified 4x vertically, 2x horizontally
    assert abs(rows.float().mean() - 31.5) < 1 and abs(cols.float().mean() - 31.5) < 1
    view.eval()
    assert torch.allclose(view(image), view.student(out))  # the model classifies its view, not the image
    # only the student is a parameter (a CAA teacher is neither trained nor saved) ...
    assert all(name.startswith('student.') for name, _ in view.named_parameters())
    # ... and the next scale's model starts from this one's trained weights, its classifier included
    with torch.no_grad():
        for p in view.student.parameters():
            p.add_(0.5)
    nxt = timm.create_model('caa_view_resnet18', scale=2, box_fraction=[0.4, 0.4], num_classes=3,
                            init=save(view, tmp_path / 'scale_1.safetensors'))
    for (name, a), b in zip(nxt.student.state_dict().items(), view.student.state_dict().values()):
        assert torch.equal(a, b), name


def test_views_of_a_caa_run_of_another_seed_or_recipe_are_refused(tmp_path, capsys):
    """The row is paired with the baseline of its --seed under the protocol recipe: a teacher of another seed, or
    trained with another recipe (a smoke run), would credit its views to the wrong row."""
    import json

    import pytest
    script = load_script()
    from transfer import TRANSFER_DEFAULTS
    run = tmp_path / 'caa_resnet18'
    run.mkdir()
    (run / 'model.safetensors').write_bytes(b'')
    config = dict(TRANSFER_DEFAULTS, model='caa_resnet18', seed=0, max_steps=None, dataset=str(tmp_path))
    for changed, expected in ((dict(seed=0, max_steps=3), 'max_steps 3'), (dict(epochs=1), 'epochs 1'),
                              ({}, 'seed 0 \\(the row: 3\\)')):
        (run / 'results.json').write_text(json.dumps({'config': {**config, **changed}}))
        with pytest.raises(SystemExit):
            script.main(['--caa-run', str(run), '--seed', '3' if not changed else '0', '--workdir', str(tmp_path)])
        assert __import__('re').search(expected, capsys.readouterr().err)
