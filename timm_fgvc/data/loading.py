"""Load a classification dataset through `datasets`: a Hub id, a local image folder (read as torchvision's
ImageFolder, with split folders; or by `datasets`' imagefolder when it has a metadata file), a folder written by
`save_to_disk`, a folder of parquet files, or the synthetic set.

Columns are detected from the features (an `Image` column and a `ClassLabel` column) or given by name;
a wrong schema raises an error that lists the columns found. Every image is checked when the dataset is loaded
(a fast header check; a list of the bad files stops the run unless they are to be skipped). Transforms come from
the model's `pretrained_cfg` via timm (`resolve_data_config` / `create_transform`) and are applied lazily with
`with_transform`; images are decoded there by `open_image`, which names the file when it cannot.
"""
from __future__ import annotations

import collections
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from tqdm.auto import tqdm

from .image_folder import has_metadata_file, holds_images, is_data_file, read_image_folder

__all__ = ['FGVCData', 'load_fgvc_dataset', 'detect_columns', 'few_shot_indices', 'attach_transform',
           'SeededTransform', 'collate', 'open_image', 'to_rgb', 'image_problem', 'find_bad_images',
           'BadImagesError']

_IMAGE_NAMES = ('image', 'img', 'images', 'picture', 'pixel_values')
_LABEL_NAMES = ('label', 'labels', 'class', 'fine_label', 'category', 'target')
# eval split names in order of preference, as the image-folder reader and `datasets` name splits
_EVAL_SPLITS = ('test', 'testing', 'eval', 'evaluation', 'validation', 'valid', 'val', 'dev')


@dataclass
class FGVCData:
    train: datasets.Dataset
    eval: Optional[datasets.Dataset]
    label_names: List[str]
    image_column: str
    label_column: str
    source: str
    bad_images: List[str] = field(default_factory=list)  # 'file: reason' of the images left out (--skip-bad-images)
    ignored_files: List[str] = field(default_factory=list)  # 'path (why)' left out of an image folder
    train_split: str = 'train'
    eval_split: Optional[str] = None  # the split evaluated, or what was held out of training
    unlabelled_splits: List[str] = field(default_factory=list)  # eval splits passed over: no labels (hidden), empty
    eval_held_out: bool = False  # the eval images are a seeded draw of the training split (no eval split)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def description(self) -> Dict[str, Any]:
        """Which splits and columns were used, for results.json and the console."""
        return {'train_split': self.train_split, 'eval_split': self.eval_split, 'image_column': self.image_column,
                'label_column': self.label_column, 'train_samples': len(self.train),
                'eval_samples': len(self.eval) if self.eval is not None else 0, 'num_classes': self.num_classes,
                'unlabelled_splits_passed_over': self.unlabelled_splits, 'eval_held_out': self.eval_held_out}


def detect_columns(features: datasets.Features, image_column: Optional[str] = None,
                   label_column: Optional[str] = None, source: str = '') -> tuple:
    """Return (image_column, label_column), detected from feature types and common names when not given."""
    names = list(features)
    found = ', '.join(f'{n} ({type(features[n]).__name__})' for n in names)
    for given, kind in ((image_column, 'image'), (label_column, 'label')):
        if given is not None and given not in features:
            raise ValueError(f'Unknown {kind} column {given!r} in dataset {source!r}; columns found: {found}. '
                             f'Pass --{kind}-column with one of these.')
    def pick(kind: type, common: Sequence[str]) -> Optional[str]:
        # a common name in the list's order (`label` before `labels`; `fine_label`, not an unlisted `coarse_label`),
        # first among the columns of the right type, then among all (a ClassLabel flag is not the label); else
        # the first column of the right type
        typed = [n for n in names if isinstance(features[n], kind)]
        for pool in (typed, names):
            by_name = {n.lower(): n for n in pool}
            hit = next((by_name[c] for c in common if c in by_name), None)
            if hit is not None:
                return hit
        return (typed or [None])[0]

    image_column = image_column or pick(datasets.Image, _IMAGE_NAMES)
    label_column = label_column or pick(datasets.ClassLabel, _LABEL_NAMES)
    if image_column is None or label_column is None:
        missing = 'image' if image_column is None else 'label'
        raise ValueError(f'Could not find the {missing} column in dataset {source!r}; columns found: {found}. '
                         f'Pass --{missing}-column to name it.')
    return image_column, label_column


def few_shot_indices(labels: Sequence[int], shots: int, seed: int,
                     label_names: Optional[Sequence[str]] = None) -> List[int]:
    """k images per class, drawn without replacement with `seed` (HSM's few-shot protocol)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < shots:
            name = f'{label_names[cls]!r} (index {cls})' if label_names is not None else str(cls)
            raise ValueError(f'Class {name} has only {len(members)} training images, fewer than --shots {shots}: '
                             'lower --shots or add images to that class.')
        chosen.extend(rng.choice(members, size=shots, replace=False).tolist())
    return sorted(chosen)


def _is_saved_dataset(root: Path) -> bool:
    return (root / 'dataset_dict.json').is_file() or (root / 'state.json').is_file()


def _images_not_in(loaded: datasets.DatasetDict, root: Path) -> List[str]:
    """The image files below `root` that no split of `loaded` reads (a folder with a metadata file reads only the
    files the file lists, and `datasets` drops the others unsaid)."""
    read = set()
    for split in loaded.values():
        for column, feature in split.features.items():
            if isinstance(feature, datasets.Image):
                read.update(os.path.realpath(item['path']) for item in
                            split.cast_column(column, datasets.Image(decode=False))[column] if item.get('path'))
    return [f'{path} (not in the metadata file)' for path in sorted(p for p in root.rglob('*') if p.is_file()
            and is_data_file(p, root) and os.path.realpath(p) not in read)]


def _load_parquet_folder(root: Path) -> Tuple[datasets.DatasetDict, List[str]]:
    """A folder of parquet files, split by their names as `datasets` splits a Hub repository; a file named like no
    split (when others are) is not read: it is listed, where `datasets` would drop it unsaid."""
    from datasets.data_files import DataFilesDict, get_data_patterns
    files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root),
                                        allowed_extensions=['.parquet'])
    read = {os.path.realpath(f) for split in files.values() for f in split}
    left_out = [f'{p} (a parquet file named like no split: name it train-*.parquet, test-*.parquet, ... or move it '
                'out)' for p in sorted(root.rglob('*.parquet')) if os.path.realpath(p) not in read]
    return datasets.load_dataset('parquet', data_files={str(k): list(v) for k, v in files.items()}), left_out


def _load_raw(source: str, config_name: Optional[str],
              synthetic_args: Optional[dict]) -> Tuple[datasets.DatasetDict, List[str]]:
    """The dataset's splits, and what an image folder left out ('path (why)')."""
    if source == 'synthetic':
        from .synthetic import make_synthetic_fgvc
        return make_synthetic_fgvc(**(synthetic_args or {})), []
    root = Path(source)
    if root.is_dir() and _is_saved_dataset(root):  # written by Dataset(Dict).save_to_disk
        loaded = datasets.load_from_disk(source)
        return (loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({'train': loaded})), []
    if root.is_dir() and any(root.rglob('*.parquet')) and not holds_images(root):  # split by names, as on the Hub
        return _load_parquet_folder(root)
    if root.is_file() and root.suffix == '.parquet':
        return datasets.load_dataset('parquet', data_files={'train': source}), []
    if root.is_dir() and has_metadata_file(root):
        try:
            loaded = datasets.load_dataset('imagefolder', data_dir=source)
        except Exception as e:  # datasets raises many types (IndexError for a malformed csv): name the folder
            raise ValueError(f'Could not read the image folder with its metadata file at {source!r} ({e}).') from e
        return loaded, _images_not_in(loaded, root)
    if root.is_dir():
        return read_image_folder(root)
    if root.exists():
        raise ValueError(f'{source!r} is a file; pass an image folder, a save_to_disk or parquet folder, a Hub '
                         'dataset id or "synthetic".')
    if source.startswith(('.', '/', '~')) or source.endswith(('/', os.sep)) or source.count('/') > 1:
        raise FileNotFoundError(f'No local folder or file {source!r} (from {os.getcwd()}); a path cannot be a Hub '
                                'dataset id (<name> or <owner>/<name>).')
    try:
        return datasets.load_dataset(source, config_name), []
    except (FileNotFoundError, ConnectionError) as e:  # not on the Hub, or offline: it may be a mistyped folder
        raise FileNotFoundError(f'{source!r} is neither a local folder (in {os.getcwd()}) nor a dataset the Hub '
                                f'serves here: {e}') from e


# --- images: checking and decoding --------------------------------------------------------------------------
SKIP_ADVICE = ('Remove or replace unreadable files, or pass --skip-bad-images (train_fgvc.py, timm-fgvc eval) to '
               'leave them out: every file is then checked when the dataset is loaded, and those that fail counted.')


class BadImagesError(ValueError):
    """Images that cannot be read; `bad` lists 'file: reason'."""

    def __init__(self, message: str, bad: List[str]):
        super().__init__(message)
        self.bad = bad


def _image_source(value: Any) -> Tuple[Any, str]:
    """(what PIL can open, a name for messages) from a datasets Image value, a path or bytes."""
    if isinstance(value, dict):
        name = value.get('path') or '<embedded image>'
        if value.get('bytes') is not None:
            return io.BytesIO(value['bytes']), name
        return value.get('path'), name
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value), '<embedded image>'
    if isinstance(value, (str, os.PathLike)):
        return value, str(value)
    raise TypeError(f'Not an image: {type(value).__name__}')


def image_problem(value: Any) -> Optional[str]:
    """None when the image decodes, else why not; fast: JPEGs decode at 1/8 scale, PNGs check their chunks."""
    try:
        source, _ = _image_source(value)
        if source is None:
            return 'no path or bytes'
        with Image.open(source) as image:
            if image.format == 'JPEG':
                image.draft('RGB', (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            elif image.format == 'PNG':
                image.verify()  # every chunk and its CRC, without decompressing the pixels
            else:
                image.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for a bad file
        return f'{type(e).__name__}: {e}' if str(e) else type(e).__name__
    return None


def find_bad_images(dataset: datasets.Dataset, image_column: str, desc: str = 'checking images',
                    batch_size: int = 256) -> List[Tuple[int, str]]:
    """(row index, 'file: reason') for every row whose image cannot be read, with a progress bar."""
    if isinstance(dataset.features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    dataset = dataset.select_columns([image_column])
    bad = []
    # one bar per machine: in a distributed run every process checks, the local main one shows it
    quiet = int(os.environ.get('LOCAL_RANK', '0')) != 0
    with tqdm(total=len(dataset), desc=desc, unit='img', leave=False, mininterval=1.0, disable=quiet) as progress:
        for start in range(0, len(dataset), batch_size):
            for offset, value in enumerate(dataset[start:start + batch_size][image_column]):
                problem = image_problem(value)
                if problem is not None:
                    try:
                        name = _image_source(value)[1]
                    except TypeError:
                        name = f'row {start + offset}'
                    bad.append((start + offset, f'{name}: {problem}'))
            progress.update(min(batch_size, len(dataset) - start))
    return bad


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the model: 16-bit and 32-bit grey images are scaled to 8 bits (PIL's convert would clip them)."""
    if image.mode.startswith('I;16'):
        pixels = np.asarray(image, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
    elif image.mode in ('I', 'F'):
        pixels = np.asarray(image, dtype=np.float64)
        top = pixels.max(initial=0.0)
        if top > 255:  # 16-bit data (or more) held in a 32-bit mode
            pixels = pixels * (255.0 / (65535.0 if top <= 65535 else top))
        elif image.mode == 'F' and top <= 1.0:  # a float image in [0, 1]
            pixels = pixels * 255.0
    else:
        return image.convert('RGB')
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), 'L').convert('RGB')


def open_image(value: Any) -> Image.Image:
    """An RGB image from a datasets Image value (decoded or not), a path or bytes, turned upright by its EXIF
    orientation as `datasets` decodes it (a phone photo); an image that cannot be decoded raises an error naming
    its file."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    source, name = _image_source(value)
    try:
        with Image.open(source) as image:
            image.load()
            if image.getexif().get(ExifTags.Base.Orientation) is not None:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except Exception as e:
        raise ValueError(f'Cannot read image {name} ({type(e).__name__}: {e}).') from e


def _label_text(value: Any) -> str:
    """A raw label as its class name; a whole float as an integer (pandas stores an integer column with gaps as
    floats, so 3.0 is class '3')."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _label_names(split: datasets.Dataset, column: str, split_name: str) -> List[str]:
    """Class names of a raw label column: numbers in numeric order (label 10 after label 9), others sorted. A
    fractional number is a regression target, not a class: an error."""
    values = split.unique(column)
    fractional = [v for v in values if isinstance(v, float) and not v.is_integer()]
    if fractional:
        raise ValueError(f'The {column!r} column of the {split_name!r} split holds fractional numbers '
                         f'(e.g. {fractional[0]!r}): a regression target, not class labels. Name the column of '
                         'class labels with --label-column.')
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return [_label_text(v) for v in sorted(values)] if numeric else sorted(_label_text(v) for v in values)


def _encode_labels(split: datasets.Dataset, column: str, names: List[str], split_name: str) -> datasets.Dataset:
    """The raw labels of `split` as indices into `names`, matched by name (a separate eval split takes the
    training split's indices, whatever order its own labels come in)."""
    unknown = sorted(set(map(_label_text, split.unique(column))) - set(names))
    if unknown:
        raise ValueError(f'The {split_name!r} split has label(s) {unknown[:10]} that the training split does not: '
                         'every class evaluated must be trained.')
    if getattr(split.features[column], 'dtype', None) in ('bool', 'float16', 'float32', 'float64'):
        # Arrow writes True as 'true' and 3.0 as '3': the names are Python's, so map them (other types cast fast)
        split = _labels_as_text(split, column, _label_text)
    return split.cast_column(column, datasets.Value('string')).cast_column(column, datasets.ClassLabel(names=names))


def _unlabelled_rows(split: datasets.Dataset, column: str) -> int:
    """Rows without a label: the column missing, None, NaN (pandas' missing value), or a negative number (a
    ClassLabel's -1 hides a Hub test split's labels; pandas and metadata.csv write the same -1 as a plain integer)."""
    if column not in split.features:
        return len(split)
    return sum(v is None or v != v or (isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0)
               for v in split[column])  # v != v: NaN


def _labels_as_text(split: datasets.Dataset, column: str, text_of: Callable[[Any], str]) -> datasets.Dataset:
    """`split` with each value of its label column replaced by `text_of(value)`, as a string column."""
    features = split.features.copy()
    features[column] = datasets.Value('string')
    return split.map(lambda batch: {column: [text_of(v) for v in batch[column]]}, batched=True, features=features)


def _label_strings(split: datasets.Dataset, column: str) -> datasets.Dataset:
    """A ClassLabel column as its class names (another split's ClassLabel may order or name its classes
    differently: they are matched by name, never by index)."""
    return _labels_as_text(split, column, split.features[column].names.__getitem__)


def load_fgvc_dataset(
        source: str = 'synthetic',
        config_name: Optional[str] = None,
        train_split: str = 'train',
        eval_split: Optional[str] = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        eval_fraction: float = 0.2,
        shots: Optional[int] = None,
        seed: int = 0,
        max_train_samples: Optional[int] = None,
        max_eval_samples: Optional[int] = None,
        synthetic_args: Optional[dict] = None,
        check_images: bool = True,
        skip_bad_images: bool = False,
        check_splits: Sequence[str] = ('train', 'eval'),
) -> FGVCData:
    """Train and eval splits with detected columns; an image folder without split folders is split here.

    With `check_images`, every image of the selected rows of `check_splits` is checked (the synthetic set is
    generated here and not checked): bad ones raise a `BadImagesError` listing them, or with `skip_bad_images` are
    left out and listed in `FGVCData.bad_images`.
    """
    raw, ignored_files = _load_raw(source, config_name, synthetic_args)
    if train_split not in raw:
        raise ValueError(f'Dataset {source!r} has no split {train_split!r}; splits found: {list(raw)}.')
    train = raw[train_split]
    only_images = all(isinstance(f, datasets.Image) for f in train.features.values())
    if label_column is None and only_images and os.path.isdir(source):  # imagefolder gives no label for one class
        raise ValueError(f'{source!r} holds images of one class only (a single class folder, or none); '
                         'classification needs at least 2 classes: <dir>/<class>/<image> with one folder per class.')
    image_column, label_column = detect_columns(train.features, image_column, label_column, source)
    if eval_split is not None and eval_split not in raw:
        raise ValueError(f'Dataset {source!r} has no split {eval_split!r}; splits found: {list(raw)}.')
    if eval_split is not None and len(raw[eval_split]) == 0:
        raise ValueError(f'The {eval_split!r} split of {source!r} is empty: name another --eval-split, or pass none '
                         'to hold out --eval-fraction of training.')
    hidden = _unlabelled_rows(raw[eval_split], label_column) if eval_split is not None else 0
    if hidden:
        raise ValueError(f'{hidden} of {len(raw[eval_split])} rows of the '
                         f'{eval_split!r} split of {source!r} have no {label_column!r} label (a hidden test set?): '
                         'name a labelled --eval-split, or pass none to hold out --eval-fraction of training.')
    unlabelled_splits = []
    if eval_split is None:  # the first labelled one; a Hub test split often hides its labels (-1 or no column)
        for candidate in (s for s in _EVAL_SPLITS if s in raw and s != train_split):
            if len(raw[candidate]) == 0:  # an empty split is no eval split: --eval-fraction is held out instead
                unlabelled_splits.append(candidate)
            elif _unlabelled_rows(raw[candidate], label_column):
                unlabelled_splits.append(candidate)
            else:
                eval_split = candidate
                break
    if len(train) == 0:
        raise ValueError(f'The {train_split!r} split of {source!r} is empty: add images or choose another split.')
    missing = _unlabelled_rows(train, label_column)
    if missing:
        raise ValueError(f'{missing} of {len(train)} rows of the {train_split!r} split of {source!r} have no '
                         f'{label_column!r} label (none, or a negative number such as -1): remove them or name '
                         'another --label-column.')
    if not isinstance(train.features[label_column], datasets.ClassLabel):
        train = _encode_labels(train, label_column, _label_names(train, label_column, train_split), train_split)
    label_feature = train.features[label_column]
    if len(label_feature.names) < 2:
        raise ValueError(f'Dataset {source!r} has {len(label_feature.names)} class(es) {label_feature.names} in its '
                         f'{label_column!r} column; classification needs at least 2 classes (one folder per class).')
    evaluation = raw[eval_split] if eval_split else None
    held_out = evaluation is None and eval_fraction > 0
    if held_out:
        try:
            parts = train.train_test_split(test_size=eval_fraction, seed=seed, stratify_by_column=label_column)
        except ValueError as e:  # a class too small to hold out from, or fewer held-out images than classes
            counts = collections.Counter(train[label_column])
            smallest = min(counts, key=counts.get)
            # both parts need an image of every class: too few held out, or too few left to train on
            direction = 'larger' if eval_fraction * len(train) < len(counts) else 'smaller'
            raise ValueError(f'{source!r} has no eval split, and holding out --eval-fraction {eval_fraction:g} of '
                             f'each class fails ({e}). Its smallest class is {label_feature.names[smallest]!r} with '
                             f'{counts[smallest]} image(s) of {len(train)} in {len(counts)} classes: add a test split '
                             f'(<dir>/test/<class>/...), more images, a {direction} --eval-fraction, or '
                             '--eval-fraction 0 to train without evaluation.') from e
        train, evaluation = parts['train'], parts['test']
        eval_split = f'{eval_fraction:g} of {train_split!r} held out (seed {seed})'
    elif evaluation is not None and evaluation.features[label_column] != label_feature:
        if isinstance(evaluation.features[label_column], datasets.ClassLabel):
            evaluation = _label_strings(evaluation, label_column)
        evaluation = _encode_labels(evaluation, label_column, label_feature.names, eval_split)  # train's indices
    if evaluation is not None and not held_out:
        untrained = sorted(set(evaluation.unique(label_column)) - set(train.unique(label_column)))
        if untrained:  # a ClassLabel names classes the training rows may not hold
            raise ValueError(f'The {eval_split!r} split has images of class(es) '
                             f'{[label_feature.names[i] for i in untrained][:10]} that the {train_split!r} split has '
                             'none of: every class evaluated must be trained.')
    def draw_train(split: datasets.Dataset) -> datasets.Dataset:
        if shots is not None:
            split = split.select(few_shot_indices(split[label_column], shots, seed, label_feature.names))
        if max_train_samples is not None:
            split = split.shuffle(seed=seed).select(range(min(max_train_samples, len(split))))
            kept = len(set(split[label_column]))
            if kept < len(label_feature.names):
                warnings.warn(f'--max-train-samples {max_train_samples} keeps training images of {kept} of the '
                              f'{len(label_feature.names)} classes: the others are evaluated untrained.')
        return split

    # k shots are drawn from the readable images (every training image is checked first), so a class keeps k
    shots_after_check = shots is not None and check_images and source != 'synthetic' and 'train' in check_splits
    if not shots_after_check:
        train = draw_train(train)
    if evaluation is not None and max_eval_samples is not None:  # a seeded draw: the first N of a split sorted by
        # class would be a few classes only
        evaluation = evaluation.shuffle(seed=seed).select(range(min(max_eval_samples, len(evaluation))))
    keep = [image_column, label_column]
    train = train.select_columns(keep)
    evaluation = evaluation.select_columns(keep) if evaluation is not None else None
    skipped: List[str] = []
    if check_images and source != 'synthetic':
        splits = {'train': train, 'eval': evaluation}
        bad = {name: find_bad_images(split, image_column, desc=f'checking {name} images')
               for name, split in splits.items() if split is not None and name in check_splits}
        found = [entry for entries in bad.values() for _, entry in entries]
        if found and not skip_bad_images:
            shown = '\n  '.join(found[:50]) + (f'\n  ... and {len(found) - 50} more' if len(found) > 50 else '')
            raise BadImagesError(f'{len(found)} image(s) of {source!r} cannot be read:\n  {shown}\n{SKIP_ADVICE}',
                                 found)
        for name, entries in bad.items():
            if entries:
                rows = {i for i, _ in entries}
                split = splits[name]
                splits[name] = split.select([i for i in range(len(split)) if i not in rows])
                if len(splits[name]) == 0:  # nothing left to train on or to score (a top-1 of nan)
                    raise BadImagesError(f'None of the {len(split)} {name} images of {source!r} can be read '
                                         f'(e.g. {entries[0][1]}): nothing is left to '
                                         f"{'train on' if name == 'train' else 'evaluate'}.",
                                         [entry for _, entry in entries])
        train, evaluation = splits['train'], splits['eval']
        skipped = found
    if shots_after_check:
        train = draw_train(train)
    return FGVCData(train=train, eval=evaluation, label_names=list(label_feature.names),
                    image_column=image_column, label_column=label_column, source=source, bad_images=skipped,
                    ignored_files=ignored_files, train_split=train_split, eval_split=eval_split,
                    unlabelled_splits=unlabelled_splits, eval_held_out=held_out)


class SeededTransform:
    """A random transform whose draws depend only on (seed, epoch, sample index).

    Augmentation is then identical whatever the number of workers or processes, and a resumed run
    sees exactly the images the interrupted one would have seen. The global RNG is left untouched.
    """

    def __init__(self, transform: Callable, seed: int = 0):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __call__(self, image, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + int(index)) % (2 ** 63))
            return self.transform(image)


def attach_transform(dataset: datasets.Dataset, transform: Callable, image_column: str,
                     label_column: str) -> datasets.Dataset:
    """Lazily map rows to `{'pixel_values': Tensor, 'labels': int}` with a torchvision/timm transform.

    A `SeededTransform` gets each row's index (an `__index__` column is added for it). Images are decoded by
    `open_image` (RGB; 16-bit scaled to 8 bits; a file that cannot be decoded is named in the error).
    """
    seeded = isinstance(transform, SeededTransform)
    if seeded:
        dataset = dataset.add_column('__index__', list(range(len(dataset))))
    if isinstance(dataset.features.get(image_column), datasets.Image):
        # decoded here by open_image: a file that fails is named, and 16-bit images are scaled, not clipped
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    def apply(batch: Dict[str, list]) -> Dict[str, list]:
        try:
            images = [open_image(value) for value in batch[image_column]]
        except ValueError as e:  # only without the load-time check (check_images=False)
            raise ValueError(f'{e} {SKIP_ADVICE}') from e
        if seeded:
            pixels = [transform(image, index) for image, index in zip(images, batch['__index__'])]
        else:
            pixels = [transform(image) for image in images]
        return {'pixel_values': pixels, 'labels': batch[label_column]}
    return dataset.with_transform(apply)


def collate(rows: List[Dict[str, object]]) -> Dict[str, torch.Tensor]:
    return {
        'pixel_values': torch.stack([r['pixel_values'] for r in rows]),
        'labels': torch.tensor([r['labels'] for r in rows], dtype=torch.long),
    }
