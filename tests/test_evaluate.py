"""`timm-fgvc eval`: the training script's final eval numbers for the same weights and data, per-class and per-head
accuracy, a confusion matrix, and SSANet's rotated / reduced-input robustness evaluations."""
import collections
import json

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import resize

from timm_fgvc.cli import main
from timm_fgvc.engine.config import parse_args
from timm_fgvc.engine.trainer import train
from timm_fgvc.evaluate import InputPerturbation, evaluate_model, robustness_table
from timm_fgvc.inference import eval_transform, load_model

SMALL = ['--synthetic-classes', '4', '--synthetic-train-per-class', '8', '--synthetic-test-per-class', '5',
         '--synthetic-image-size', '64', '--batch-size', '8', '--eval-batch-size', '6', '--model', 's3n_tiny',
         '--optimizer', 'sgd', '--lr', '0.05', '--warmup-epochs', '0', '--max-steps', '6', '--epochs', '2']


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    """A tiny train_fgvc.py run (6 steps of s3n_tiny on a 4-class synthetic set): its folder and results."""
    out = tmp_path_factory.mktemp('run')
    results = train(parse_args(SMALL + ['--output-dir', str(out)]))
    return out, results


def test_eval_equals_the_training_scripts_final_eval(trained_run):
    run, results = trained_run
    report = evaluate_model(load_model(checkpoint=run / 'model.safetensors', device='cpu'))
    final = results['final']
    assert report['samples'] == final['eval_samples'] == 20
    assert report['top1'] == pytest.approx(final['eval_top1'], abs=1e-9)
    assert report['top5'] == pytest.approx(final['eval_top5'], abs=1e-9)
    assert report['loss'] == pytest.approx(final['eval_loss'], rel=1e-5)  # the same images went through
    for head, top1 in report['top1_per_head'].items():
        assert top1 == pytest.approx(final[f'eval_top1_{head}'], abs=1e-9)
    assert set(report['top1_per_head']) == {'joint', 'original', 'discriminative', 'complementary'}
    confusion = torch.tensor(report['confusion_matrix'])
    assert int(confusion.sum()) == 20 and 100 * confusion.trace().item() / 20 == pytest.approx(report['top1'])
    for c, row in enumerate(report['per_class']):
        assert row['label'] == results['label_names'][c] and row['samples'] == int(confusion[c].sum())
        assert row['top1'] == pytest.approx(100 * confusion[c, c].item() / row['samples'])


def test_robustness_evaluates_every_image_rotated_and_shrunk_with_the_pad_asked_for(trained_run, monkeypatch):
    """SSANet's Tables 1-2: each angle and scale is one pass over the eval images, each image perturbed as named;
    a reduced image's border is black (zero pixels in model units) or the normalisation mean (0) with pad='mean'.
    At angle 0 and scale 1 the numbers are the plain eval's."""
    run, _ = trained_run
    loaded = load_model(checkpoint=run, device='cpu')
    seen = []
    perturb = InputPerturbation.__call__

    def recording(self, x):
        out = perturb(self, x)
        seen.append((self.angle, self.scale, out[:, 0, 0].tolist()))  # a corner pixel: fill once rotated or shrunk
        return out
    monkeypatch.setattr(InputPerturbation, '__call__', recording)
    mean, std = loaded.run['data_config']['mean'], loaded.run['data_config']['std']
    for pad, fill in (('black', [-m / s for m, s in zip(mean, std)]), ('mean', [0.0] * 3)):
        seen.clear()
        report = evaluate_model(loaded, robustness=True, rotations=(0.0, 45.0), scales=(1.0, 0.5), pad=pad)
        assert report['robustness']['rotation']['0'] == report['top1']
        assert report['robustness']['scale']['1'] == report['top1']
        assert collections.Counter((a, s) for a, s, _ in seen) == {
            (0.0, 1.0): 2 * report['samples'], (45.0, 1.0): report['samples'], (0.0, 0.5): report['samples']}
        assert all(corner == pytest.approx(fill, abs=1e-5) for a, s, corner in seen if (a, s) != (0.0, 1.0))
    assert not loaded.model.training  # still usable for prediction afterwards
    table = robustness_table([report, dict(report, model='other')])
    assert table.count('\n') == 3 and 'Rotated ±45°' in table and 'Reduced ×0.5' in table


def test_input_perturbation_rotates_and_shrinks_with_padding():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 8, 8)
    assert torch.allclose(InputPerturbation(angle=90, fill=(-1, -2))(x), torch.rot90(x, 1, (1, 2)), atol=1e-4)
    small = InputPerturbation(scale=0.5, fill=(-1, -2))(x)
    assert (small[0, :2] == -1).all() and (small[1, :, :2] == -2).all()  # padding, per channel
    assert torch.allclose(small[:, 2:6, 2:6], resize(x, [4, 4], antialias=True))  # the shrunk input, centred
    assert (small[:, 2:6, 2:6] >= 0).all()
    assert torch.equal(InputPerturbation()(x), x)


def test_cli_writes_report_confusion_png_and_robustness_table(trained_run, tmp_path, capsys):
    run, results = trained_run
    out = tmp_path / 'eval'
    code = main(['eval', '--checkpoint', str(run / 'model.safetensors'), '--dataset', 'synthetic', '--split', 'test',
                 '--robustness', '--out', str(out)])
    assert code == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['top1'] == pytest.approx(results['final']['eval_top1'])
    assert set(report['robustness']['rotation']) == {'-45', '-30', '-15', '15', '30', '45'}
    assert set(report['robustness']['scale']) == {'0.9', '0.8', '0.7', '0.6', '0.5'}
    with Image.open(out / 'confusion.png') as png:
        png.verify()
    assert (out / 'robustness.md').read_text().startswith('| Model | Original | Rotated ±15°')
    assert f"top-1 {report['top1']:.2f}%" in capsys.readouterr().out
    # a second model's eval joins the first one's row in one table (SSANet Tables 1-2: one row per method)
    (tmp_path / 'first.json').write_text(json.dumps(dict(report, model='baseline_resnet')))
    assert main(['eval', '--checkpoint', str(run), '--robustness', '--compare', str(tmp_path / 'first.json'),
                 '--max-samples', '4', '--out', str(tmp_path / 'second')]) == 0
    rows = (tmp_path / 'second' / 'robustness.md').read_text().splitlines()
    assert len(rows) == 4 and rows[2].startswith('| `baseline_resnet` |') and rows[3].startswith('| `s3n_tiny` |')
    assert main(['explain', '--checkpoint', str(run), '--image', 'x.png', '--panel-size', '96', '--out', 'x']) == 2
    # a dataset with other classes than the model: a clear error, exit 2
    assert main(['eval', '--checkpoint', str(run), '--dataset', str(tmp_path / 'missing'), '--out', str(out)]) == 2


def test_evals_of_runs_with_different_mixed_precision_run_in_one_process(trained_run):
    """Accelerate keeps one state per process: a notebook that evaluates an fp32 run, then a bf16 run, then the fp32
    one again gets three reports, and the last equals the first (the precision went back)."""
    run, _ = trained_run
    loaded = load_model(checkpoint=run, device='cpu')
    first = evaluate_model(loaded)
    fp32_run = loaded.run
    loaded.run = dict(fp32_run, config=dict(fp32_run['config'], mixed_precision='bf16'))
    half = evaluate_model(loaded)
    loaded.run = fp32_run
    again = evaluate_model(loaded)
    assert again['loss'] == pytest.approx(first['loss'], rel=1e-6) and again['top1'] == first['top1']
    assert half['loss'] != first['loss'] and half['loss'] == pytest.approx(first['loss'], rel=0.05)  # bf16 ran


def test_a_model_without_a_run_needs_the_data_named(tmp_path):
    """A Hub / exported model, or weights without their results.json, has no run data to fall back on: eval asks
    for --dataset instead of scoring it on synthetic images."""
    import timm
    from timm_fgvc.inference import LoadedModel
    loaded = LoadedModel(model=timm.create_model('s3n_tiny', num_classes=4).eval(), name='s3n_tiny')
    with pytest.raises(ValueError, match='--dataset'):
        evaluate_model(loaded, device='cpu')
    report = evaluate_model(loaded, dataset='synthetic', device='cpu', max_samples=4)  # named: it runs
    assert report['dataset'] == 'synthetic' and report['samples'] == 4


def test_a_run_on_a_relative_folder_evaluates_from_another_directory(tmp_path, monkeypatch):
    from timm_fgvc.data.synthetic import render_sample
    for split, per_class in (('train', 4), ('test', 2)):
        for c in range(2):
            folder = tmp_path / 'work' / 'birds' / split / f'class_{c}'
            folder.mkdir(parents=True)
            for i in range(per_class):
                render_sample(c + 2 * i, num_classes=2, image_size=48)['image'].save(folder / f'{i}.png')
    monkeypatch.chdir(tmp_path / 'work')
    results = train(parse_args(['--dataset', 'birds', '--model', 's3n_tiny', '--img-size', '48', '--batch-size', '4',
                                '--max-steps', '1', '--epochs', '1', '--output-dir', str(tmp_path / 'run')]))
    monkeypatch.chdir(tmp_path)  # 'birds' is not here
    report = evaluate_model(load_model(checkpoint=tmp_path / 'run', device='cpu'))
    assert report['samples'] == 4 and report['top1'] == pytest.approx(results['final']['eval_top1'], abs=1e-9)
    assert report['run_final_top1'] == results['final']['eval_top1']  # still the run's own data
    spelled = evaluate_model(load_model(checkpoint=tmp_path / 'run', device='cpu'), dataset='work/./birds/')
    assert spelled['run_final_top1'] == results['final']['eval_top1']  # the same folder, named another way
    on_train = evaluate_model(load_model(checkpoint=tmp_path / 'run', device='cpu'), split='train')
    assert on_train['split'] == 'train' and 'training split' in on_train['warnings'][0]
    (tmp_path / 'work' / 'birds').rename(tmp_path / 'work' / 'gone')
    with pytest.raises(FileNotFoundError, match='--dataset'):
        evaluate_model(load_model(checkpoint=tmp_path / 'run', device='cpu'))


def test_eval_reports_and_uses_the_size_the_run_evaluated_at(tmp_path):
    """A run trained at one size and evaluated at another (`--test-img-size`): its eval, and its exported model's
    (which carries the size as `test_input_size`, as predict reads it), run at that size and say so."""
    from timm_fgvc.hub import export_run
    run = tmp_path / 'run'
    results = train(parse_args(SMALL + ['--test-img-size', '80', '--max-steps', '1', '--output-dir', str(run)]))
    from_run = evaluate_model(load_model(checkpoint=run, device='cpu'))
    exported = export_run(run, tmp_path / 'export')
    loaded = load_model(f'local-dir:{exported}', device='cpu')
    from_export = evaluate_model(loaded, dataset='synthetic', split='test')
    at_80 = evaluate_model(loaded, dataset='synthetic', split='test', img_size=80)
    assert from_run['input_size'] == from_export['input_size'] == [3, 80, 80]
    # predict's and explain's transform with its data config: both at the size evaluated, not the 64 px trained
    for model in (load_model(checkpoint=run, device='cpu'), loaded):
        transform, data_cfg = eval_transform(model)
        assert tuple(data_cfg['input_size']) == (3, 80, 80) == tuple(transform(Image.new('RGB', (97, 71))).shape)
    assert from_run['loss'] == pytest.approx(results['final']['eval_loss'], rel=1e-5)
    assert from_export['loss'] == pytest.approx(at_80['loss'], rel=1e-6)  # not at the 64 px it trained at


def test_a_step_checkpoint_is_not_credited_with_the_runs_final_number(trained_run, tmp_path):
    import shutil
    run, results = trained_run
    final = evaluate_model(load_model(checkpoint=run, device='cpu'))
    assert final['run_final_top1'] == results['final']['eval_top1']
    step = tmp_path / 'run' / 'checkpoints' / 'step_00000003'
    step.mkdir(parents=True)
    shutil.copy(run / 'model.safetensors', step / 'model.safetensors')
    shutil.copy(run / 'results.json', tmp_path / 'run' / 'results.json')
    report = evaluate_model(load_model(checkpoint=step, device='cpu'))  # its run's data, found two folders up
    assert report['top1'] == final['top1'] and 'run_final_top1' not in report


def test_eval_checks_only_the_images_it_evaluates_and_counts_those_it_leaves_out(tmp_path, capsys):
    """A bad training image does not stop an eval (eval reads only its split); a bad test image stops it with
    advice, or with --skip-bad-images is left out and counted in the report and on the console."""
    import timm
    from timm_fgvc.data.synthetic import render_sample
    from timm_fgvc.inference import LoadedModel
    root = tmp_path / 'birds'
    for split, per_class in (('train', 2), ('test', 3)):
        for c in range(2):
            folder = root / split / f'class_{c}'
            folder.mkdir(parents=True)
            for i in range(per_class):
                render_sample(c + 2 * i, num_classes=2, image_size=48)['image'].save(folder / f'{i}.png')
    (root / 'train' / 'class_0' / 'broken.png').write_bytes(b'not a png')
    loaded = LoadedModel(model=timm.create_model('s3n_tiny', num_classes=2).eval(), name='s3n_tiny')
    assert evaluate_model(loaded, dataset=str(root), device='cpu')['samples'] == 6

    (root / 'test' / 'class_1' / 'broken.png').write_bytes(b'not a png')
    (root / 'test' / 'class_1' / 'notes.txt').write_text('not an image: left out and counted')
    with pytest.raises(ValueError, match=r'(?s)1 image\(s\).*broken\.png.*--skip-bad-images'):
        evaluate_model(loaded, dataset=str(root), device='cpu')
    report = evaluate_model(loaded, dataset=str(root), device='cpu', skip_bad_images=True)
    assert report['samples'] == 6 and report['bad_images_skipped'] == 1 and 'broken.png' in report['bad_images'][0]

    # the CLI: the same, through an exported model
    from timm_fgvc.hub import export_model
    folder = export_model(loaded.model, tmp_path / 'export', label_names=['class_0', 'class_1'])
    args = ['eval', '--model', f'local-dir:{folder}', '--dataset', str(root), '--device', 'cpu',
            '--out', str(tmp_path / 'eval')]
    assert main(args) == 2 and '--skip-bad-images' in capsys.readouterr().err
    assert main(args + ['--skip-bad-images']) == 0
    printed = capsys.readouterr().out
    assert '1 image(s) that cannot be read were left out' in printed
    assert 'Left out 1 file(s) of the dataset folder: ' in printed and 'notes.txt (not an image)' in printed
    saved = json.loads((tmp_path / 'eval' / 'report.json').read_text())
    assert saved['bad_images_skipped'] == 1 and saved['samples'] == 6 and saved['files_ignored'] == 1


def test_eval_names_what_it_scored_warns_on_a_held_out_draw_and_leaves_empty_classes_unscored(tmp_path, capsys):
    """Data without an eval split: a model without its run is scored on a seed-0 draw of the training folder,
    which may hold images it trained on (another --seed): the report and console name the draw and warn. A class
    with no image evaluated has no top-1 (not 0%) and is not listed among the lowest."""
    import timm
    from timm_fgvc.data.synthetic import render_sample
    from timm_fgvc.hub import export_model
    from timm_fgvc.inference import LoadedModel
    flat = tmp_path / 'flat'
    for c in range(2):
        (flat / f'class_{c}').mkdir(parents=True)
        for i in range(5):
            render_sample(c + 2 * i, num_classes=2, image_size=48)['image'].save(flat / f'class_{c}' / f'{i}.png')
    loaded = LoadedModel(model=timm.create_model('s3n_tiny', num_classes=2).eval(), name='s3n_tiny')
    report = evaluate_model(loaded, dataset=str(flat), device='cpu')
    assert report['split'] == "0.2 of 'train' held out (seed 0)" and report['samples'] == 2
    assert len(report['warnings']) == 1 and 'training images' in report['warnings'][0]
    split = tmp_path / 'split'
    for name, classes in (('train', (0, 1)), ('test', (1,))):  # the test split lacks class_0
        for c in classes:
            (split / name / f'class_{c}').mkdir(parents=True)
            for i in range(2):
                image = render_sample(c + 2 * i, num_classes=2, image_size=48)['image']
                image.save(split / name / f'class_{c}' / f'{i}.png')
    report = evaluate_model(loaded, dataset=str(split), device='cpu')
    assert report['split'] == 'test' and report['warnings'] == []
    assert [c['top1'] for c in report['per_class']][0] is None and report['per_class'][1]['top1'] is not None
    folder = export_model(loaded.model, tmp_path / 'export', label_names=['class_0', 'class_1'])
    assert main(['eval', '--model', f'local-dir:{folder}', '--dataset', str(flat), '--device', 'cpu',
                 '--out', str(tmp_path / 'eval')]) == 0
    printed = capsys.readouterr()
    assert "0.2 of 'train' held out (seed 0)" in printed.out and 'warning' in printed.err
    assert main(['eval', '--model', f'local-dir:{folder}', '--dataset', str(split), '--device', 'cpu',
                 '--out', str(tmp_path / 'eval2')]) == 0
    lowest = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('lowest'))
    assert 'class_0' not in lowest and '1 class(es) with no image evaluated' in lowest


def test_a_step_checkpoint_of_a_killed_run_loads_by_its_path_alone(tmp_path):
    """A run killed before it finished has no results.json: its step checkpoint still loads as the run's model, with
    its classes, class names and preprocessing (from run_config.json and the checkpoint's record of the data)."""
    run = tmp_path / 'run'
    train(parse_args(SMALL + ['--max-steps', '4', '--checkpoint-every', '2', '--test-img-size', '72',
                              '--model-args', '{"max_peaks": 8}', '--output-dir', str(run)]))
    step = sorted((run / 'checkpoints').glob('step_*'))[-1]
    finished = load_model(checkpoint=step, device='cpu')  # read with the finished run's results.json
    (run / 'results.json').unlink()
    (run / 'model.safetensors').unlink()  # now as a run killed after that checkpoint
    with pytest.warns(UserWarning, match='unfinished run'):
        killed = load_model(checkpoint=step, device='cpu')
    assert killed.name == finished.name == 's3n_tiny' and killed.label_names == finished.label_names
    assert killed.model.max_peaks == 8 and eval_transform(killed)[1] == eval_transform(finished)[1]
    x = torch.rand(2, 3, 72, 72)
    assert torch.equal(killed.model(x), finished.model(x))


def test_an_export_is_evaluated_on_the_images_its_run_held_out(tmp_path, capsys):
    """A run on a folder without an eval split holds out a seeded draw of it; its export records that draw, so
    `eval` of the export on the same folder scores those images (the run's own number, no warning), not a
    seed-0 draw that would hold some of its training images. Another folder of another name still warns."""
    from timm_fgvc.data.synthetic import render_sample
    from timm_fgvc.hub import export_run
    flat = tmp_path / 'birds'
    for c in range(2):
        (flat / f'class_{c}').mkdir(parents=True)
        for i in range(10):
            render_sample(c + 2 * i, num_classes=2, image_size=48)['image'].save(flat / f'class_{c}' / f'{i}.png')
    run = tmp_path / 'run'
    results = train(parse_args(['--dataset', str(flat), '--model', 's3n_tiny', '--img-size', '48', '--seed', '3',
                                '--eval-fraction', '0.4', '--batch-size', '4', '--max-steps', '2', '--epochs', '1',
                                '--output-dir', str(run)]))
    exported = export_run(run, tmp_path / 'export')
    record = json.loads((exported / 'config.json').read_text())['training_data']
    assert record == {'dataset': 'local folder birds', 'folder': 'birds', 'train_split': 'train', 'eval_fraction': 0.4,
                      'seed': 3, 'images': 20}
    loaded = load_model(f'local-dir:{exported}', device='cpu')
    report = evaluate_model(loaded, dataset=str(flat))
    assert report['split'] == "0.4 of 'train' held out (seed 3)" and report['warnings'] == []
    assert report['samples'] == results['final']['eval_samples'] == 8
    assert report['top1'] == pytest.approx(results['final']['eval_top1'])
    assert report['loss'] == pytest.approx(results['final']['eval_loss'], rel=1e-4)
    import shutil
    shutil.copytree(flat, tmp_path / 'other')
    other = evaluate_model(loaded, dataset=str(tmp_path / 'other'))
    assert other['split'] == "0.2 of 'train' held out (seed 0)" and 'training images' in other['warnings'][0]
    # a folder of the same name with other images: the run's draw is used, and said not to be the run's
    (tmp_path / 'elsewhere').mkdir()
    shutil.copytree(flat, tmp_path / 'elsewhere' / 'birds')
    (tmp_path / 'elsewhere' / 'birds' / 'class_0' / '9.png').unlink()
    changed = evaluate_model(loaded, dataset=str(tmp_path / 'elsewhere' / 'birds'))
    assert len(changed['warnings']) == 1 and 'holds 19 images' in changed['warnings'][0]


def test_a_runs_own_held_out_images_are_evaluated_only_while_its_data_is_as_it_was(tmp_path):
    """A run held half of a folder out. Images added since would move the draw (6 of 11 scored images were training
    images, silently): eval of the run refuses, as resume does. The folder as it was evaluates as the run did."""
    from timm_fgvc.data.synthetic import render_sample
    birds = tmp_path / 'birds'
    for c in range(2):
        (birds / f'class_{c}').mkdir(parents=True)
        for i in range(4):
            render_sample(c + 2 * i, num_classes=2, image_size=48)['image'].save(birds / f'class_{c}' / f'{i}.png')
    results = train(parse_args(['--dataset', str(birds), '--model', 's3n_tiny', '--img-size', '48', '--batch-size',
                                '2', '--max-steps', '1', '--eval-fraction', '0.5',
                                '--output-dir', str(tmp_path / 'run')]))
    report = evaluate_model(load_model(checkpoint=tmp_path / 'run', device='cpu'))
    assert report['samples'] == 4 and report['top1'] == pytest.approx(results['final']['eval_top1'], abs=1e-9)
    for i in range(4, 8):
        render_sample(2 * i, num_classes=2, image_size=48)['image'].save(birds / 'class_0' / f'{i}.png')
    with pytest.raises(ValueError, match=r"(?s)data changed since it trained.*eval images 4 then, 6 now.*trained on"):
        evaluate_model(load_model(checkpoint=tmp_path / 'run', device='cpu'))


def test_eval_on_other_data_matches_classes_by_name(tmp_path, make_run):
    """A model whose classes come in a Hub order (c, a, b) is evaluated on a folder (classes listed a, b, c) and on
    a test folder of two of its classes: the labels follow the names (both were refused: 'not in the same
    order', 'the model has 3 classes'); a class the model does not know is refused by name."""
    import timm
    model = timm.create_model('s3n_tiny', num_classes=3)
    run = make_run(model, label_names=['c', 'a', 'b'])
    loaded = load_model(checkpoint=run, device='cpu')
    for classes in (('a', 'b', 'c'), ('a', 'c')):
        folder = tmp_path / ''.join(classes)
        for name in classes:
            (folder / 'test' / name).mkdir(parents=True)
            (folder / 'train' / name).mkdir(parents=True)
            for i in range('abc'.index(name) + 1):  # a: 1 image, b: 2, c: 3, so each class is told by its count
                for split in ('train', 'test'):
                    Image.new('RGB', (64, 64), (i, 0, 0)).save(folder / split / name / f'{i}.png')
        report = evaluate_model(loaded, dataset=str(folder))
        assert report['label_names'] == ['c', 'a', 'b']
        assert {c['label']: c['samples'] for c in report['per_class']} == {
            name: 'abc'.index(name) + 1 if name in classes else 0 for name in ('c', 'a', 'b')}
    (tmp_path / 'abc' / 'test' / 'd').mkdir()
    (tmp_path / 'abc' / 'train' / 'd').mkdir()
    for split in ('train', 'test'):
        Image.new('RGB', (64, 64)).save(tmp_path / 'abc' / split / 'd' / '0.png')
    with pytest.raises(ValueError, match=r"1 class\(es\) the model was not trained on \(\['d'\]"):
        evaluate_model(loaded, dataset=str(tmp_path / 'abc'))


def test_eval_of_a_run_on_a_folder_it_never_saw_scores_every_image(tmp_path, make_run):
    """A run held a fraction of its own data out; a new folder without split folders is all test images: it is
    scored whole (it was cut to the run's --eval-fraction), without the caveat that they are training images."""
    import timm
    run = make_run(timm.create_model('s3n_tiny', num_classes=2), label_names=['a', 'b'], dataset='synthetic',
                   config={'eval_fraction': 0.5, 'shots': 3})
    for name in ('a', 'b'):
        (tmp_path / 'new' / name).mkdir(parents=True)
        for i in range(4):
            Image.new('RGB', (64, 64), (i * 60, 0, 0)).save(tmp_path / 'new' / name / f'{i}.png')
    report = evaluate_model(load_model(checkpoint=run, device='cpu'), dataset=str(tmp_path / 'new'))
    assert report['samples'] == 8 and report['split'] == 'train' and report['warnings'] == []
