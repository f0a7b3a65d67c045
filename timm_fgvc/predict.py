"""Ask a trained model about image files: top-k class names with probabilities.

    timm-fgvc predict --checkpoint output/run/model.safetensors photos/ --out preds.csv
    timm-fgvc predict --model hf-hub:timm-fgvc/s3n_resnet50.cub200 bird.jpg --top-k 3

Folders are searched recursively (hidden files skipped). Images are read with the model's eval transform and
predicted in batches; a file that cannot be read as an image (corrupt, truncated, not an image) is reported by
path and skipped, and every other file is still predicted.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .data.loading import open_image
from .inference import LoadedModel, eval_transform

__all__ = ['Prediction', 'find_files', 'predict', 'format_predictions', 'predictions_path', 'write_predictions']


@dataclass
class Prediction:
    """The top-k of one file, best first; `error` says why a file was skipped (then the lists are empty)."""
    path: str
    labels: List[str] = field(default_factory=list)
    indices: List[int] = field(default_factory=list)
    probabilities: List[float] = field(default_factory=list)
    error: Optional[str] = None


def find_files(paths: Sequence[Union[str, Path]]) -> List[Path]:
    """Files as given and every file under the given folders (recursively, sorted, hidden names skipped; symlinked
    folders are followed, each folder once, as training reads an image folder)."""
    found: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            below, seen = [], set()
            for parent, dirs, files in os.walk(path, followlinks=True):
                if os.path.realpath(parent) in seen:  # a symlink loop, or a folder linked twice
                    dirs[:] = []
                    continue
                seen.add(os.path.realpath(parent))
                dirs[:] = [d for d in dirs if not d.startswith('.')]
                below += [Path(parent, name) for name in files
                          if not name.startswith('.') and Path(parent, name).is_file()]
            found += sorted(below)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f'No file or folder at {path}.')
    if not found:
        raise ValueError(f'No files found in {", ".join(map(str, paths))}.')
    return found


class _ImageFiles(torch.utils.data.Dataset):
    """Each file as `(pixels or None, index, error)`: a file that fails to decode does not stop the batch."""

    def __init__(self, files: Sequence[Path], transform: Callable):
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:  # open_image: any mode to RGB (16-bit scaled, not clipped), a damaged file named
            return self.transform(open_image(self.files[index])), index, None
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError... per format
            cause = e.__cause__ or e  # open_image's ValueError names the file, which the report names already
            return None, index, f'not a readable image ({type(cause).__name__}: {cause})'


def _collate(rows):
    good = [r for r in rows if r[0] is not None]
    pixels = torch.stack([r[0] for r in good]) if good else None
    return pixels, [r[1] for r in good], [(r[1], r[2]) for r in rows if r[0] is None]


@torch.inference_mode()
def predict(loaded: LoadedModel, paths: Sequence[Union[str, Path]], top_k: int = 5, batch_size: int = 32,
            num_workers: int = 0, img_size: Optional[int] = None, progress: bool = True) -> List[Prediction]:
    """Top-k predictions (`model(x).softmax(-1)`, the method's final output) for every file in `paths`, in the
    order found; unreadable files come back with `error` set."""
    if top_k < 1:
        raise ValueError(f'--top-k {top_k}: ask for at least 1 class.')
    files = find_files(paths)
    transform, _ = eval_transform(loaded, img_size)
    loader = torch.utils.data.DataLoader(_ImageFiles(files, transform), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=_collate)
    model = loaded.model.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype  # half weights: half inputs
    k = min(top_k, loaded.num_classes)
    results: List[Optional[Prediction]] = [None] * len(files)
    for pixels, indices, failures in tqdm(loader, desc='predict', unit='batch', disable=not progress,
                                          file=sys.stderr):
        for index, error in failures:
            results[index] = Prediction(path=str(files[index]), error=error)
        if pixels is None:
            continue
        probs = model(pixels.to(device, dtype)).float().softmax(-1)
        top = probs.topk(k, -1)
        for row, index in enumerate(indices):
            classes = top.indices[row].tolist()
            results[index] = Prediction(path=str(files[index]), labels=[loaded.label(c) for c in classes],
                                        indices=classes, probabilities=top.values[row].tolist())
    return results


def format_predictions(predictions: Sequence[Prediction], top_k: Optional[int] = None) -> str:
    """A plain-text table: one row per file, its top-k as `label (probability)`; skipped files say why."""
    width = max(len('file'), *(len(p.path) for p in predictions))
    k = top_k or max((len(p.labels) for p in predictions), default=0)
    rows = [[f'{label} ({prob:.3f})' for label, prob in zip(p.labels, p.probabilities)] for p in predictions]
    widths = [max([len(f'top-{i + 1}')] + [len(r[i]) for r in rows if i < len(r)]) for i in range(k)]
    lines = [f'{"file":<{width}}  ' + '  '.join(f'{f"top-{i + 1}":<{w}}' for i, w in enumerate(widths))]
    for p, cells in zip(predictions, rows):
        row = '  '.join(f'{c:<{w}}' for c, w in zip(cells, widths))
        lines.append(f'{p.path:<{width}}  ' + (row if p.error is None else f'skipped: {p.error}'))
    return '\n'.join(line.rstrip() for line in lines)


def predictions_path(out: Union[str, Path]) -> Path:
    """`out` as a predictions file, checked before any work: a `.csv` or `.jsonl` name."""
    out = Path(out)
    if out.suffix not in ('.csv', '.jsonl'):
        raise ValueError(f'--out {out}: use a .csv or .jsonl file name.')
    return out


def write_predictions(predictions: Sequence[Prediction], out: Union[str, Path]) -> Path:
    """`.csv` (one row per file: path, error, then label/index/probability per rank) or `.jsonl` (one object
    per file)."""
    out = predictions_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == '.jsonl':
        with out.open('w') as f:
            for p in predictions:
                f.write(json.dumps(asdict(p)) + '\n')
        return out
    k = max((len(p.labels) for p in predictions), default=0)
    header = ['path', 'error'] + [f'{col}_{i + 1}' for i in range(k) for col in ('label', 'index', 'probability')]
    with out.open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in predictions:
            ranks = [v for triple in zip(p.labels, p.indices, (f'{x:.6f}' for x in p.probabilities)) for v in triple]
            writer.writerow([p.path, p.error or ''] + ranks + [''] * (len(header) - 2 - len(ranks)))
    return out
