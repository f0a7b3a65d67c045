"""Load a classification dataset through `datasets`: a Hub id, a local image folder or the synthetic set.

Columns are detected from the features (an `Image` column and a `ClassLabel` column) or given by name;
a wrong schema raises an error that lists the columns found. Transforms come from the model's
`pretrained_cfg` via timm (`resolve_data_config` / `create_transform`) and are applied lazily with
`with_transform`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import datasets
import numpy as np
import torch

__all__ = ['FGVCData', 'load_fgvc_dataset', 'detect_columns', 'few_shot_indices', 'attach_transform',
           'SeededTransform', 'collate']

_IMAGE_NAMES = ('image', 'img', 'images', 'picture', 'pixel_values')
_LABEL_NAMES = ('label', 'labels', 'class', 'fine_label', 'category', 'target')
_EVAL_SPLITS = ('test', 'validation', 'valid', 'val')


@dataclass
class FGVCData:
    train: datasets.Dataset
    eval: Optional[datasets.Dataset]
    label_names: List[str]
    image_column: str
    label_column: str
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def detect_columns(features: datasets.Features, image_column: Optional[str] = None,
                   label_column: Optional[str] = None, source: str = '') -> tuple:
    """Return (image_column, label_column), detected from feature types and common names when not given."""
    names = list(features)
    found = ', '.join(f'{n} ({type(features[n]).__name__})' for n in names)
    for given, kind in ((image_column, 'image'), (label_column, 'label')):
        if given is not None and given not in features:
            raise ValueError(f'Unknown {kind} column {given!r} in dataset {source!r}; columns found: {found}. '
                             f'Pass --{kind}-column with one of these.')
    if image_column is None:
        typed = [n for n in names if isinstance(features[n], datasets.Image)]
        named = [n for n in names if n.lower() in _IMAGE_NAMES]
        image_column = (typed or named or [None])[0]
    if label_column is None:
        typed = [n for n in names if isinstance(features[n], datasets.ClassLabel)]
        named = [n for n in names if n.lower() in _LABEL_NAMES]
        label_column = (typed or named or [None])[0]
    if image_column is None or label_column is None:
        missing = 'image' if image_column is None else 'label'
        raise ValueError(f'Could not find the {missing} column in dataset {source!r}; columns found: {found}. '
                         f'Pass --{missing}-column to name it.')
    return image_column, label_column


def few_shot_indices(labels: Sequence[int], shots: int, seed: int) -> List[int]:
    """k images per class, drawn without replacement with `seed` (HSM's few-shot protocol)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < shots:
            raise ValueError(f'Class {cls} has only {len(members)} training images, fewer than --shots {shots}.')
        chosen.extend(rng.choice(members, size=shots, replace=False).tolist())
    return sorted(chosen)


def _load_raw(source: str, config_name: Optional[str], synthetic_args: Optional[dict]) -> datasets.DatasetDict:
    if source == 'synthetic':
        from .synthetic import make_synthetic_fgvc
        return make_synthetic_fgvc(**(synthetic_args or {}))
    if os.path.isdir(source):
        try:
            return datasets.load_dataset('imagefolder', data_dir=source)
        except datasets.data_files.EmptyDatasetError as e:
            raise ValueError(f'No images found in {source!r}. Expected <dir>/<class>/<image> or '
                             '<dir>/<split>/<class>/<image> (jpg, png, ...).') from e
        except ValueError as e:
            raise ValueError(f'Could not read an image folder at {source!r} ({e}). Expected '
                             '<dir>/<class>/<image> or <dir>/<split>/<class>/<image>.') from e
    if os.path.exists(source):
        raise ValueError(f'{source!r} is a file; pass an image folder, a Hub dataset id or "synthetic".')
    return datasets.load_dataset(source, config_name)


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
) -> FGVCData:
    """Train and eval splits with detected columns; an image folder without split folders is split here."""
    raw = _load_raw(source, config_name, synthetic_args)
    if train_split not in raw:
        raise ValueError(f'Dataset {source!r} has no split {train_split!r}; splits found: {list(raw)}.')
    train = raw[train_split]
    image_column, label_column = detect_columns(train.features, image_column, label_column, source)
    if eval_split is None:
        eval_split = next((s for s in _EVAL_SPLITS if s in raw and s != train_split), None)
    if eval_split is not None and eval_split not in raw:
        raise ValueError(f'Dataset {source!r} has no split {eval_split!r}; splits found: {list(raw)}.')
    if len(train) == 0:
        raise ValueError(f'The {train_split!r} split of {source!r} is empty: add images or choose another split.')
    if not isinstance(train.features[label_column], datasets.ClassLabel):
        train = train.class_encode_column(label_column)
    label_feature = train.features[label_column]
    evaluation = raw[eval_split] if eval_split else None
    if evaluation is None and eval_fraction > 0:
        parts = train.train_test_split(test_size=eval_fraction, seed=seed, stratify_by_column=label_column)
        train, evaluation = parts['train'], parts['test']
    elif evaluation is not None and not isinstance(evaluation.features[label_column], datasets.ClassLabel):
        evaluation = evaluation.cast_column(label_column, label_feature)
    if shots is not None:
        train = train.select(few_shot_indices(train[label_column], shots, seed))
    if max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if evaluation is not None and max_eval_samples is not None:
        evaluation = evaluation.select(range(min(max_eval_samples, len(evaluation))))
    keep = [image_column, label_column]
    train = train.select_columns(keep)
    evaluation = evaluation.select_columns(keep) if evaluation is not None else None
    return FGVCData(train=train, eval=evaluation, label_names=list(label_feature.names),
                    image_column=image_column, label_column=label_column, source=source)


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

    A `SeededTransform` gets each row's index (an `__index__` column is added for it).
    """
    seeded = isinstance(transform, SeededTransform)
    if seeded:
        dataset = dataset.add_column('__index__', list(range(len(dataset))))

    def apply(batch: Dict[str, list]) -> Dict[str, list]:
        images = [image.convert('RGB') for image in batch[image_column]]
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
