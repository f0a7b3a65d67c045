"""Data loading (issues 10-11): bad images found at load time, 16-bit images scaled, symlinked class folders,
save_to_disk and parquet folders, and a one-class folder refused. Small image folders made by the tests."""
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from timm_fgvc.data.loading import BadImagesError, attach_transform, load_fgvc_dataset, open_image, to_rgb
from timm_fgvc.engine.config import TrainConfig
from timm_fgvc.engine.trainer import train


def make_image_folder(root: Path, splits=('train', 'test'), classes=('a', 'b', 'c'), per_class=4, size=(40, 32)):
    for split in splits:
        for c_index, cls in enumerate(classes):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new('RGB', size, (40 * c_index, 10 * i, 100)).save(folder / f'{i}.png')
    return root


def add_bad_images(folder: Path):
    """A zero-byte JPEG and a JPEG cut in half, next to good images."""
    (folder / 'empty.jpg').write_bytes(b'')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / 'whole.jpg', quality=90)
    data = (folder / 'whole.jpg').read_bytes()
    (folder / 'truncated.jpg').write_bytes(data[:len(data) // 2])
    (folder / 'whole.jpg').unlink()


def test_bad_images_are_listed_at_load_time_and_can_be_skipped(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    add_bad_images(root / 'train' / 'b')
    with pytest.raises(BadImagesError, match=r'(?s)2 image\(s\).*--skip-bad-images') as info:
        load_fgvc_dataset(str(root))
    named = ' '.join(info.value.bad)
    assert 'empty.jpg' in named and 'truncated.jpg' in named and 'truncated' in named
    data = load_fgvc_dataset(str(root), skip_bad_images=True)
    assert len(data.train) == 12 and len(data.eval) == 12 and len(data.bad_images) == 2
    unreadable_test = make_image_folder(tmp_path / 'unreadable_test', classes=('a', 'b'), per_class=1)
    for image in (unreadable_test / 'test').rglob('*.png'):
        image.write_bytes(b'')
    with pytest.raises(BadImagesError, match=r"None of the 2 eval images of .* can be read .*nothing is left"):
        load_fgvc_dataset(str(unreadable_test), skip_bad_images=True)  # not an eval top-1 of nan
    # every row left decodes through the training transform
    rows = attach_transform(data.train, lambda image: np.asarray(image).shape, data.image_column, data.label_column)
    assert {rows[i]['pixel_values'] for i in range(len(rows))} == {(32, 40, 3)}
    # without the load-time check, the file is named when it is decoded (for predict and explain, without advice
    # about a training flag); a dataset's rows add where --skip-bad-images helps
    with pytest.raises(ValueError, match=r'Cannot read image .*truncated\.jpg') as info:
        open_image(str(root / 'train' / 'b' / 'truncated.jpg'))
    assert '--skip-bad-images' not in str(info.value)
    unchecked = load_fgvc_dataset(str(root), check_images=False)
    rows = attach_transform(unchecked.train, lambda image: 0, unchecked.image_column, unchecked.label_column)
    with pytest.raises(ValueError, match=r'(?s)Cannot read image .*\.jpg.*--skip-bad-images \(train_fgvc\.py, '
                                         r'timm-fgvc eval\)'):
        [rows[i] for i in range(len(rows))]


def test_skipped_bad_images_are_counted_in_results(tmp_path):
    root = make_image_folder(tmp_path / 'data', per_class=4, size=(64, 64))
    add_bad_images(root / 'train' / 'a')
    (root / 'train' / 'a' / 'labels.txt').write_text('not an image')
    cfg = TrainConfig(model='test_resnet', dataset=str(root), img_size=64, crop_pct=1.0, batch_size=4, max_steps=1,
                      epochs=1, output_dir=str(tmp_path / 'run'), skip_bad_images=True)
    results = train(cfg)
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert results['bad_images_skipped'] == saved['bad_images_skipped'] == 2
    assert saved['files_ignored'] == 1  # labels.txt
    assert saved['data'] == {'train_split': 'train', 'eval_split': 'test', 'image_column': 'image',
                             'label_column': 'label', 'train_samples': 12, 'eval_samples': 12, 'num_classes': 3,
                             'unlabelled_splits_passed_over': [], 'eval_held_out': False}
    assert sorted(Path(entry.split(':')[0]).name for entry in saved['bad_images']) == ['empty.jpg', 'truncated.jpg']
    with pytest.raises(BadImagesError, match='truncated.jpg'):
        train(TrainConfig(**dict(cfg.to_dict(), skip_bad_images=False, output_dir=str(tmp_path / 'run2'))))


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'deep.png')
    with Image.open(tmp_path / 'deep.png') as image:
        assert image.mode.startswith('I;16')
        assert (np.asarray(image.convert('RGB')) == 255).mean() > 0.9  # PIL's convert clips
    rgb = np.asarray(open_image(str(tmp_path / 'deep.png'))).astype(float)
    assert rgb.shape == (64, 64, 3) and np.all(rgb[..., 0] == rgb[..., 2])
    np.testing.assert_allclose(rgb[..., 0], ramp / 257.0, atol=0.51)
    as_int32 = Image.fromarray(ramp.astype(np.int32), 'I')  # the same data in PIL's 32-bit mode
    np.testing.assert_allclose(np.asarray(to_rgb(as_int32))[..., 1], ramp / 257.0, atol=0.51)
    eight_bit = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert np.array_equal(np.asarray(to_rgb(eight_bit))[..., 0], np.asarray(eight_bit))


def test_symlinked_class_folders_are_followed(tmp_path):
    source = make_image_folder(tmp_path / 'full', classes=('a', 'b', 'c'), per_class=3)
    subset = tmp_path / 'subset'
    for split in ('train', 'test'):
        (subset / split).mkdir(parents=True)
        for cls in ('a', 'c'):  # a two-class subset made without copying
            os.symlink(source / split / cls, subset / split / cls, target_is_directory=True)
    data = load_fgvc_dataset(str(subset))
    assert data.label_names == ['a', 'c'] and len(data.train) == 6 and len(data.eval) == 6
    assert sorted(data.train['label']) == [0, 0, 0, 1, 1, 1]
    pixel = np.asarray(open_image(data.train.cast_column('image', datasets.Image(decode=False))[3]['image']))
    assert tuple(pixel[0, 0]) == (80, 0, 100)  # class 'c' (index 2 in the source), image 0


def test_save_to_disk_and_parquet_folders(tmp_path):
    original = load_fgvc_dataset(str(make_image_folder(tmp_path / 'images', per_class=3)))
    dataset = datasets.DatasetDict({'train': original.train, 'test': original.eval})
    dataset = dataset.cast_column('image', datasets.Image(decode=True))
    dataset.save_to_disk(str(tmp_path / 'saved'))
    parquet = tmp_path / 'parquet'
    parquet.mkdir()
    for split, part in dataset.items():
        part.to_parquet(str(parquet / f'{split}-00000-of-00001.parquet'))
    for folder in ('saved', 'parquet'):
        data = load_fgvc_dataset(str(tmp_path / folder))
        assert data.label_names == ['a', 'b', 'c'], folder
        assert len(data.train) == 9 and len(data.eval) == 9, folder
        assert sorted(data.eval['label']) == sorted(original.eval['label']), folder
        first = np.asarray(data.train[0]['image'].convert('RGB'))
        assert first.shape == (32, 40, 3), folder
    train_only = tmp_path / 'saved_train'
    original.train.save_to_disk(str(train_only))  # a single Dataset: its eval part is held out here
    data = load_fgvc_dataset(str(train_only), eval_fraction=1 / 3)
    assert len(data.train) == 6 and len(data.eval) == 3


def test_integer_labels_of_a_separate_eval_split_keep_their_class_and_a_capped_eval_spans_the_classes(tmp_path):
    """Raw integer labels 0-11 (not a ClassLabel) in train and test parquet files: each test image keeps its class
    (string encoding would put class 10 after 1), the class names are in numeric order, and --max-eval-samples
    draws over the classes rather than taking the first of a split sorted by class."""
    parquet = tmp_path / 'parquet'
    parquet.mkdir()
    for split, per_class in (('train', 2), ('test', 3)):
        rows = {'image': [], 'label': []}
        for label in range(12):
            for i in range(per_class):  # the pixel value encodes the class
                rows['image'].append(Image.new('RGB', (8, 8), (label * 20, i, 0)))
                rows['label'].append(label)
        part = datasets.Dataset.from_dict(rows, features=datasets.Features(
            {'image': datasets.Image(), 'label': datasets.Value('int64')}))
        part.to_parquet(str(parquet / f'{split}-00000-of-00001.parquet'))
    data = load_fgvc_dataset(str(parquet))
    assert data.label_names == [str(c) for c in range(12)]
    for split in (data.train, data.eval):
        for row in split:
            assert data.label_names[row['label']] == str(row['image'].getpixel((0, 0))[0] // 20)
    capped = load_fgvc_dataset(str(parquet), max_eval_samples=12, seed=0)
    assert len(capped.eval) == 12 and len(set(capped.eval['label'])) >= 6
    stray = tmp_path / 'stray'
    stray.mkdir()
    (parquet / 'train-00000-of-00001.parquet').rename(stray / 'train-00000-of-00001.parquet')
    part = datasets.Dataset.from_dict({'image': [Image.new('RGB', (8, 8))] * 2, 'label': [0, 99]})
    part.to_parquet(str(stray / 'test-00000-of-00001.parquet'))
    with pytest.raises(ValueError, match=r"label\(s\) \['99'\]"):
        load_fgvc_dataset(str(stray))


def test_class_folders_named_like_splits_or_nested_stay_one_class_each(tmp_path):
    """CIFAR-100 has a class named `train`: in a folder of class folders it is a class, not a split whose images
    `datasets`' imagefolder would train on, and `test_tube` is not an eval split. A class folder's subfolders are
    its images (torchvision's ImageFolder), not classes of their own. Hidden files are not data; other files and
    images outside a class folder are left out and counted."""
    flat = make_image_folder(tmp_path / 'flat', splits=('',), classes=('apple', 'test_tube', 'train'), per_class=5)
    data = load_fgvc_dataset(str(flat), eval_fraction=0.4)
    assert data.label_names == ['apple', 'test_tube', 'train']
    assert len(data.train) == 9 and len(data.eval) == 6 and data.ignored_files == []
    for split in (data.train, data.eval):  # each image keeps its folder's class (its red value is the class index)
        assert {(row['image'].getpixel((0, 0))[0] // 40, row['label']) for row in split} == {(0, 0), (1, 1), (2, 2)}

    nested = make_image_folder(tmp_path / 'nested', classes=('a', 'b'), per_class=2)
    for split in ('train', 'test'):
        make_image_folder(nested / split / 'a', splits=('',), classes=('male', 'female'), per_class=2)
        (nested / split / 'b' / '._0.png').write_bytes(b'macOS resource fork')  # hidden: not an image, not counted
        (nested / split / '.cache').mkdir()
    (nested / 'train' / 'b' / 'notes.txt').write_text('not an image')
    (nested / 'train' / 'b' / 'Thumbs.db').write_bytes(b'')
    (nested / 'README.md').write_text('a file beside the split folders')
    Image.new('RGB', (8, 8)).save(nested / 'train' / 'cover.jpg')  # outside a class folder: train stays a split
    os.symlink(nested / 'train' / 'a', nested / 'train' / 'a' / 'male' / 'loop', target_is_directory=True)
    data = load_fgvc_dataset(str(nested))
    assert data.label_names == ['a', 'b']
    assert sorted(data.train['label']) == [0] * 6 + [1] * 2 and len(data.eval) == 8  # the loop's images once
    assert sorted(Path(f.split(' (')[0]).name for f in data.ignored_files) == ['README.md', 'cover.jpg', 'notes.txt']


def test_split_folders_named_as_downloads_name_them_and_wrapper_folders_are_read(tmp_path):
    """Kaggle's cats-and-dogs: training_set/training_set/<class>, test_set/test_set/<class>, all under data/."""
    root = tmp_path / 'download'
    for split, wrapped in (('training_set', 3), ('test_set', 2)):
        make_image_folder(root / 'data' / split / split, splits=('',), classes=('cat', 'dog'), per_class=wrapped)
    (root / 'data' / 'LICENSE.txt').write_text('a file in a wrapper folder')
    Image.new('RGB', (8, 8)).save(root / 'cover.jpg')
    data = load_fgvc_dataset(str(root))
    assert data.label_names == ['cat', 'dog'] and len(data.train) == 6 and len(data.eval) == 4
    assert sorted(Path(f.split(' (')[0]).name for f in data.ignored_files) == ['LICENSE.txt', 'cover.jpg']
    paths = [row['path'] for row in data.eval.cast_column('image', datasets.Image(decode=False))['image']]
    assert all(Path(path).parts[-3] == 'test_set' for path in paths)
    # a split holding one class whose images are in subfolders: that class, not its subfolders
    one_class = make_image_folder(tmp_path / 'one_test_class', splits=('train',), classes=('a', 'b'), per_class=2)
    make_image_folder(one_class / 'test' / 'a', splits=('',), classes=('side', 'top'), per_class=1)
    data = load_fgvc_dataset(str(one_class))
    assert data.label_names == ['a', 'b'] and data.eval['label'] == [0, 0]


def test_image_folders_that_cannot_be_read_one_way_say_why(tmp_path):
    mixed = make_image_folder(tmp_path / 'mixed', classes=('a', 'b'), per_class=2)
    make_image_folder(mixed / 'extra', splits=('',), classes=('a',), per_class=1)
    with pytest.raises(ValueError, match=r"holds split folders \(\['test', 'train'\]: named like a split and holding "
                                         r"folders\), but 'extra' is not a split folder .*: move it out"):
        load_fgvc_dataset(str(mixed))
    only_test = make_image_folder(tmp_path / 'only_test', splits=('test',), classes=('a', 'b'), per_class=2)
    with pytest.raises(ValueError, match=r"no train folder among the split folders \['test'\]"):  # not trained on
        load_fgvc_dataset(str(only_test))
    unlabelled = make_image_folder(tmp_path / 'unlabelled', splits=('train',), classes=('a', 'b'), per_class=2)
    (unlabelled / 'test').mkdir()
    Image.new('RGB', (8, 8)).save(unlabelled / 'test' / '0.png')
    with pytest.raises(ValueError, match=r"'test' is named like a split but holds no class folders"):
        load_fgvc_dataset(str(unlabelled))
    no_train = make_image_folder(tmp_path / 'no_train', splits=('val', 'test'), classes=('a', 'b'), per_class=2)
    with pytest.raises(ValueError, match=r"no train folder among the split folders \['test', 'val'\]"):
        load_fgvc_dataset(str(no_train))
    unseen = make_image_folder(tmp_path / 'unseen', classes=('a', 'b'), per_class=2)
    make_image_folder(unseen / 'test', splits=('',), classes=('c',), per_class=1)
    with pytest.raises(ValueError, match=r"\['c'\] of the 'test' split have no training images"):
        load_fgvc_dataset(str(unseen))
    other_format = make_image_folder(tmp_path / 'other_format', splits=('',), classes=('a', 'b'), per_class=2)
    (other_format / 'c').mkdir()
    (other_format / 'c' / '0.xyz').write_bytes(b'raw')
    with pytest.raises(ValueError, match=r"/c' holds 1 file\(s\) and none is an image \('0.xyz'"):
        load_fgvc_dataset(str(other_format))
    loose = tmp_path / 'loose'
    loose.mkdir()
    Image.new('RGB', (8, 8)).save(loose / 'bird.png')
    with pytest.raises(ValueError, match='1 image\\(s\\) lie directly in .*outside a class folder'):
        load_fgvc_dataset(str(loose))


def test_an_image_folder_with_a_metadata_file_takes_its_labels_from_it(tmp_path):
    """`datasets`' imagefolder reads labels from metadata.csv; integer labels are classes in numeric order."""
    root = tmp_path / 'meta'
    root.mkdir()
    lines = ['file_name,label']
    for label in range(12):
        Image.new('RGB', (8, 8), (label * 20, 0, 0)).save(root / f'{label}.png')
        lines.append(f'{label}.png,{label}')
    (root / 'metadata.csv').write_text('\n'.join(lines) + '\n')
    Image.new('RGB', (8, 8)).save(root / 'not_listed.png')  # datasets drops it unsaid: it is listed as left out
    (root / '__MACOSX').mkdir()  # a zip's macOS copies are not data, as in a folder without a metadata file
    Image.new('RGB', (8, 8)).save(root / '__MACOSX' / '0.png')
    data = load_fgvc_dataset(str(root), eval_fraction=0, check_images=False)
    assert data.label_names == [str(c) for c in range(12)] and len(data.train) == 12
    assert [Path(f.split(' (')[0]).name for f in data.ignored_files] == ['not_listed.png']
    assert all(data.label_names[row['label']] == str(row['image'].getpixel((0, 0))[0] // 20) for row in data.train)
    in_a_class = make_image_folder(tmp_path / 'in_a_class', splits=('',), classes=('a', 'b'), per_class=2)
    (in_a_class / 'a' / 'metadata.csv').write_text('file_name,author\n0.png,x\n')  # a class's own file
    data = load_fgvc_dataset(str(in_a_class), eval_fraction=0, check_images=False)
    assert data.label_names == ['a', 'b'] and len(data.train) == 4 and len(data.ignored_files) == 1


def _labelled_split(names, labels, tag):
    """Rows whose pixel's red value encodes the class name's index in 'abcd' (checked against the label)."""
    images = [Image.new('RGB', (8, 8), ('abcd'.index(names[y]) * 50 if y >= 0 else 255, tag, 0)) for y in labels]
    return datasets.Dataset.from_dict({'image': images, 'label': labels}, features=datasets.Features(
        {'image': datasets.Image(), 'label': datasets.ClassLabel(names=names)}))


def test_an_eval_split_with_its_own_class_list_is_matched_by_name_and_a_hidden_test_split_is_passed_over(tmp_path):
    """Hub datasets may store a ClassLabel per split: the test split's index 0 need not be train's class 0. And a
    Hub test split often hides its labels (-1): the labelled validation split is evaluated instead, and said."""
    train = _labelled_split(['a', 'b', 'c'], [0, 1, 2] * 3, 0)
    reordered = _labelled_split(['c', 'a'], [0, 1, 1, 0], 1)  # a subset of train's classes, in another order
    hidden = _labelled_split(['a', 'b', 'c'], [-1] * 3, 2)
    datasets.DatasetDict({'train': train, 'test': reordered}).save_to_disk(str(tmp_path / 'reordered'))
    data = load_fgvc_dataset(str(tmp_path / 'reordered'), check_images=False)
    assert data.label_names == ['a', 'b', 'c'] and data.eval_split == 'test'
    assert [data.label_names[row['label']] for row in data.eval] == ['c', 'a', 'a', 'c']
    assert all('abcd'[row['image'].getpixel((0, 0))[0] // 50] == data.label_names[row['label']] for row in data.eval)

    datasets.DatasetDict({'train': train, 'test': hidden, 'validation': reordered}).save_to_disk(str(tmp_path / 'hid'))
    data = load_fgvc_dataset(str(tmp_path / 'hid'), check_images=False)
    assert data.eval_split == 'validation' and data.unlabelled_splits == ['test'] and len(data.eval) == 4
    assert data.description()['unlabelled_splits_passed_over'] == ['test']
    with pytest.raises(ValueError, match=r"3 of 3 rows of the 'test' split .* have no 'label' label"):
        load_fgvc_dataset(str(tmp_path / 'hid'), eval_split='test', check_images=False)
    datasets.DatasetDict({'train': train, 'test': hidden.remove_columns('label')}).save_to_disk(str(tmp_path / 'nolab'))
    data = load_fgvc_dataset(str(tmp_path / 'nolab'), eval_fraction=1 / 3, check_images=False)
    assert data.eval_split == "0.333333 of 'train' held out (seed 0)" and len(data.eval) == 3
    # an empty test split is no eval split either: --eval-fraction is held out (it trained without evaluation)
    no_test = dict(num_classes=3, train_per_class=3, test_per_class=0, image_size=32, seed=0)
    data = load_fgvc_dataset('synthetic', eval_fraction=1 / 3, synthetic_args=no_test)
    assert data.eval_split == "0.333333 of 'train' held out (seed 0)" and data.unlabelled_splits == ['test']
    with pytest.raises(ValueError, match=r"The 'test' split of 'synthetic' is empty"):
        load_fgvc_dataset('synthetic', eval_split='test', synthetic_args=no_test)

    extra = _labelled_split(['a', 'd'], [0, 1], 3)  # a class train does not have
    datasets.DatasetDict({'train': train, 'test': extra}).save_to_disk(str(tmp_path / 'extra'))
    with pytest.raises(ValueError, match=r"label\(s\) \['d'\] that the training split does not"):
        load_fgvc_dataset(str(tmp_path / 'extra'), check_images=False)
    unlabelled_train = datasets.Dataset.from_dict({'image': [Image.new('RGB', (8, 8))] * 3, 'label': ['a', None, 'b']})
    datasets.DatasetDict({'train': unlabelled_train}).save_to_disk(str(tmp_path / 'none'))
    with pytest.raises(ValueError, match=r"1 of 3 rows of the 'train' split .* have no 'label' label"):
        load_fgvc_dataset(str(tmp_path / 'none'), check_images=False)


def test_float_and_bool_label_columns_are_classes_and_a_fractional_one_is_refused(tmp_path):
    """pandas stores an integer column with a gap as floats (3.0) and a yes/no column as bools: each value is a class,
    numbered in numeric order (10 after 9), and an eval split written as integers matches train's floats by value;
    a NaN label is a missing one; fractional numbers are a regression target, not classes."""
    def split(labels, tag):  # the pixel's red value encodes the label
        images = [Image.new('RGB', (8, 8), (int(y) * 20 if y == y else 0, tag, 0)) for y in labels]  # y != y: NaN
        return datasets.Dataset.from_dict({'image': images, 'label': labels})

    floats = split([2.0, 10.0, 9.0] * 2, 0)
    assert floats.features['label'].dtype == 'float64'
    datasets.DatasetDict({'train': floats, 'test': split([10, 2, 9], 1)}).save_to_disk(str(tmp_path / 'floats'))
    data = load_fgvc_dataset(str(tmp_path / 'floats'), check_images=False)
    assert data.label_names == ['2', '9', '10']
    for part in (data.train, data.eval):
        assert all(data.label_names[row['label']] == str(row['image'].getpixel((0, 0))[0] // 20) for row in part)
    flags = datasets.Dataset.from_dict({'image': [Image.new('RGB', (8, 8), (int(b), 0, 0)) for b in [True, False] * 3],
                                        'label': [True, False] * 3})
    datasets.DatasetDict({'train': flags}).save_to_disk(str(tmp_path / 'flags'))
    data = load_fgvc_dataset(str(tmp_path / 'flags'), eval_fraction=0, check_images=False)
    assert data.label_names == ['False', 'True']
    assert all(row['image'].getpixel((0, 0))[0] == row['label'] for row in data.train)
    datasets.DatasetDict({'train': split([2.0, float('nan'), 9.0], 0)}).save_to_disk(str(tmp_path / 'nan'))
    with pytest.raises(ValueError, match=r"1 of 3 rows of the 'train' split .* have no 'label' label"):
        load_fgvc_dataset(str(tmp_path / 'nan'), check_images=False)
    scores = datasets.Dataset.from_dict({'image': [Image.new('RGB', (8, 8))] * 3, 'label': [0.25, 0.5, 1.0]})
    datasets.DatasetDict({'train': scores}).save_to_disk(str(tmp_path / 'scores'))
    with pytest.raises(ValueError, match=r"(?s)fractional numbers \(e.g. 0.25\).*--label-column"):
        load_fgvc_dataset(str(tmp_path / 'scores'), check_images=False)


def test_columns_are_detected_by_common_name_before_type_and_column_order():
    """A ClassLabel flag is not the label when a column is named `label`; `label` before `labels`; CIFAR-100's
    `fine_label` whichever column comes first; an image column named `image` before a `mask`."""
    from timm_fgvc.data.loading import detect_columns
    image, label = datasets.Image(), datasets.ClassLabel(names=['x', 'y'])
    cases = [({'mask': image, 'image': image, 'is_synthetic': label, 'label': datasets.Value('string')},
              ('image', 'label')),
             ({'img': image, 'labels': label, 'label': label}, ('img', 'label')),
             ({'img': image, 'coarse_label': label, 'fine_label': label}, ('img', 'fine_label')),
             ({'photo': image, 'species': label}, ('photo', 'species'))]
    for columns, expected in cases:
        assert detect_columns(datasets.Features(columns)) == expected, columns


def test_a_single_class_folder_says_two_classes_are_needed(tmp_path):
    make_image_folder(tmp_path / 'one', splits=('',), classes=('only',), per_class=3)
    with pytest.raises(ValueError, match='at least 2 classes'):
        load_fgvc_dataset(str(tmp_path / 'one'))


def test_a_photo_with_an_exif_orientation_is_read_upright_as_datasets_reads_it(tmp_path):
    """A phone photo stores its pixels sideways with an EXIF orientation; training and predict read it upright,
    as `datasets` decodes its Image feature, not on its side."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high as stored
    pixels[:, :10] = 255  # the stored left edge is white
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / 'phone.jpg'
    stored.save(path, exif=exif, quality=95)
    upright = np.asarray(open_image(str(path))).astype(float)
    assert upright.shape == (40, 20, 3)  # turned: 20 wide, 40 high
    assert upright[:10].mean() > 200 and upright[12:].mean() < 50  # the stored left edge is now the top
    from_datasets = datasets.Image().decode_example({'path': str(path), 'bytes': None})
    assert np.abs(np.asarray(from_datasets.convert('RGB')).astype(float) - upright).max() < 1


def test_a_class_too_small_to_hold_out_from_is_named_with_what_to_do(tmp_path):
    root = make_image_folder(tmp_path / 'data', splits=('',), per_class=3)
    (root / 'lonely').mkdir()
    Image.new('RGB', (40, 32)).save(root / 'lonely' / '0.png')
    with pytest.raises(ValueError, match=r"(?s)smallest class is 'lonely' with 1 image.*--eval-fraction 0"):
        load_fgvc_dataset(str(root))
    assert load_fgvc_dataset(str(root), eval_fraction=0).eval is None
    # 10 images in 4 classes: 0.2 holds out 2, too few for a test image per class; 0.9 leaves 1 to train on
    with pytest.raises(ValueError, match='a larger --eval-fraction'):
        load_fgvc_dataset(str(root), eval_fraction=0.2)
    with pytest.raises(ValueError, match='a smaller --eval-fraction'):
        load_fgvc_dataset(str(root), eval_fraction=0.9)
    with pytest.warns(UserWarning, match=r'--max-train-samples 2 keeps training images of [12] of the 4 classes'):
        load_fgvc_dataset(str(root), eval_fraction=0, max_train_samples=2)


def test_shots_are_drawn_from_the_readable_images(tmp_path):
    """With --skip-bad-images a k-shot draw keeps k images in a class that also holds unreadable files."""
    root = make_image_folder(tmp_path / 'data', per_class=3)
    add_bad_images(root / 'train' / 'a')
    for seed in range(4):
        data = load_fgvc_dataset(str(root), shots=3, seed=seed, skip_bad_images=True)
        assert sorted(data.train['label']) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(data.bad_images) == 2
    few = make_image_folder(tmp_path / 'few', per_class=2)
    with pytest.raises(ValueError, match=r"Class 'a' \(index 0\) has only 2 training images, fewer than --shots 3"):
        load_fgvc_dataset(str(few), shots=3)


def test_an_image_file_in_two_splits_or_classes_is_refused_and_dunder_and_decomposed_class_names_are_classes(tmp_path):
    """A `test` folder linked to `train` would score training images; a file linked under two classes trains two
    answers: both refused, by the file itself (symlinks and hard links). A `__background__` class is a class, as
    in torchvision's ImageFolder (it vanished, uncounted), and `café` spelt decomposed (macOS) in one split and
    composed in another is one class."""
    import unicodedata
    linked = make_image_folder(tmp_path / 'linked', splits=('train',))
    os.symlink(linked / 'train', linked / 'test', target_is_directory=True)
    with pytest.raises(ValueError, match=r'12 image file\(s\) are in more than one split or class'):
        load_fgvc_dataset(str(linked), check_images=False)
    two_classes = make_image_folder(tmp_path / 'two_classes')
    os.link(two_classes / 'train' / 'a' / '0.png', two_classes / 'train' / 'b' / 'also_a.png')
    with pytest.raises(ValueError, match=r'(?s)1 image file\(s\).*train/a.*train/b'):
        load_fgvc_dataset(str(two_classes), check_images=False)

    nfd, nfc = unicodedata.normalize('NFD', 'café'), unicodedata.normalize('NFC', 'café')
    root = make_image_folder(tmp_path / 'names', splits=('train',), classes=('__background__', nfd, 'z'))
    make_image_folder(root, splits=('test',), classes=('__background__', nfc, 'z'))
    data = load_fgvc_dataset(str(root), check_images=False)
    assert data.label_names == ['__background__', nfc, 'z'] and len(data.train) == 12 and len(data.eval) == 12
    assert data.ignored_files == []


def test_saved_splits_named_dev_or_eval_are_evaluated_and_negative_or_untrained_labels_are_caught(tmp_path):
    """A saved `dev` split is the eval split (a fifth of training was held out instead, silently). A plain integer
    -1 (pandas, metadata.csv) is a missing label as a ClassLabel's -1 is: refused in training, passed over in a test
    split. A ClassLabel class with no training image but test images is refused (its images all scored wrong)."""
    train = _labelled_split(['a', 'b', 'c'], [0, 1, 2] * 3, 0)
    dev = _labelled_split(['a', 'b', 'c'], [2, 1, 0], 1)
    datasets.DatasetDict({'train': train, 'dev': dev}).save_to_disk(str(tmp_path / 'dev'))
    data = load_fgvc_dataset(str(tmp_path / 'dev'), check_images=False)
    assert data.eval_split == 'dev' and len(data.train) == 9 and len(data.eval) == 3

    def plain(labels):
        return datasets.Dataset.from_dict({'image': [Image.new('RGB', (8, 8))] * len(labels), 'label': labels})

    datasets.DatasetDict({'train': plain([0, 1, -1, 0, 1])}).save_to_disk(str(tmp_path / 'minus_train'))
    with pytest.raises(ValueError, match=r"1 of 5 rows of the 'train' split .* -1"):
        load_fgvc_dataset(str(tmp_path / 'minus_train'), check_images=False)
    datasets.DatasetDict({'train': plain([0, 1] * 4), 'test': plain([-1, -1])}).save_to_disk(str(tmp_path / 'hidden'))
    data = load_fgvc_dataset(str(tmp_path / 'hidden'), eval_fraction=0.25, check_images=False)
    assert data.unlabelled_splits == ['test'] and data.label_names == ['0', '1'] and len(data.eval) == 2

    untrained = _labelled_split(['a', 'b', 'c'], [0, 1] * 3, 0)  # no 'c' in training
    datasets.DatasetDict({'train': untrained, 'test': dev}).save_to_disk(str(tmp_path / 'untrained'))
    with pytest.raises(ValueError, match=r"class\(es\) \['c'\] that the 'train' split has none of"):
        load_fgvc_dataset(str(tmp_path / 'untrained'), check_images=False)


def test_a_parquet_file_named_like_no_split_is_listed_and_one_inside_an_image_folder_leaves_it_an_image_folder(
        tmp_path):
    """`datasets` reads only the files named like a split once some are: a second training shard `extra.parquet`
    was dropped unsaid (30 of 42 rows). It is listed as left out. And one parquet file of annotations beside the
    class folders made the whole image folder a parquet dataset (Arrow's 'magic bytes' error)."""
    train = _labelled_split(['a', 'b', 'c'], [0, 1, 2] * 2, 0)
    (tmp_path / 'shards').mkdir()
    train.to_parquet(str(tmp_path / 'shards' / 'train.parquet'))
    train.to_parquet(str(tmp_path / 'shards' / 'extra.parquet'))
    _labelled_split(['a', 'b', 'c'], [0, 1, 2], 1).to_parquet(str(tmp_path / 'shards' / 'test.parquet'))
    data = load_fgvc_dataset(str(tmp_path / 'shards'), check_images=False)
    assert len(data.train) == 6 and len(data.eval) == 3
    assert [Path(f.split(' (')[0]).name for f in data.ignored_files] == ['extra.parquet']
    assert 'named like no split' in data.ignored_files[0]

    folder = make_image_folder(tmp_path / 'folder')
    train.to_parquet(str(folder / 'train' / 'a' / 'boxes.parquet'))  # a class folder's annotations
    data = load_fgvc_dataset(str(folder), check_images=False)
    assert data.label_names == ['a', 'b', 'c'] and len(data.train) == 12
    assert [Path(f.split(' (')[0]).name for f in data.ignored_files] == ['boxes.parquet']
