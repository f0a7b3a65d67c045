#!/usr/bin/env python
"""Accuracy of every method against its plain timm backbone (the baseline), with an identical budget.

Each method variant (`<method>_<backbone>`, default backbone resnet18) and the plain timm backbone (`resnet18`)
are trained by the same engine (`timm_fgvc.engine.trainer.train` with a `TrainConfig`) with the same data,
input size, epochs, batch size, optimiser, learning rates (backbone and new layers alike: no ImageNet weights
exist here, everything trains from scratch), schedule and seed. The report gives top-1 / top-5 of each and the
method's gain over the baseline (per seed, then the mean), on

- `synthetic`: the embedded synthetic FGVC set (`timm_fgvc.data.synthetic`), plus the **hit rate** of each
  model's attention on the test split (S3N Table 1): a peak counts as a hit when it lies inside a ground-truth
  part box (boxes mapped through the eval transform's resize / centre crop into model-input pixels); the
  per-image rate hits / (hits + misses) is averaged over images. The same with the object box (the paper's
  CUB protocol used the object's bounding box), the hit rate of the top peak alone, part coverage (share of
  visible parts holding at least one peak), and the chance level (a peak at a random cell centre of the
  backbone's feature grid). The baseline's "attention" is its top-1 class activation map (CAM), read into the
  top 6 cells by LFD's own proposals + NMS (5-cell squares, IoU 0.25): its top point is the CAM argmax, and the
  top-1 and top-6 hit rates compare every model like with like (each model's best 1 / best 6 points).
- `cub`: the first `--cub-classes` classes of CUB-200-2011 from `../shared/data/cub200_s160.tar` (unpacked to a
  temp dir outside the repo), official train/test split, at `--cub-img-size` px.

    python bench/accuracy.py --quick                          # smoke run: a few steps, tiny data (CPU, ~3 min)
    python bench/accuracy.py --backbone test_resnet --threads 1   # s3n_tiny vs test_resnet, engine defaults
    python bench/accuracy.py --epochs 12 --batch-size 16 --optimizer sgd --lr 0.05 --warmup-epochs 1 \
        --synthetic-train-per-class 40 --synthetic-test-per-class 10 --threads 1     # S3N-R18 vs R18, ~14 min CPU
    python bench/accuracy.py --suites cub --cub-classes 50 --cub-img-size 128 --epochs 10
    for k in 1 2 3 5 10 15 20 25 30; do python bench/accuracy.py --methods hsm --shots $k --seeds 0 1 2; done
    for k in 1 3 5 10; do python bench/accuracy.py --suites transfer --methods hsm --shots $k --seeds 0 1 2; done
    python bench/accuracy.py --suites transfer --methods s3n --seeds 1 --img-size 192 --threads 2  # off the protocol

Budget flags left unset take the engine's `TrainConfig` defaults (the same for both models); the backbone's
learning rate equals `--lr` (nothing is pretrained here). The baseline gets the method's data config
(`pretrained_cfg_overlay`: crop, interpolation, mean / std) and the run checks that both saw identically
transformed images (`identical_transforms` in the results).

Results: `bench/results/accuracy_<suite>.json` (`--quick` writes to a temp dir unless `--results-dir`); a run with
a different budget is added next to the earlier ones (the report shows the latest and lists the others as
"also tried"), a run with the same budget replaces its older entry.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (PAPER_SETUP, REPO, RESULTS_DIR, locked, merge_results, registered_variants,  # noqa: E402
                     run_metadata, split_variant)

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from timm_fgvc.data.synthetic import render_sample  # noqa: E402
from timm_fgvc.engine.config import TrainConfig  # noqa: E402
from timm_fgvc.engine.trainer import build_transforms, train  # noqa: E402
from timm_fgvc.layers import class_activation_map, propose_square_regions  # noqa: E402
from transfer import SOURCE_STEP_EPOCHS, TRANSFER_DEFAULTS  # noqa: E402

DEFAULT_CUB_TAR = REPO.parent / 'shared' / 'data' / 'cub200_s160.tar'


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def prepare_cub_subset(tar_path: Path, num_classes: int, workdir: Path, first: int = 0) -> Tuple[Path, List[str]]:
    """Extract `num_classes` classes (sorted folder names) from the `first`-th on, of both splits, into `workdir`.

    Returns the image-folder root (`<root>/{train,test}/<class>/*.jpg`, what the engine's `dataset=<dir>`
    reads as torchvision's ImageFolder with split folders) and the class names. Only the needed members are extracted.
    """
    root = workdir / (f'cub200_s160_first{num_classes}' if first == 0 else
                      f'cub200_s160_classes{first + 1}-{first + num_classes}')
    marker = root / '.complete'  # holds the tar it was extracted from: another tar never reuses the folder
    source = f'{tar_path.resolve()} ({tar_path.stat().st_size} bytes)'
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        parts = [Path(m.name).parts for m in members]
        base = next(p.index('train') for p in parts if 'train' in p[:-1])  # depth of <split>/<class>/<image>
        classes = sorted({p[base + 1] for p in parts if len(p) > base + 2 and p[base] == 'train'})
        if len(classes) < first + num_classes:
            raise SystemExit(f'{tar_path} has {len(classes)} classes, fewer than {first} + {num_classes}.')
        keep = set(classes[first:first + num_classes])
        with locked(marker):  # parallel jobs (bench/sweep.py): one extracts, the others wait for it
            extracted_from = marker.read_text().strip() if marker.exists() else None
            if extracted_from and extracted_from != source:
                raise SystemExit(f'{root} was extracted from {extracted_from}, not {source}: use another --workdir '
                                 'for other data.')
            if extracted_from == '':  # an extraction of an earlier version, which did not record its tar
                marker.write_text(source)
            if extracted_from is None:
                for member, p in zip(members, parts):
                    if len(p) > base + 2 and p[base] in ('train', 'test') and p[base + 1] in keep:
                        target = root.joinpath(*p[base:])
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src:
                            target.write_bytes(src.read())
                marker.write_text(source)
    return root, classes[first:first + num_classes]


# --------------------------------------------------------------------------------------------------------------
# Hit rate
# --------------------------------------------------------------------------------------------------------------
_NON_GEOMETRIC = ('ToTensor', 'MaybeToTensor', 'PILToTensor', 'MaybePILToTensor', 'Normalize',
                  'ConvertImageDtype', 'ToDtype')


def eval_geometry(transform, width: int, height: int) -> Tuple[float, float, float, float, int, int]:
    """How the eval transform maps input pixels to model-input pixels: (sx, sy, ox, oy, out_w, out_h), so that
    `x' = x * sx - ox` (pixel-edge coordinates). Knows torchvision `Resize` and `CenterCrop` (timm's eval
    transform); any other geometric step raises, so a new transform cannot silently give wrong boxes."""
    from torchvision import transforms as T
    sx = sy = 1.
    ox = oy = 0.
    w, h = width, height
    for t in getattr(transform, 'transforms', [transform]):
        if isinstance(t, T.Resize):
            size = t.size
            if isinstance(size, int) or len(size) == 1:
                size = size if isinstance(size, int) else size[0]
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = size, int(size * long / short)
                if t.max_size is not None and new_long > t.max_size:
                    new_short, new_long = int(t.max_size * new_short / new_long), t.max_size
                new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            else:
                new_h, new_w = size
            sx, sy, ox, oy = sx * new_w / w, sy * new_h / h, ox * new_w / w, oy * new_h / h
            w, h = new_w, new_h
        elif isinstance(t, T.CenterCrop):
            th, tw = t.size
            if th > h or tw > w:
                raise ValueError('CenterCrop with padding is not supported by the hit-rate mapping.')
            left, top = int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))
            ox, oy = ox + left, oy + top
            w, h = tw, th
        elif type(t).__name__ not in _NON_GEOMETRIC:
            raise ValueError(f'Unknown transform {type(t).__name__} in the eval transform; teach eval_geometry '
                             'how it moves pixels.')
    return sx, sy, ox, oy, w, h


def map_box(box, geometry) -> Optional[List[float]]:
    """A pixel box through the eval geometry, clipped to the model input; None if nothing of it is left."""
    sx, sy, ox, oy, w, h = geometry
    x0, y0, x1, y1 = box[0] * sx - ox, box[1] * sy - oy, box[2] * sx - ox, box[3] * sy - oy
    x0, y0, x1, y1 = max(x0, 0.), max(y0, 0.), min(x1, float(w)), min(y1, float(h))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def _inside(points: torch.Tensor, boxes: List[List[float]]) -> torch.Tensor:
    """[K] bool: point (x, y) inside any box (x0 <= x < x1, y0 <= y < y1)."""
    hit = torch.zeros(points.shape[0], dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        hit |= (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
    return hit


# how the baseline's CAM is read into points, as LFD reads its M (Sec. 3.2 / 4.2): square regions of 5 feature
# cells centred on every cell, ranked by the map, NMS at IoU 0.25, the best m = 6; the hit rates over the top-k
# points of every model use the same k
CAM_REGION_CELLS, CAM_NMS_IOU, TOP_K_POINTS = 5, 0.25, 6


@torch.no_grad()
def attention_points(model, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Attention peaks in model-input pixels: (xy [B, K, 2], mask [B, K], score [B, K], kind).

    - a method whose `attention_maps(x, return_details=True)` gives `peak_xy` / `peak_mask` (S3N): its peaks;
    - one that gives `region_boxes` [B, K, 4] (x0, y0, x1, y1 px) / `region_mask`: the regions' centres;
    - other methods: the argmax of each of its K attention maps (maps that are all zero are masked out);
    - a plain timm model (the baseline): the centres of the TOP_K_POINTS cells of its top-1 class activation map
      (CAM) chosen as LFD chooses its regions (same region size in cells, same NMS); the first is the CAM's argmax.
    """
    if hasattr(model, 'attention_maps'):
        maps, details = model.attention_maps(x, return_details=True)
        if 'peak_xy' in details:
            mask = details['peak_mask'].bool()
            score = details.get('peak_scores', mask.float())
            return details['peak_xy'].float().cpu(), mask.cpu(), score.float().cpu(), 'attention peaks'
        if 'region_boxes' in details:
            boxes = details['region_boxes'].float()
            mask = details.get('region_mask', torch.ones(boxes.shape[:2], dtype=torch.bool)).bool()
            score = details.get('region_scores', mask.float())
            centres = torch.stack(((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2), -1)
            return centres.cpu(), mask.cpu(), score.float().cpu(), 'region centres'
        B, K, H, W = maps.shape
        flat = maps.flatten(2)
        score, index = flat.max(-1)
        xy = torch.stack(((index % W).float() + 0.5, (index // W).float() + 0.5), -1)
        return xy.cpu(), (score > 0).cpu(), score.float().cpu(), 'attention-map maxima'
    features = model.forward_features(x)  # [B, D, h, w]
    cam = class_activation_map(features, model.get_classifier(), model.forward_head(features))
    stride = x.shape[-1] / cam.shape[-1]
    regions = propose_square_regions(cam, tuple(x.shape[-2:]), round(CAM_REGION_CELLS * stride), TOP_K_POINTS,
                                     CAM_NMS_IOU)
    centres = (regions.boxes[..., :2] + regions.boxes[..., 2:]) / 2  # cell centres (regions are not shifted)
    return (centres.float().cpu(), regions.mask.cpu(), regions.scores.float().cpu(),
            f'top-1 CAM: top-{TOP_K_POINTS} cells by LFD-style proposals + NMS')


def feature_grid(baseline_name: str, size: int) -> Tuple[int, int]:
    """(h, w) of the plain backbone's feature map at `size` px: the grid attention peaks live on."""
    backbone = timm.create_model(baseline_name, num_classes=0, global_pool='')
    with torch.no_grad():
        return tuple(backbone.forward_features(torch.zeros(1, 3, size, size)).shape[-2:])


def hit_rates(model, cfg: TrainConfig, eval_tf, grid: Tuple[int, int], batch_size: int = 32) -> dict:
    """Hit rates of the model's attention on the synthetic test split (see the module docstring)."""
    model.eval()
    n = cfg.synthetic_classes * cfg.synthetic_test_per_class
    per_image = {'part': [], 'object': [], 'top_part': [], 'top_object': [], 'topk_part': [], 'topk_object': [],
                 'chance_part': [], 'chance_object': []}
    parts_seen = parts_hit = peaks_total = no_peaks = 0
    kind = None
    for start in range(0, n, batch_size):
        samples = [render_sample(i, num_classes=cfg.synthetic_classes, image_size=cfg.synthetic_image_size,
                                 seed=cfg.seed, split='test') for i in range(start, min(start + batch_size, n))]
        x = torch.stack([eval_tf(s['image'].convert('RGB')) for s in samples])
        geometry = eval_geometry(eval_tf, *samples[0]['image'].size)
        xy, mask, score, kind = attention_points(model, x)
        gh, gw = grid
        cells = torch.stack(torch.meshgrid((torch.arange(gw) + 0.5) * geometry[4] / gw,
                                           (torch.arange(gh) + 0.5) * geometry[5] / gh, indexing='xy'), -1)
        cells = cells.reshape(-1, 2)
        for b, s in enumerate(samples):
            part_boxes = [m for m in (map_box(box, geometry) for box in s['part_boxes']) if m is not None]
            object_box = [m for m in [map_box(s['object_box'], geometry)] if m is not None]
            per_image['chance_part'].append(_inside(cells, part_boxes).float().mean().item())
            per_image['chance_object'].append(_inside(cells, object_box).float().mean().item())
            points = xy[b][mask[b]]
            peaks_total += len(points)
            for box in part_boxes:
                parts_seen += 1
                parts_hit += int(_inside(points, [box]).any()) if len(points) else 0
            if not len(points):
                no_peaks += 1
                continue
            ranked = score[b][mask[b]].argsort(descending=True, stable=True)
            top, top_k = points[ranked[:1]], points[ranked[:TOP_K_POINTS]]
            per_image['topk_part'].append(_inside(top_k, part_boxes).float().mean().item())
            per_image['topk_object'].append(_inside(top_k, object_box).float().mean().item())
            per_image['part'].append(_inside(points, part_boxes).float().mean().item())
            per_image['object'].append(_inside(points, object_box).float().mean().item())
            per_image['top_part'].append(_inside(top, part_boxes).float().item())
            per_image['top_object'].append(_inside(top, object_box).float().item())
    mean = lambda v: 100. * statistics.fmean(v) if v else float('nan')  # noqa: E731
    return {
        'points': kind,
        'part_hit_rate': mean(per_image['part']),
        'object_hit_rate': mean(per_image['object']),
        'top_peak_part_hit_rate': mean(per_image['top_part']),
        'top_peak_object_hit_rate': mean(per_image['top_object']),
        # like with like: every model's best TOP_K_POINTS points (the baseline's by LFD's proposals and NMS)
        'top_k': TOP_K_POINTS,
        'topk_part_hit_rate': mean(per_image['topk_part']),
        'topk_object_hit_rate': mean(per_image['topk_object']),
        'part_coverage': 100. * parts_hit / max(parts_seen, 1),
        'chance_part_hit_rate': mean(per_image['chance_part']),
        'chance_object_hit_rate': mean(per_image['chance_object']),
        'mean_peaks_per_image': peaks_total / n,
        'images': n, 'images_without_peaks': no_peaks,
        'feature_grid': list(grid),
    }


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------
_ENGINE = TrainConfig()  # the engine's defaults fill every budget flag left unset


def _value(args, name: str):
    value = getattr(args, name)
    return getattr(_ENGINE, name) if value is None else value


def input_size(args, suite: str) -> int:
    if suite == 'cub':
        return args.cub_img_size
    return args.img_size or _value(args, 'synthetic_image_size')


def base_config(args, suite: str, dataset: str, seed: int) -> dict:
    """Every field that must be identical for the method and its baseline."""
    lr = _value(args, 'lr')
    epochs = _value(args, 'epochs')
    cfg = dict(
        dataset=dataset, img_size=input_size(args, suite), crop_pct=args.crop_pct or (1.0 if suite == 'synthetic'
                                                                                        else 0.875),
        epochs=epochs, batch_size=_value(args, 'batch_size'), optimizer=_value(args, 'optimizer'), lr=lr,
        backbone_lr=args.backbone_lr if args.backbone_lr is not None else lr, momentum=_ENGINE.momentum,
        weight_decay=_value(args, 'weight_decay'), scheduler=_value(args, 'scheduler'),
        warmup_epochs=_value(args, 'warmup_epochs'), seed=seed, cpu=args.cpu, mixed_precision=args.mixed_precision,
        num_workers=args.workers, eval_every=max(epochs, 1), keep_checkpoints=1, max_steps=args.max_steps,
        augment=True, shots=args.shots,
    )
    if suite == 'synthetic':
        cfg.update(synthetic_classes=_value(args, 'synthetic_classes'),
                   synthetic_train_per_class=_value(args, 'synthetic_train_per_class'),
                   synthetic_test_per_class=_value(args, 'synthetic_test_per_class'),
                   synthetic_image_size=_value(args, 'synthetic_image_size'))
    return cfg


def aligned_baseline_args(method_name: str, model_args: dict, baseline_args: dict) -> dict:
    """The baseline's kwargs with the method's data config (crop, interpolation, mean / std) as its
    `pretrained_cfg_overlay`, so both see identically preprocessed images (timm's resnet18 cfg differs)."""
    cfg = timm.create_model(method_name, num_classes=2, **model_args).pretrained_cfg
    overlay = {k: cfg[k] for k in ('interpolation', 'mean', 'std', 'crop_pct', 'crop_mode') if k in cfg}
    overlay.update(baseline_args.get('pretrained_cfg_overlay', {}))
    return {**baseline_args, 'pretrained_cfg_overlay': overlay}


def reproduce_command(args, suite: str, budget: dict) -> str:
    """The run as a command with every budget flag explicit, so it still means the same run after the
    engine's defaults change."""
    flags = ['--suites', suite, '--backbone', args.backbone]
    if args.variants:
        flags += ['--variants', *args.variants]
    if args.methods:
        flags += ['--methods', *args.methods]
    flags += ['--seeds', *map(str, args.seeds)]
    names = ['epochs', 'max_steps', 'batch_size', 'optimizer', 'lr', 'backbone_lr', 'weight_decay', 'scheduler',
             'warmup_epochs', 'crop_pct', 'mixed_precision', 'shots']
    if suite == 'synthetic':
        names += ['synthetic_classes', 'synthetic_train_per_class', 'synthetic_test_per_class',
                  'synthetic_image_size']
        if budget['img_size'] != budget['synthetic_image_size']:
            names.append('img_size')
    for name in names:
        if budget.get(name) is not None:
            flags += ['--' + name.replace('_', '-'), str(budget[name])]
    if suite == 'cub':
        flags += ['--cub-classes', str(args.cub_classes), '--cub-img-size', str(args.cub_img_size)]
    for name in ('model_args', 'baseline_args'):
        if getattr(args, name):
            flags += ['--' + name.replace('_', '-'), json.dumps(getattr(args, name))]
    if args.threads:
        flags += ['--threads', str(args.threads)]
    return ' '.join(['python', 'bench/accuracy.py'] + [shlex.quote(f) for f in flags])


def load_trained(name: str, num_classes: int, output_dir: Path, model_args: dict):
    model = timm.create_model(name, num_classes=num_classes, **model_args)
    model.load_state_dict(load_file(str(output_dir / 'model.safetensors')))
    return model.eval()


def run_one(name: str, base: dict, model_args: dict, workdir: Path, suite: str, seed: int, grid) -> dict:
    # a folder per budget and model arguments: parallel jobs of other budgets never train or score in each other's
    budget = hashlib.sha256(json.dumps([base, model_args], sort_keys=True, default=str).encode()).hexdigest()[:8]
    output_dir = workdir / suite / budget / f'seed{seed}' / name
    method, _ = split_variant(name)
    if method in PAPER_SETUP:
        # staged recipes (CAA, HSM, SSANet) share the baseline's epochs equally between their stages, so both
        # run the same number of optimiser steps (the stages' own paper epochs would not be the same budget)
        stages = timm.create_model(name, num_classes=2, **model_args).training_stages()
        if len(stages) > 1 or stages[0].epochs is not None:
            base = dict(base, stage_epochs=[base['epochs'] / len(stages)] * len(stages))
            print(f"{name}: {len(stages)} stage(s) {[s.name for s in stages]}, {base['stage_epochs']} epochs each "
                  f"({base['epochs']} in all, as the baseline)", flush=True)
    cfg = TrainConfig(model=name, model_args=dict(model_args), output_dir=str(output_dir), overwrite=True, **base)
    print(f'\n=== {suite} seed {seed}: {name} -> {output_dir}', flush=True)
    start = time.time()
    results = train(cfg)
    wall = time.time() - start
    final = results.get('final', {})
    record = {
        'model': name, 'seed': seed, 'top1': final.get('eval_top1'), 'top5': final.get('eval_top5'),
        'per_head_top1': {k[len('eval_top1_'):]: v for k, v in final.items() if k.startswith('eval_top1_')},
        'final_train_loss': final.get('train_loss'), 'eval_samples': final.get('eval_samples'),
        'train_seconds': results.get('train_seconds'), 'wall_seconds': wall, 'params': results.get('params'),
        'steps': final.get('step'), 'num_classes': results.get('num_classes'), 'engine_device': results.get('device'),
    }
    model = load_trained(name, results['num_classes'], output_dir, model_args)
    train_tf, eval_tf, _ = build_transforms(model, cfg)
    record['transforms'] = {'train': repr(train_tf), 'eval': repr(eval_tf)}
    if suite == 'synthetic':
        start = time.time()
        record['hit_rate'] = hit_rates(model, cfg, eval_tf, grid)
        record['hit_rate']['seconds'] = time.time() - start
        print(f"hit rate ({record['hit_rate']['points']}): part {record['hit_rate']['part_hit_rate']:.1f}%, "
              f"object {record['hit_rate']['object_hit_rate']:.1f}% (chance part "
              f"{record['hit_rate']['chance_part_hit_rate']:.1f}%, object "
              f"{record['hit_rate']['chance_object_hit_rate']:.1f}%)", flush=True)
    print(f"{name}: top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}%, {wall:.0f} s", flush=True)
    return record


def _stats(values: List[float]) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {'mean': None, 'std': None, 'n': 0}
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.,
            'n': len(values)}


def summarise(runs: List[dict], baseline: str, methods: List[str]) -> List[dict]:
    """Per model: top-1/top-5 over seeds, gain over the baseline (paired by seed), hit rates, wall time."""
    by_model: Dict[str, Dict[int, dict]] = {}
    for r in runs:
        by_model.setdefault(r['model'], {})[r['seed']] = r
    rows = []
    for name in [baseline] + methods:
        per_seed = by_model.get(name, {})
        row = {'model': name, 'role': 'baseline' if name == baseline else 'method',
               'top1': _stats([r['top1'] for r in per_seed.values()]),
               'top5': _stats([r['top5'] for r in per_seed.values()]),
               'wall_seconds': sum(r['wall_seconds'] for r in per_seed.values()),
               'seeds': sorted(per_seed)}
        if name != baseline:
            base = by_model.get(baseline, {})
            gains = [r['top1'] - base[s]['top1'] for s, r in per_seed.items() if s in base]
            row['gain_top1'] = _stats(gains)
            row['beats_baseline'] = bool(gains) and statistics.fmean(gains) > 0
        hits = [r['hit_rate'] for r in per_seed.values() if 'hit_rate' in r]
        if hits:
            row['hit_rate'] = {k: _stats([h[k] for h in hits])['mean'] for k in hits[0]
                               if isinstance(hits[0][k], (int, float))}
            row['hit_rate']['points'] = hits[0]['points']
        rows.append(row)
    return rows


def select_variants(args) -> List[str]:
    """Registered method variants whose backbone is `--backbone` (or the `--variants` given, which must have it)."""
    registered = registered_variants(args.methods)
    if args.variants:
        unknown = [v for v in args.variants if v not in registered]
        if unknown:
            raise SystemExit(f'Unknown variant(s) {unknown}; registered: {registered}.')
        candidates = args.variants
    else:
        candidates = registered
    chosen = [n for n in candidates if split_variant(n)[1] == args.backbone]
    if not chosen or args.variants:  # names that do not spell the backbone (s3n_tiny -> test_resnet)
        chosen = [n for n in candidates if timm.create_model(n, num_classes=2).backbone_name == args.backbone]
    if args.variants and len(chosen) != len(args.variants):
        raise SystemExit(f'--variants {args.variants}: every variant must have the backbone --backbone '
                         f'{args.backbone!r}, the baseline.')
    if not chosen:
        raise SystemExit(f'No registered method variant with backbone {args.backbone!r}.')
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--suites', nargs='+', default=['synthetic'], choices=('synthetic', 'cub', 'transfer'))
    p.add_argument('--methods', nargs='*', default=None, help=f'method prefixes (default: all of {list(PAPER_SETUP)})')
    p.add_argument('--backbone', default='resnet18',
                   help="timm backbone of the method variants (e.g. test_resnet for s3n_tiny); the baseline is "
                        "this plain timm model")
    p.add_argument('--variants', nargs='*', default=None, help='method variants by name (default: by --backbone)')
    p.add_argument('--model-args', type=json.loads, default={}, help='JSON kwargs for the method models')
    p.add_argument('--baseline-args', type=json.loads, default={}, help='JSON kwargs for the baseline')
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    # the shared budget; unset flags take the engine's TrainConfig defaults
    engine = lambda name: f"default: the engine's ({getattr(_ENGINE, name)})"  # noqa: E731
    p.add_argument('--epochs', type=int, default=None, help=engine('epochs'))
    p.add_argument('--max-steps', type=int, default=None)
    p.add_argument('--batch-size', type=int, default=None, help=engine('batch_size'))
    p.add_argument('--optimizer', default=None, choices=('sgd', 'adamw'), help=engine('optimizer'))
    p.add_argument('--lr', type=float, default=None, help=engine('lr'))
    p.add_argument('--backbone-lr', type=float, default=None, help='default: --lr (everything trains from scratch)')
    p.add_argument('--weight-decay', type=float, default=None, help=engine('weight_decay'))
    p.add_argument('--scheduler', default=None, help=engine('scheduler'))
    p.add_argument('--label-smoothing', type=float, default=None, help=engine('label_smoothing'))
    p.add_argument('--warmup-epochs', type=float, default=None, help=engine('warmup_epochs'))
    p.add_argument('--crop-pct', type=float, default=None, help='default: 1.0 on the synthetic set, 0.875 on CUB')
    p.add_argument('--mixed-precision', default=None, choices=('no', 'bf16', 'fp16'),
                   help="default: bf16 for the transfer suite (3x faster on CPUs with AMX), else 'no'")
    p.add_argument('--cpu', action='store_true', help='force the CPU even where CUDA is available')
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--threads', type=int, default=None,
                   help='torch.set_num_threads; 1 is far steadier than 2 on a CPU shared with other jobs')
    # synthetic suite
    p.add_argument('--img-size', type=int, default=None,
                   help="synthetic: the input size (default: the rendered size); transfer: a probe off the "
                        "protocol's 128 px, the same field of view magnified (its gain is taken against the plain "
                        'model at that size, trained too unless --skip-baseline; no gate)')
    p.add_argument('--synthetic-classes', type=int, default=None, help=engine('synthetic_classes'))
    p.add_argument('--synthetic-train-per-class', type=int, default=None, help=engine('synthetic_train_per_class'))
    p.add_argument('--synthetic-test-per-class', type=int, default=None, help=engine('synthetic_test_per_class'))
    p.add_argument('--synthetic-image-size', type=int, default=None, help=engine('synthetic_image_size'))
    # CUB suite
    p.add_argument('--cub-tar', default=str(DEFAULT_CUB_TAR))
    p.add_argument('--cub-classes', type=int, default=50)
    p.add_argument('--cub-img-size', type=int, default=128)
    # output
    p.add_argument('--workdir', default=None, help='run outputs and the CUB subset (default: a temp dir)')
    p.add_argument('--results-dir', default=None, help='default bench/results (a temp dir with --quick)')
    p.add_argument('--note', default=None, help='free text kept with the results (e.g. what else was tried)')
    p.add_argument('--shots', type=int, default=None,
                   help="k training images per class, drawn with each seed (HSM's few-shot protocol: one run per "
                        'k in 1 2 3 5 10 15 20 25 30 with --seeds 0 1 2; default: all)')
    p.add_argument('--quick', action='store_true', help='smoke run: 4 classes x 8 images, 64 px, 3 steps')
    # transfer suite (SPEC §8; bench/transfer.py)
    p.add_argument('--pretrained-path', default=None,
                   help='transfer: the source weights (default ../shared/data/resnet18_cub150.safetensors)')
    p.add_argument('--skip-baseline', action='store_true',
                   help='transfer: train only the methods (their gain is taken against the stored baseline runs '
                        'of the same recipe)')
    p.add_argument('--no-source-step', action='store_true',
                   help="transfer: HSM's step 1 on the target data instead of on the source classes (the paper's "
                        'ImageNet step; an ablation, needs --label)')
    p.add_argument('--source-step-epochs', type=float, default=SOURCE_STEP_EPOCHS,
                   help="transfer: epochs of HSM's step 1 on the source classes (CUB 51-200; another length than "
                        'the default is an ablation, needs --label)')
    p.add_argument('--source-step-lr', type=float, default=None,
                   help="transfer: lr of HSM's step 1 on the source classes (default: the new-layer lr; an ablation, "
                        'needs --label)')
    p.add_argument('--label', default=None, help='transfer: a name for a method ablation (with --model-args)')
    p.add_argument('--resume', action='store_true',
                   help='transfer: continue each run from the newest complete checkpoint in its folder (a killed '
                        'benchmark picks up where it stopped; default: every run starts again)')
    p.add_argument('--stage-epochs', type=float, nargs='+', default=None,
                   help="transfer: each stage's epochs instead of the paper's proportions of --epochs (an ablation, "
                        "needs --label; e.g. CAA's paper trains every scale for the whole schedule: "
                        '--stage-epochs 12 12 12, 3x the baseline\'s epochs, counted in the compute column)')
    p.add_argument('--lr-ratio', type=float, default=None,
                   help="transfer: the methods' new-layer / backbone lr ratio instead of the paper's (an ablation)")
    args = p.parse_args(argv)
    # a flag the chosen suites do not read is an error, not ignored (e.g. --resume would restart every run)
    transfer_only = dict(resume=False, skip_baseline=False, label=None, stage_epochs=None, lr_ratio=None,
                         pretrained_path=None, no_source_step=False, source_step_epochs=SOURCE_STEP_EPOCHS,
                         source_step_lr=None)
    not_transfer = dict(crop_pct=None, baseline_args={}, cub_classes=50, cub_img_size=128)
    for flags, suites in ((transfer_only, {'transfer'}), (not_transfer, {'synthetic', 'cub'})):
        given = ['--' + k.replace('_', '-') for k, default in flags.items() if getattr(args, k) != default]
        if given and not suites & set(args.suites):
            p.error(f"{', '.join(given)} apply to the {' / '.join(sorted(suites))} suite(s) only, not to "
                    f"{' '.join(args.suites)}.")
    if 'transfer' in args.suites:  # the transfer recipe's defaults (the baseline sweep's best; bench/README.md)
        for name, value in TRANSFER_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.mixed_precision is None:
        args.mixed_precision = 'no'
    if args.quick:
        args.synthetic_classes, args.synthetic_train_per_class, args.synthetic_test_per_class = 4, 8, 4
        args.synthetic_image_size, args.cub_img_size, args.cub_classes = 64, 64, 3
        args.epochs, args.max_steps, args.batch_size = 1, 3, 8
    return args


# a synthetic / cub entry replaces only a re-run of itself: the same models on the same data, budget, seeds, device
ENTRY_KEY = ('suite', 'backbone', 'models', 'data', 'quick', 'budget', 'seeds', 'model_args', 'baseline_args',
             'device_type')


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = select_variants(args) if args.methods != [] else []
    baseline = args.backbone
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='timm_fgvc_bench_'))
    results_dir = Path(args.results_dir) if args.results_dir else (
        Path(tempfile.gettempdir()) / 'timm_fgvc_bench_quick' if args.quick else RESULTS_DIR)
    device = torch.device('cuda' if torch.cuda.is_available() and not args.cpu else 'cpu')
    meta = run_metadata(device)
    print(f"timm-fgvc accuracy: {variants} vs {baseline} on {args.suites}; device {meta['device']}; "
          f"workdir {workdir}", flush=True)
    for suite in args.suites:
        start = time.time()
        if suite == 'transfer':
            from transfer import PROTOCOL, run_transfer
            dataset, _ = prepare_cub_subset(Path(args.cub_tar), PROTOCOL['classes'], workdir)
            args.transfer_models, args.workdir, args.results_dir = variants, str(workdir), str(results_dir)
            if Path(args.cub_tar).resolve() != DEFAULT_CUB_TAR.resolve():  # runs of their own recipe, never pooled
                args.other_data = f'{Path(args.cub_tar).name}:{Path(args.cub_tar).stat().st_size}'

            args.source_dataset = lambda: str(prepare_cub_subset(Path(args.cub_tar), 150, workdir, first=50)[0])
            run_transfer(args, train, TrainConfig, str(dataset))
            continue
        if suite == 'cub':
            dataset, classes = prepare_cub_subset(Path(args.cub_tar), args.cub_classes, workdir)
            dataset = str(dataset)
            data_text = (f'CUB-200-2011 (cub200_s160), first {args.cub_classes} classes, official split, '
                         f'{args.cub_img_size} px, from scratch')
        else:
            dataset = 'synthetic'
            data_text = (f"synthetic, {_value(args, 'synthetic_classes')} classes x "
                         f"{_value(args, 'synthetic_train_per_class')} train / "
                         f"{_value(args, 'synthetic_test_per_class')} test, rendered at "
                         f"{_value(args, 'synthetic_image_size')} px, {input_size(args, suite)} px input, "
                         'from scratch')
        if args.shots:
            data_text += f', {args.shots} training images per class (drawn per seed)'
        grid = feature_grid(baseline, input_size(args, suite)) if suite == 'synthetic' else None
        baseline_args = aligned_baseline_args(variants[0], args.model_args, args.baseline_args)
        runs = []
        for seed in args.seeds:
            base = base_config(args, suite, dataset, seed)
            runs.append(run_one(baseline, base, baseline_args, workdir, suite, seed, grid))
            for name in variants:
                runs.append(run_one(name, base, args.model_args, workdir, suite, seed, grid))
        summary = summarise(runs, baseline, variants)
        same_transforms = len({json.dumps(r['transforms']) for r in runs}) == 1
        if not same_transforms:
            print('WARNING: the models did not see identically transformed images: '
                  f"{sorted({json.dumps(r['transforms']) for r in runs})}", flush=True)
        budget = {k: v for k, v in base_config(args, suite, dataset, 0).items() if k not in ('seed', 'dataset')}
        entry = {'suite': suite, 'data': data_text, 'baseline': baseline, 'backbone': args.backbone,
                 'models': [baseline, *sorted(variants)],
                 'budget': budget, 'seeds': args.seeds, 'model_args': args.model_args,
                 'baseline_args': baseline_args, 'identical_transforms': same_transforms,
                 'transforms': runs[0]['transforms'], 'summary': summary, 'runs': runs,
                 'wall_seconds': time.time() - start, 'quick': args.quick, 'note': args.note,
                 'threads': torch.get_num_threads(), **meta,
                 'reproduce': reproduce_command(args, suite, budget)}
        out = results_dir / f'accuracy_{suite}.json'
        merge_results(out, [entry], ENTRY_KEY)
        print(f'\n{suite}: {data_text}; budget {json.dumps(budget)}')
        print('| model | top-1 | gain | part hit rate | object hit rate | chance (part / object) | wall s |')
        print('|---|---|---|---|---|---|---|')
        for row in summary:
            hr = row.get('hit_rate', {})
            fmt = lambda v: '–' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.1f}'  # noqa
            gain = row.get('gain_top1', {}).get('mean')
            print(f"| {row['model']} | {fmt(row['top1']['mean'])} | {fmt(gain) if gain is not None else '–'} | "
                  f"{fmt(hr.get('part_hit_rate'))} | {fmt(hr.get('object_hit_rate'))} | "
                  f"{fmt(hr.get('chance_part_hit_rate'))} / {fmt(hr.get('chance_object_hit_rate'))} | "
                  f"{row['wall_seconds']:.0f} |")
        print(f'wrote {out}', flush=True)


if __name__ == '__main__':
    main()
