"""Evaluate trained weights without retraining: top-1/top-5, per-head top-1, per-class accuracy, confusion matrix.

    timm-fgvc eval --checkpoint output/run/model.safetensors --out eval/            # the run's own eval data
    timm-fgvc eval --model hf-hub:timm-fgvc/s3n_resnet50.cub200 --dataset bentrevett/caltech-ucsd-birds-200-2011 \\
                   --split test --robustness --out eval/

The numbers come from the training engine's own code (`load_fgvc_dataset`, `build_transforms`,
`trainer.evaluate`), so for a run's weights and data they equal the run's final eval. `robustness=True` adds
SSANet's robustness evaluations (Sec. 4, Tables 1-2): the inputs rotated by +-15/30/45 degrees, and shrunk to
0.5-0.9 of their side and padded back to the input size. The paper gives one rotated setting without its angle,
and shrinks 448 px inputs to 300 px (0.67); neither paper says what the padding is: `pad='black'` (zero pixels,
the default) or `pad='mean'` (the normalisation mean, a zero model input).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import datasets
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw, ImageFont
from torchvision import transforms as T

from .data.loading import load_fgvc_dataset
from .engine.checkpoint import data_signature
from .engine.config import TrainConfig
from .inference import LoadedModel
from .runs import run_train_config

__all__ = ['ROTATIONS', 'SCALES', 'InputPerturbation', 'evaluate_model', 'robustness_table',
           'render_confusion_matrix', 'read_reports', 'write_report']

ROTATIONS = (-45.0, -30.0, -15.0, 15.0, 30.0, 45.0)  # degrees (SSANet Table 1: rotated input)
SCALES = (0.9, 0.8, 0.7, 0.6, 0.5)  # fraction of the side (SSANet Table 2: reduced input, padded)


class InputPerturbation:
    """Rotate a model input `[C, H, W]` about its centre by `angle` degrees, then shrink it to `scale` of its side
    and pad it back to `[C, H, W]` (centred); the uncovered area is `fill` (one value per channel, model units)."""

    def __init__(self, angle: float = 0.0, scale: float = 1.0, fill: Sequence[float] = (0.0, 0.0, 0.0)):
        if not 0 < scale <= 1:
            raise ValueError(f'scale must be in (0, 1], got {scale}.')
        self.angle, self.scale, self.fill = float(angle), float(scale), [float(v) for v in fill]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.angle:
            x = TF.rotate(x, self.angle, interpolation=TF.InterpolationMode.BILINEAR, fill=self.fill)
        if self.scale < 1:
            h, w = x.shape[-2:]
            small = TF.resize(x, [max(1, round(h * self.scale)), max(1, round(w * self.scale))], antialias=True)
            canvas = torch.tensor(self.fill, dtype=x.dtype).view(-1, 1, 1).expand_as(x).clone()
            top, left = (h - small.shape[-2]) // 2, (w - small.shape[-1]) // 2
            canvas[:, top:top + small.shape[-2], left:left + small.shape[-1]] = small
            x = canvas
        return x


class _Recorder(nn.Module):
    """Passes through the engine's `TrainStep` and keeps the main logits and targets for per-class numbers."""

    def __init__(self, step: nn.Module):
        super().__init__()
        self.step = step
        self.logits: List[torch.Tensor] = []
        self.targets: List[torch.Tensor] = []

    def forward(self, x: torch.Tensor, target: torch.Tensor):
        out = self.step(x, target)
        self.logits.append(out['logits'][out['main']].detach().float().cpu())
        self.targets.append(target.detach().cpu())
        return out


def _eval_config(loaded: LoadedModel, dataset: Optional[str], split: Optional[str], batch_size: Optional[int],
                 max_samples: Optional[int], img_size: Optional[int], dataset_config: Optional[str],
                 image_column: Optional[str], label_column: Optional[str]) -> TrainConfig:
    """The run's config (its data, split, preprocessing, eval batch size) with the given fields replaced."""
    if loaded.run is not None:
        cfg = run_train_config(loaded.run)
        moved = loaded.run.get('dataset_path')  # the run's local folder, absolute: relative paths move with the cwd
        if dataset is None and moved and not Path(cfg.dataset).exists():
            if not Path(moved).exists():
                raise FileNotFoundError(f"The run's dataset folder {moved} is not there any more: name the data to "
                                        'evaluate on with --dataset.')
            cfg.dataset = moved
    elif dataset is None:
        raise ValueError(f'{loaded.name} comes with no training run to take its data from (a Hub or exported model, '
                         'or weights without their results.json): name the data to evaluate on with --dataset '
                         "('synthetic', a Hub dataset id or an image folder).")
    else:
        cfg = TrainConfig(model=loaded.name, dataset=dataset, synthetic_classes=loaded.num_classes)
        if (drawn := _run_draw(loaded, dataset)) is not None:  # hold out what the export's run held out
            cfg.train_split, cfg.eval_fraction, cfg.seed = drawn['train_split'], drawn['eval_fraction'], drawn['seed']
        test_size = (getattr(loaded.model, 'pretrained_cfg', None) or {}).get('test_input_size')
        cfg.test_img_size = test_size[-1] if test_size else None  # the size its run evaluated at, as predict uses
    if dataset is not None and dataset != cfg.dataset:
        cfg.dataset, cfg.dataset_config, cfg.image_column, cfg.label_column = dataset, None, None, None
    for key, value in dict(eval_split=split, eval_batch_size=batch_size, max_eval_samples=max_samples,
                           img_size=img_size, dataset_config=dataset_config, image_column=image_column,
                           label_column=label_column).items():
        if value is not None:
            setattr(cfg, key, value)
    if img_size:
        cfg.test_img_size = None
    return cfg


def _run_draw(loaded: LoadedModel, dataset: Optional[str]) -> Optional[Dict[str, Any]]:
    """An export's record of the part of its training data its run held out (`training_data`), when `dataset`
    names that data: its Hub id, or a folder of the same name as the run's (its image count is checked once
    loaded)."""
    record = loaded.training_data or {}
    if dataset is None or record.get('seed') is None:
        return None
    if record.get('folder'):
        return record if Path(dataset).is_dir() and Path(dataset).resolve().name == record['folder'] else None
    return record if dataset == record.get('dataset') else None


def _in_model_classes(data, names: List[str], dataset: str):
    """`data` with its eval images labelled by the model's classes, matched by name (a folder lists its classes
    alphabetically, a Hub dataset in its own order; a test set may hold some of the classes only). A class the
    model does not know is an error."""
    column, index = data.label_column, {name: i for i, name in enumerate(names)}
    present = [data.label_names[i] for i in sorted(set(data.eval[column]))]
    unknown = [name for name in present if name not in index]
    if unknown:
        raise ValueError(f'Dataset {dataset!r} has images of {len(unknown)} class(es) the model was not trained on '
                         f'({unknown[:5]}; the model\'s classes: {names[:5]}{"..." if len(names) > 5 else ""}): '
                         'evaluate it on images of its classes.')
    to_model = [index.get(name, -1) for name in data.label_names]
    features = data.eval.features.copy()
    features[column] = datasets.ClassLabel(names=names)
    evaluation = data.eval.map(lambda labels: {column: [to_model[v] for v in labels]}, input_columns=[column],
                               batched=True, features=features)
    return dataclasses.replace(data, eval=evaluation, label_names=list(names))


def _check_run_eval_set(run: Dict[str, Any], data) -> None:
    """The run's own data, evaluated as the run did, must give the run's eval set (its recorded `data_signature`):
    images added or removed since would move a held-out draw onto images the run trained on."""
    recorded = run.get('data_signature')
    if not recorded:  # a run from before the signature was recorded
        return
    now = data_signature(data.train[data.label_column], data.eval[data.label_column], data.label_names)
    changed = [k for k in ('classes', 'eval_images', 'eval_labels') if now[k] != recorded.get(k)]
    if changed:
        held_out = ('its eval images are drawn from its training split again, and the draw may now hold images it '
                    'trained on' if data.eval_held_out else 'this is not the eval set it was measured on')
        raise ValueError(f"The run's data changed since it trained ({', '.join(changed)} differ: eval images "
                         f"{recorded.get('eval_images')} then, {now['eval_images']} now): {held_out}. Restore the "
                         'data as it was, or evaluate on a test split of other data (--dataset, --split).')


def _same_data(dataset: str, run: Dict[str, Any]) -> bool:
    """`dataset` names the run's data: its id, or its local folder however spelled (`./birds`, an absolute path)."""
    if dataset == run.get('dataset'):
        return True
    path = run.get('dataset_path')
    return bool(path) and Path(dataset).exists() and Path(dataset).resolve() == Path(path).resolve()


def evaluate_model(loaded: LoadedModel, dataset: Optional[str] = None, split: Optional[str] = None,
                   batch_size: Optional[int] = None, device: Optional[str] = None, robustness: bool = False,
                   rotations: Sequence[float] = ROTATIONS, scales: Sequence[float] = SCALES, pad: str = 'black',
                   max_samples: Optional[int] = None, img_size: Optional[int] = None,
                   dataset_config: Optional[str] = None, image_column: Optional[str] = None,
                   label_column: Optional[str] = None, skip_bad_images: Optional[bool] = None) -> Dict[str, Any]:
    """The evaluation report of `loaded` on `dataset` (default: the run's own; `'synthetic'`, a Hub id or an
    image folder) and `split` (default: as training chose it). The images evaluated are checked first: with
    `skip_bad_images` (default: as the run had it) those that cannot be read are left out and counted in the report.

    Keys: split (what was evaluated), warnings, top1, top5, loss, top1_per_head, per_class (label, samples, top1:
    None for a class with no image evaluated), confusion_matrix (rows: true class,
    columns: predicted), samples; with `robustness`, `robustness` = {'rotation': {angle: top1}, 'scale':
    {scale: top1}, 'pad': pad}. A model whose outputs are not finite (diverged weights) raises FloatingPointError
    instead of scoring them; the model is left in eval mode either way.
    """
    from .engine.trainer import TrainStep, build_transforms, eval_data_loader, evaluate, new_accelerator

    if pad not in ('black', 'mean'):
        raise ValueError(f"pad must be 'black' or 'mean', got {pad!r}.")
    cfg = _eval_config(loaded, dataset, split, batch_size, max_samples, img_size, dataset_config, image_column,
                       label_column)
    synthetic_args = dict(num_classes=cfg.synthetic_classes, train_per_class=cfg.synthetic_train_per_class,
                          test_per_class=cfg.synthetic_test_per_class, image_size=cfg.synthetic_image_size,
                          seed=cfg.seed)
    other_data = loaded.run is not None and dataset is not None and not _same_data(dataset, loaded.run)
    if other_data:  # data the run did not train on: no few-shot or capped draw of its training split
        cfg.shots = cfg.max_train_samples = None
        if split is None:  # its eval split, else all of its images
            cfg.eval_fraction = 0.

    def load():
        return load_fgvc_dataset(
            cfg.dataset, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.image_column, cfg.label_column,
            cfg.eval_fraction, cfg.shots, cfg.seed, cfg.max_train_samples, cfg.max_eval_samples, synthetic_args,
            check_images=cfg.check_images, check_splits=('eval',),
            skip_bad_images=cfg.skip_bad_images if skip_bad_images is None else skip_bad_images)

    data = load()
    if other_data and split is None and data.eval is None:
        cfg.eval_split = cfg.train_split
        data = load()
    if data.eval is None or not len(data.eval):
        raise ValueError(f'Dataset {cfg.dataset!r} has no evaluation images (no eval split, and --eval-fraction 0 '
                         f'{"in its run" if loaded.run else "given"}): name a split other than {cfg.train_split!r} '
                         'with --split, or other data with --dataset.')
    if loaded.run is not None and dataset is None and split is None and max_samples is None:
        _check_run_eval_set(loaded.run, data)
    if loaded.label_names and list(loaded.label_names) != list(data.label_names):
        data = _in_model_classes(data, list(loaded.label_names), cfg.dataset)
    elif data.num_classes != loaded.num_classes:
        raise ValueError(f'The model has {loaded.num_classes} classes but dataset {cfg.dataset!r} has '
                         f'{data.num_classes}: evaluate it on the data it was trained for.')

    if device is not None and (torch.device(device).type not in ('cpu', 'cuda') or torch.device(device).index):
        raise ValueError(f'--device {device}: eval runs on cpu or cuda, the first visible GPU (pick another with '
                         'CUDA_VISIBLE_DEVICES).')
    accelerator = new_accelerator(cpu=device is not None and torch.device(device).type == 'cpu',
                                  mixed_precision=cfg.mixed_precision)
    model = loaded.model
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = TrainStep(model)
    if hasattr(model, 'training_stages'):  # the loss as the run's last stage counted it
        step.loss_terms = model.training_stages()[-1].loss_terms
    recorder = accelerator.prepare(_Recorder(step))
    _, eval_tf, data_cfg = build_transforms(model, cfg)

    def run(transform) -> Dict[str, float]:
        recorder.logits.clear(), recorder.targets.clear()
        try:
            return evaluate(accelerator, recorder, accelerator.prepare(eval_data_loader(data, transform, cfg)), cfg)
        finally:  # the engine's evaluate leaves its module in training mode, also when it raises (a diverged model)
            model.eval()

    metrics = run(eval_tf)
    logits, targets = torch.cat(recorder.logits), torch.cat(recorder.targets)
    n = data.num_classes
    confusion = torch.bincount(targets * n + logits.argmax(-1), minlength=n * n).view(n, n)
    per_class = [dict(label=data.label_names[c], index=c, samples=int(confusion[c].sum()),
                      top1=100.0 * float(confusion[c, c]) / int(confusion[c].sum()) if confusion[c].sum() else None)
                 for c in range(n)]  # None: no image of the class was evaluated
    caveats = []
    if cfg.eval_split == cfg.train_split and not other_data:
        caveats.append(f'{cfg.eval_split!r} is the training split: a model trained on it scores its training images.')
    drawn = _run_draw(loaded, cfg.dataset) if loaded.run is None else None
    found = len(data.train) + len(data.eval)
    if drawn and drawn.get('images') and cfg.max_eval_samples is None and found != drawn['images']:
        caveats.append(f"{cfg.dataset!r} holds {found} images in {cfg.train_split!r} but the data this model's run "
                       f"held images out of had {drawn['images']}: other data, or changed since, so this is not the "
                       'run\'s held-out draw and may hold images it trained on.')
    elif data.eval_held_out and loaded.run is None and drawn is None:
        caveats.append(f'{cfg.dataset!r} has no eval split, so {data.eval_split} was evaluated: if this model was '
                         'trained on this data with another seed or --eval-fraction, some of these images are its '
                         "training images. Evaluate with the run's checkpoint, which holds out what it held out, or "
                         'on data with a test split.')
    report: Dict[str, Any] = dict(
        model=loaded.name, checkpoint=loaded.checkpoint, dataset=cfg.dataset, split=data.eval_split,
        warnings=caveats,
        samples=metrics['eval_samples'], top1=metrics['eval_top1'], top5=metrics['eval_top5'],
        loss=metrics['eval_loss'],
        top1_per_head={k[len('eval_top1_'):]: v for k, v in metrics.items() if k.startswith('eval_top1_')},
        per_class=per_class, label_names=list(data.label_names), confusion_matrix=confusion.tolist(),
        bad_images_skipped=len(data.bad_images), bad_images=data.bad_images,
        files_ignored=len(data.ignored_files), ignored_files=data.ignored_files[:100],
        input_size=[3, cfg.test_img_size, cfg.test_img_size] if cfg.test_img_size else list(data_cfg['input_size']))
    if loaded.final_weights and _same_data(cfg.dataset, loaded.run):
        # the run's own number for these weights on this data (not for a step checkpoint's)
        report['run_final_top1'] = (loaded.run.get('final') or {}).get('eval_top1')
    if robustness:
        mean, std = data_cfg['mean'], data_cfg['std']
        fill = [0.0] * len(mean) if pad == 'mean' else [-m / s for m, s in zip(mean, std)]  # zero pixels
        report['robustness'] = dict(
            pad=pad,
            rotation={f'{a:g}': run(T.Compose([eval_tf, InputPerturbation(angle=a, fill=fill)]))['eval_top1']
                      for a in rotations},
            scale={f'{s:g}': run(T.Compose([eval_tf, InputPerturbation(scale=s, fill=fill)]))['eval_top1']
                   for s in scales})
    return report


def robustness_table(reports: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table, one row per evaluated model (SSANet Tables 1-2 side by side): top-1 on the original
    inputs, rotated inputs (mean of +a and -a where both were run) and reduced, padded inputs."""
    rotations = sorted({abs(float(a)) for r in reports for a in r['robustness']['rotation']})
    scales = sorted({float(s) for r in reports for s in r['robustness']['scale']}, reverse=True)
    head = ['Model', 'Original'] + [f'Rotated ±{a:g}°' for a in rotations] + [f'Reduced ×{s:g}' for s in scales]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in reports:
        rot = {float(a): v for a, v in r['robustness']['rotation'].items()}
        cells = [f'`{r["model"]}`', f'{r["top1"]:.2f}']
        for a in rotations:
            values = [rot[x] for x in (a, -a) if x in rot]
            cells.append(f'{sum(values) / len(values):.2f}' if values else '–')
        scale = {float(s): v for s, v in r['robustness']['scale'].items()}
        cells += [f'{scale[s]:.2f}' if s in scale else '–' for s in scales]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def render_confusion_matrix(confusion: Sequence[Sequence[int]], label_names: Sequence[str],
                            title: str = '') -> Image.Image:
    """The confusion matrix as a picture: rows the true class, columns the prediction, each row normalised
    (white = 0, dark blue = the whole row); class names on the rows and counts in the cells when they fit."""
    matrix = torch.tensor(confusion, dtype=torch.float32)
    n = matrix.shape[0]
    cell = max(4, min(40, 800 // max(n, 1)))
    font = ImageFont.load_default(size=max(9, min(14, cell - 6)))
    names = [f'{i}: {str(x)[:24]}' for i, x in enumerate(label_names)] if cell >= 10 else [''] * n
    margin_left = 12 + max((int(font.getlength(x)) for x in names), default=0)
    margin_top = 44 + (font.size + 4 if cell >= 14 else 0)
    lines = [title or 'Confusion matrix', 'rows: true class, columns: predicted (row-normalised)']
    width = max(margin_left + n * cell, 8 + max(int(font.getlength(t)) for t in lines)) + 10
    image = Image.new('RGB', (width, margin_top + n * cell + 10), 'white')
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((8, 4 + i * (font.size + 6)), text, fill='black', font=font)
    if cell >= 14:  # the predicted class index above each column (the rows carry the names)
        for j in range(n):
            draw.text((margin_left + j * cell + 2, margin_top - font.size - 4), str(j), fill='black', font=font)
    share = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    for i in range(n):
        if names[i]:
            draw.text((4, margin_top + i * cell + (cell - font.size) // 2), names[i], fill='black', font=font)
        for j in range(n):
            v = float(share[i, j])
            colour = tuple(int(round(255 - v * (255 - c))) for c in (20, 60, 160))
            box = (margin_left + j * cell, margin_top + i * cell, margin_left + (j + 1) * cell - 1,
                   margin_top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour)
            if cell >= 24 and matrix[i, j] > 0:
                draw.text((box[0] + 3, box[1] + (cell - font.size) // 2), f'{int(matrix[i, j])}',
                          fill='white' if v > 0.5 else 'black', font=font)
    return image


def read_reports(paths: Sequence[Union[str, Path]]) -> List[Dict[str, Any]]:
    """Earlier `report.json` files with robustness results (to compare methods in one table)."""
    reports = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f'No eval report at {path} (the report.json of `timm-fgvc eval --robustness`).')
        report = json.loads(path.read_text())
        if 'robustness' not in report:
            raise ValueError(f'{path} has no robustness results: make it with `timm-fgvc eval --robustness`.')
        reports.append(report)
    return reports


def write_report(report: Dict[str, Any], out_dir: Union[str, Path],
                 compare: Sequence[Dict[str, Any]] = ()) -> Dict[str, Path]:
    """`report.json` and `confusion.png` (and `robustness.md` when the report has one, with a row per report
    of `compare` before its own) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {'report': out_dir / 'report.json', 'confusion': out_dir / 'confusion.png'}
    paths['report'].write_text(json.dumps(report, indent=2))
    title = f'{report["model"]} on {report["dataset"]}: top-1 {report["top1"]:.2f}%'
    render_confusion_matrix(report['confusion_matrix'], report['label_names'], title).save(paths['confusion'])
    if 'robustness' in report:
        paths['robustness'] = out_dir / 'robustness.md'
        paths['robustness'].write_text(robustness_table(list(compare) + [report]) + '\n')
    return paths
