"""`timm-fgvc predict`: top-k class names and probabilities for files and folders; bad files skipped by name."""
import csv
import json
import os

import pytest
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

import timm_fgvc  # noqa: F401
from timm_fgvc.cli import main
from timm_fgvc.data.synthetic import render_sample
from timm_fgvc.inference import eval_transform, load_model
from timm_fgvc.predict import predict

NAMES = ['alpha', 'beta', 'gamma', 'delta']


@pytest.fixture
def run_and_photos(tmp_path, make_run):
    torch.manual_seed(0)
    model = timm.create_model('s3n_tiny', num_classes=4)
    run = make_run(model, label_names=NAMES)
    photos = tmp_path / 'photos'
    (photos / 'sub').mkdir(parents=True)
    for i, where in enumerate(['a.png', 'b.jpg', 'sub/c.png']):
        render_sample(i, num_classes=4, image_size=64)['image'].save(photos / where)
    (photos / 'sub' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    (photos / '.hidden.png').write_bytes(b'ignored')
    return run, photos


def test_predict_a_folder_skips_the_corrupt_file_and_predicts_the_rest(run_and_photos, tmp_path, capsys):
    run, photos = run_and_photos
    out = tmp_path / 'preds.csv'
    code = main(['predict', '--checkpoint', str(run / 'model.safetensors'), str(photos), '--top-k', '3',
                 '--batch-size', '2', '--device', 'cpu', '--out', str(out)])
    captured = capsys.readouterr()
    assert code == 0
    broken = str(photos / 'sub' / 'broken.jpg')
    assert f'skipped {broken}' in captured.err and '3 file(s) predicted, 1 skipped' in captured.out
    rows = list(csv.DictReader(out.open()))
    assert [r['path'] for r in rows] == [str(photos / p) for p in ('a.png', 'b.jpg', 'sub/broken.jpg', 'sub/c.png')]
    loaded = load_model(checkpoint=run / 'model.safetensors', device='cpu')  # model, classes, names from the run
    transform, _ = eval_transform(loaded)
    for row in rows:
        if row['path'] == broken:
            assert row['error'] and not row['label_1']
            continue
        with torch.no_grad():
            probs = loaded.model(transform(Image.open(row['path']).convert('RGB'))[None]).softmax(-1)[0]
        top = probs.topk(3)
        assert [row[f'label_{k}'] for k in (1, 2, 3)] == [NAMES[i] for i in top.indices.tolist()]
        assert [float(row[f'probability_{k}']) for k in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert row['label_1'] in captured.out.split(row['path'])[1].split('\n')[0]  # and on the stdout table


def test_predict_jsonl_from_an_exported_folder_uses_its_label_names(tmp_path, make_run):
    from timm_fgvc.hub import export_run
    torch.manual_seed(0)
    model = timm.create_model('lfd_tiny', num_classes=4)
    # what train_fgvc.py records for a synthetic run at 64 px (its eval transform's config)
    data_config = resolve_data_config({'input_size': (3, 64, 64), 'crop_pct': 1.0}, model=model)
    run = make_run(model, label_names=NAMES, data_config={k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in data_config.items()})
    folder = export_run(run, tmp_path / 'export')
    image = tmp_path / 'x.png'
    render_sample(0, num_classes=4, image_size=64)['image'].save(image)
    out = tmp_path / 'preds.jsonl'
    assert main(['predict', '--model', f'local-dir:{folder}', str(image), '--out', str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record['path'] == str(image) and record['error'] is None
    assert sorted(record['labels']) == sorted(NAMES) and sum(record['probabilities']) == pytest.approx(1, abs=1e-4)
    from_run = predict(load_model(checkpoint=run), [image], progress=False)[0]
    assert from_run.labels == record['labels']  # the export and the run agree
    assert from_run.probabilities == pytest.approx(record['probabilities'], abs=1e-5)


def test_predict_errors_are_clear(tmp_path, run_and_photos):
    run, _ = run_and_photos
    assert main(['predict', '--checkpoint', str(run), str(tmp_path / 'nothing_here')]) == 2
    assert main(['predict', str(tmp_path)]) == 2  # no model and no checkpoint
    with pytest.raises(ValueError, match='.csv or .jsonl'):
        from timm_fgvc.predict import write_predictions
        write_predictions([], tmp_path / 'preds.txt')


def test_bad_requests_fail_before_any_image_is_predicted(tmp_path, run_and_photos, capsys):
    run, photos = run_and_photos
    weights = str(run / 'model.safetensors')
    # a wrong --out name is reported first, even before a missing checkpoint would be
    bad_out = str(tmp_path / 'p.json')
    assert main(['predict', '--checkpoint', str(tmp_path / 'none'), str(photos), '--out', bad_out]) == 2
    assert '.csv or .jsonl' in capsys.readouterr().err
    assert main(['predict', '--checkpoint', weights, str(photos), '--top-k', '0']) == 2
    assert 'at least 1' in capsys.readouterr().err
    assert main(['predict', '--checkpoint', weights, str(photos / 'sub' / 'broken.jpg')]) == 2  # nothing readable
    assert 'no file could be read' in capsys.readouterr().err


def test_a_checkpoint_loads_only_as_the_model_its_run_trained(tmp_path, run_and_photos, capsys):
    run, photos = run_and_photos
    with pytest.raises(ValueError, match='trained s3n_tiny'):
        load_model('lfd_tiny', checkpoint=run)  # another method: its run's arguments would not even fit
    with pytest.raises(ValueError, match='trained s3n_tiny'):
        load_model('s3n_resnet50', checkpoint=run)  # the same method on another backbone
    assert load_model('s3n_tiny', checkpoint=run).name == 's3n_tiny'
    assert main(['predict', '--checkpoint', str(run), str(photos), '--model-args', '{"no_such_arg": 1}']) == 2
    assert 'no_such_arg' in capsys.readouterr().err
    assert main(['predict', '--checkpoint', str(run), str(photos), '--model-args', '[1]']) == 2
    assert 'must be a JSON object' in capsys.readouterr().err
    assert main(['predict', '--checkpoint', str(run), str(photos), '--device', 'gpu']) == 2
    assert "--device 'gpu' is not a device" in capsys.readouterr().err
    assert main(['predict', '--model', f'local-dir:{run}', str(photos)]) == 2  # a run folder is not an export
    assert f'load it with --checkpoint {run}' in capsys.readouterr().err


def test_a_step_checkpoint_finds_its_run_and_loose_weights_say_what_they_lack(tmp_path, run_and_photos):
    import shutil
    run, _ = run_and_photos
    step = run / 'checkpoints' / 'step_00000006'
    step.mkdir(parents=True)
    shutil.copy(run / 'model.safetensors', step / 'model.safetensors')
    loaded = load_model(checkpoint=step, device='cpu')
    assert loaded.name == 's3n_tiny' and loaded.label_names == NAMES  # from the run two folders up
    loose = tmp_path / 'loose'
    loose.mkdir()
    shutil.copy(run / 'model.safetensors', loose / 'model.safetensors')
    with pytest.warns(UserWarning, match='No results.json'):
        assert load_model('s3n_tiny', checkpoint=loose, num_classes=4).label_names is None


def test_a_half_precision_model_predicts_as_the_fp32_one(run_and_photos):
    run, photos = run_and_photos
    full = predict(load_model(checkpoint=run, device='cpu'), [photos / 'a.png'], top_k=4, progress=False)[0]
    loaded = load_model(checkpoint=run, device='cpu')
    loaded.model.half()
    half = predict(loaded, [photos / 'a.png'], top_k=4, progress=False)[0]
    assert half.error is None  # every class (top-4 of 4), compared by name: near ties may swap ranks in fp16
    assert dict(zip(half.labels, half.probabilities)) == pytest.approx(dict(zip(full.labels, full.probabilities)),
                                                                       abs=0.02)


def test_the_table_columns_line_up_with_their_headers():
    from timm_fgvc.predict import Prediction, format_predictions
    rows = [Prediction('a.png', ['Black_footed_Albatross', 'b'], [0, 1], [0.91, 0.05]),
            Prediction('dir/b.jpg', ['c', 'Laysan_Albatross'], [2, 3], [0.5, 0.4]),
            Prediction('x.txt', error='not a readable image')]
    header, first, second, skipped = format_predictions(rows).splitlines()
    for column, cell in (('top-1', 'Black_footed'), ('top-2', 'b (0.050)')):
        assert header.index(column) == first.index(cell)
    assert header.index('top-2') == second.index('Laysan')
    assert skipped.endswith('skipped: not a readable image')


def test_a_folder_is_searched_through_its_symlinked_folders_once_each(tmp_path):
    """Training follows symlinked class folders; predicting a folder does too (Path.rglob did not, and their images
    were neither predicted nor listed as skipped). A loop is walked once; hidden files are not images."""
    from timm_fgvc.predict import find_files
    (tmp_path / 'elsewhere').mkdir()
    (tmp_path / 'photos' / 'own').mkdir(parents=True)
    for folder, name in (('elsewhere', 'linked.png'), ('photos/own', 'a.png'), ('photos', 'top.png')):
        Image.new('RGB', (8, 8)).save(tmp_path / folder / name)
    (tmp_path / 'photos' / '.DS_Store').write_bytes(b'')
    os.symlink(tmp_path / 'elsewhere', tmp_path / 'photos' / 'link', target_is_directory=True)
    os.symlink(tmp_path / 'photos', tmp_path / 'photos' / 'own' / 'loop', target_is_directory=True)
    found = [p.relative_to(tmp_path / 'photos').as_posix() for p in find_files([tmp_path / 'photos'])]
    assert found == ['link/linked.png', 'own/a.png', 'top.png']
