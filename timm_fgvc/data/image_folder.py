"""Local image folders read as torchvision's ImageFolder reads them, with split folders.

`datasets`' imagefolder takes a class folder named `train` (CIFAR-100 has one) or `test_tube` for a split, nested
folders for classes, and drops what it does not read without a count; `read_image_folder` does none of these.
A folder with a metadata file (labels or columns by file) is left to `datasets`' imagefolder.
"""
from __future__ import annotations

import collections
import os
import re
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import datasets
from PIL import Image

__all__ = ['IMAGE_SUFFIXES', 'read_image_folder', 'has_metadata_file', 'holds_images']

Image.init()
# what PIL opens (a file PIL cannot decode after all is then a bad image, named, not dropped), without its
# identify-only stubs and video; HEIC/HEIF need a plugin: listed so that they fail loudly rather than vanish
IMAGE_SUFFIXES = frozenset(
    {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    - {'.h5', '.hdf', '.bufr', '.grib', '.mpg', '.mpeg', '.eps', '.ps'}) | {'.heic', '.heif'}
_OS_FILES = ('thumbs.db', 'desktop.ini')  # written by file browsers, not data
_METADATA_FILES = ('metadata.csv', 'metadata.jsonl', 'metadata.parquet')  # imagefolder's labels/columns by file
# split folder names as `datasets`' imagefolder reads them: a keyword alone or set off by - . _ space or a digit
# (train, Training, seg_train, train2017, test_set)
_SPLIT_KEYWORDS = {'train': ('train', 'training'), 'validation': ('validation', 'valid', 'val', 'dev'),
                   'test': ('test', 'testing', 'eval', 'evaluation')}
_SPLIT_NAME = {split: re.compile(r'^(?:.*[-._ 0-9])?(?:' + '|'.join(words) + r')(?:[-._ 0-9].*)?$')
               for split, words in _SPLIT_KEYWORDS.items()}


def _is_hidden(name: str) -> bool:
    """Hidden (`.git`, macOS `._x.jpg`), macOS archive (`__MACOSX`) and file-browser names, which are not data (a
    `__background__` class is: torchvision's ImageFolder reads it too)."""
    return name.startswith('.') or name == '__MACOSX' or name.lower() in _OS_FILES


def _visible_dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_data_file(path: Path, root: Path) -> bool:
    """An image file below `root` that is data: neither it nor a folder between it and `root` is hidden."""
    return _is_image(path) and not any(_is_hidden(part) for part in path.relative_to(root).parts)


def _loose_images(folder: Path) -> List[Path]:
    """The images directly in a folder, outside any subfolder."""
    return [p for p in folder.iterdir() if p.is_file() and not _is_hidden(p.name) and _is_image(p)]


def _split_named(folder: Path) -> Optional[str]:
    name = folder.name.lower()
    return next((split for split, pattern in _SPLIT_NAME.items() if pattern.match(name)), None)


def _unwrap(folder: Path, into_split: bool) -> Path:
    """The folder below single wrapper folders: one subfolder holding folders and no images cannot be one class
    (two are needed), so it is a level of its own. Above the splits a wrapper is not named like a split (`data/` of
    `data/train/...`; a lone `test/` is a test split, not training data); inside a split it repeats one (Kaggle's
    `training_set/training_set/<class>`; a lone class folder with subfolders stays a class)."""
    seen = set()
    while os.path.realpath(folder) not in seen:
        seen.add(os.path.realpath(folder))
        dirs = _visible_dirs(folder)
        if (len(dirs) != 1 or not _visible_dirs(dirs[0]) or _loose_images(dirs[0])
                or bool(_split_named(dirs[0])) != into_split):
            break
        folder = dirs[0]
    return folder


def _split_layout(root: Path) -> Dict[str, Path]:
    """{split: folder}: the top-level folders when they are split folders (named like a split, holding class
    folders), else {'train': root}. A class folder named like a split (CIFAR-100's `train`, `test_tube`) holds
    images, not class folders, so it stays a class."""
    top = _visible_dirs(root)
    splits = {folder: _split_named(folder) if _visible_dirs(folder) else None for folder in top}
    if not any(splits.values()):
        return {'train': root}
    problems = []
    for folder, split in splits.items():
        if split is None:
            why = ('is named like a split but holds no class folders (an unlabelled split cannot be evaluated: sort '
                   'its images into class folders or move it out)' if _split_named(folder) else
                   'is not a split folder (train, test, val, ...): move it out')
            problems.append(f'{folder.name!r} {why}')
    found = collections.defaultdict(list)
    for folder, split in splits.items():
        if split:
            found[split].append(folder.name)
    named = sorted(name for names in found.values() for name in names)
    problems += [f'{names} are all {split} folders: keep one' for split, names in found.items() if len(names) > 1]
    if 'train' not in found:
        problems.append(f'no train folder among the split folders {named}')
    if problems:
        raise ValueError(f'{str(root)!r} holds split folders ({named}: named like a split and holding folders), but '
                         + '; '.join(problems) + '. Expected either '
                         '<dir>/<class>/<image> (every folder a class) or <dir>/<split>/<class>/<image>.')
    return {split: _unwrap(folder, into_split=True) for folder, split in splits.items()}


def _class_images(class_dir: Path, ignored: List[str]) -> List[str]:
    """The image paths anywhere below a class folder (symlinks followed, each folder once); what is left out is
    added to `ignored`. A class folder of files none of which is an image is an error."""
    paths, others, seen = [], [], set()
    for parent, dirs, files in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a symlink loop or a folder linked twice: its images once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(f for f in files if not _is_hidden(f)):
            path = os.path.join(parent, name)
            if _is_image(Path(name)):  # a broken link to an image is then a bad image, named
                paths.append(path)
            elif os.path.exists(path):
                others.append(path)
            else:  # a broken link to a folder
                ignored.append(f'{path} (broken link)')
    if others and not paths:
        raise ValueError(f'Class folder {str(class_dir)!r} holds {len(others)} file(s) and none is an image '
                         f'({Path(others[0]).name!r}, ...): convert them to JPEG/PNG or move the folder out.')
    ignored += [f'{path} (not an image)' for path in others]
    if not paths:
        ignored.append(f'{class_dir} (empty class folder)')
    return paths


def _split_classes(folder: Path, ignored: List[str]) -> Dict[str, List[str]]:
    """{class name: image paths} of one split folder. A name is taken in Unicode's composed form (NFC): a folder
    copied from macOS spells `café` decomposed, and it is the same class as the composed `café` of another split."""
    classes: Dict[str, List[str]] = {}
    for class_dir in _visible_dirs(folder):
        classes.setdefault(unicodedata.normalize('NFC', class_dir.name), []).extend(
            _class_images(class_dir, ignored))
    return classes


def _check_each_file_once(found: Dict[str, Dict[str, List[str]]]) -> None:
    """An image file (through symlinks and hard links: the same device and inode) in two splits or two classes is
    an error: a test split linked to the training one would score training images, a file under two classes
    trains two answers."""
    places = collections.defaultdict(list)
    for split, classes in found.items():
        for name, paths in classes.items():
            for path in paths:
                try:
                    info = os.stat(path)
                except OSError:  # a broken link: a bad image, named when the images are checked
                    continue
                places[(info.st_dev, info.st_ino)].append((split, name, path))
    repeated = [p for p in places.values() if len({(split, name) for split, name, _ in p}) > 1]
    if repeated:
        shown = '; '.join(' = '.join(f'{path} ({split}/{name})' for split, name, path in p) for p in repeated[:3])
        raise ValueError(f'{len(repeated)} image file(s) are in more than one split or class (a linked or copied '
                         f'folder?): {shown}. Each image belongs to one class of one split.')


def read_image_folder(root: Path) -> Tuple[datasets.DatasetDict, List[str]]:
    """An image folder read as torchvision's ImageFolder reads it, with split folders: <root>/[<split>/]<class>/**/
    <image>. A class is a top-level folder (its subfolders are its images, not classes of their own), a split is
    a top-level folder named like one that holds class folders, single wrapper folders are looked through,
    symlinks are followed (each folder once), and hidden files and folders are not data. Returns the splits and
    what was left out, each named: files that are not images or lie outside a class folder, broken links and
    empty class folders. A file in two splits or classes is an error."""
    top = root
    root = _unwrap(top, into_split=False)
    layout = _split_layout(root)
    ignored: List[str] = []
    levels = {p for folder in layout.values() for p in (folder, *folder.parents) if p == top or top in p.parents}
    for folder in sorted(levels):  # the root, wrapper and split folders: files outside a class folder, broken links
        ignored += [f'{p} (outside a class folder)' if p.is_file() else f'{p} (broken link)'
                    for p in sorted(folder.iterdir()) if not p.is_dir() and not _is_hidden(p.name)]
    found = {split: _split_classes(folder, ignored) for split, folder in layout.items()}
    _check_each_file_once(found)
    names = sorted(c for c, paths in found['train'].items() if paths)
    if not names:
        loose = _loose_images(layout['train'])
        where = (f'{len(loose)} image(s) lie directly in {str(layout["train"])!r}, outside a class folder'
                 if loose else f'No images found in class folders of {str(layout["train"])!r}')
        raise ValueError(f'{where}. Expected <dir>/<class>/<image> or <dir>/<split>/<class>/<image> (jpg, png, ...): '
                         'one folder per class.')
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=names)})
    index = {name: i for i, name in enumerate(names)}
    result = {}
    for split, images in found.items():
        untrained = sorted(c for c, paths in images.items() if paths and c not in index)
        if untrained:
            raise ValueError(f'Class folder(s) {untrained[:10]} of the {split!r} split have no training images in '
                             f'{str(layout["train"])!r}: every class evaluated must be trained.')
        rows = [(path, index[c]) for c, paths in images.items() for path in paths]
        if rows:
            paths, labels = zip(*rows)
            result[split] = datasets.Dataset.from_dict({'image': list(paths), 'label': list(labels)},
                                                       features=features)
    return datasets.DatasetDict(result), ignored


def has_metadata_file(root: Path) -> bool:
    """A metadata file at the top (or below its wrapper folders) or in a split folder: labels come from it, through
    `datasets`' imagefolder (one in a class folder is not the dataset's)."""
    tops = dict.fromkeys([root, _unwrap(root, into_split=False)])
    folders = [*tops, *(p for top in tops for p in _visible_dirs(top) if _split_named(p))]
    return any((folder / name).is_file() for folder in folders for name in _METADATA_FILES)


def holds_images(root: Path) -> bool:
    """Any image file below `root` (an image folder with a parquet file of its own, e.g. annotations, stays one)."""
    return any(_is_image(p) and p.is_file() for p in root.rglob('*'))
