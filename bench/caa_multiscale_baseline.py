#!/usr/bin/env python
"""The CAA paper's multi-scale baseline in the transfer protocol: plain backbones on a trained CAA's zoomed images.

CAA's paper compares itself with "ResNet50 (multi-scale)*" (Sec. 5.3, Tables 2-4): one plain ResNet per scale,
each trained on the images CAA zooms into at that scale, global max-pooled, the scales' predictions averaged; CAA
beats it by 2.8 (CUB), 1.6 (Cars) and 2.2 (Aircraft). The gap is what CAA's attention adds to the local and
object classifiers, beyond a multi-scale ensemble on the same views. Here:

- the views come from a trained CAA run (`--caa-run`, frozen, eval mode) applied to each augmented training
  image and each test image, as CAA's own scales see them (the paper stores the images; on the fly here, so the
  random crop and flip come before the zoom, as in CAA's training);
- scale k's model is a plain resnet18 (global max pool, the paper's) at output stride 16 with the protocol's
  recipe (12 epochs each, like each scale of a per-scale CAA run); scale 0 starts from the source weights and scale
  k + 1 from scale k's trained model (CAA's default `zoom_init='previous'`);
- the prediction is the mean of the scales' softmax (Sec. 4.4.3).

`--views centre` is the same with CAA's attention off: scale k's view is a fixed central crop, as large on average as
CAA's scale-k box (its mean width and height fractions, measured on the training images), so the zoom and the
ensemble stay and only where to look is taken away.

    python bench/caa_multiscale_baseline.py --caa-run RUN_DIR --seed 0 --workdir /work/runs --threads 1
    python bench/caa_multiscale_baseline.py --caa-run RUN_DIR --seed 0 --workdir /work/runs --views centre

Prints one JSON line per scale and the ensemble, and adds the result to `bench/results/accuracy_transfer.json` as a
'reference' row (gain over the baseline mean, no gate; per head: each scale's model alone).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, run_metadata  # noqa: E402
from probes import load_test_set, probe_ensemble  # noqa: E402
from transfer import PROTOCOL, SOURCE_WEIGHTS, TRANSFER_DEFAULTS, add_run, recipe_id  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from timm.models import register_model  # noqa: E402

from timm_fgvc.inference import load_model  # noqa: E402
from timm_fgvc.layers import crop_regions  # noqa: E402
from timm_fgvc.models._weights import load_backbone_weights, read_state_dict  # noqa: E402

_TEACHERS = {}  # run folder -> its loaded CAA run (one per process, shared by the scales' students)


def teacher_run_loaded(run: str):
    if run not in _TEACHERS:
        loaded = load_model(checkpoint=run)
        loaded.model.eval().requires_grad_(False)
        _TEACHERS[run] = loaded
    return _TEACHERS[run]


def teacher_model(run: str) -> nn.Module:
    return teacher_run_loaded(run).model


class ZoomedViewModel(nn.Module):
    """A plain timm model that sees scale `scale` of a frozen CAA's zoom chain instead of the input image, or
    (`box_fraction` = (width, height) fractions) a fixed central crop of that size."""

    def __init__(self, student: nn.Module, teacher_run: str, scale: int, box_fraction=None):
        super().__init__()
        self.student = student
        self.scale = scale
        self.box_fraction = box_fraction
        # not a submodule: neither trained nor saved
        self.__dict__['teacher'] = None if box_fraction else teacher_model(teacher_run)
        self.num_classes = student.num_classes
        self.pretrained_cfg = self.default_cfg = {**student.pretrained_cfg, 'classifier': 'student.fc'}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def view(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 0:
            return x
        with torch.no_grad():
            if self.box_fraction:
                height, width = x.shape[-2:]
                half = torch.tensor([width * self.box_fraction[0], height * self.box_fraction[1]]) / 2
                centre = torch.tensor([width / 2, height / 2])
                box = torch.cat([centre - half, centre + half]).to(x.device).expand(x.shape[0], 1, 4)
                return crop_regions(x, box, (height, width))[:, 0]
            return self.teacher.zoomed_views(x, self.scale + 1)[0][:, self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(self.view(x))


@register_model
def caa_view_resnet18(pretrained: bool = False, teacher_run: str = '', scale: int = 0, init: str = '',
                      box_fraction=None, **kwargs) -> ZoomedViewModel:
    student = timm.create_model('resnet18', global_pool='max', **kwargs)
    state = read_state_dict(init)
    if any(k.startswith('student.') for k in state):  # the previous scale's trained model: all of it
        student.load_state_dict({k.removeprefix('student.'): v for k, v in state.items()})
    else:  # the source weights: all but their 150-way classifier
        load_backbone_weights(student, init)
    return ZoomedViewModel(student, teacher_run, scale, box_fraction)


@torch.no_grad()
def mean_box_fractions(caa_run: str, dataset: str, every: int = 4) -> list:
    """Per scale, the mean width and height of the CAA model's view as fractions of the image, and the mean
    offset of its centre from the image's (fractions), on every `every`-th training image (eval transform)."""
    from torchvision.datasets import ImageFolder
    from timm_fgvc.inference import eval_transform
    transform, _ = eval_transform(teacher_run_loaded(caa_run))
    folder = ImageFolder(str(Path(dataset) / 'train'), transform=transform)
    x = torch.stack([folder[i][0] for i in range(0, len(folder), every)])
    size = torch.tensor(x.shape[-1:-3:-1], dtype=torch.float32)  # (W, H)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        boxes = torch.cat([teacher_model(caa_run).zoomed_views(x[i:i + 64])[1]
                           for i in range(0, len(x), 64)]).float()  # [N, S, 4] in image pixels
    side = (boxes[..., 2:] - boxes[..., :2]) / size
    offset = ((boxes[..., 2:] + boxes[..., :2]) / 2 - size / 2) / size
    return [{'box_fraction': [round(v, 4) for v in side[:, k].mean(0).tolist()],
             'centre_offset': [round(v, 4) for v in offset[:, k].mean(0).tolist()], 'images': len(x)}
            for k in range(side.shape[1])]


def ensemble_top1(students, dataset: str) -> dict:
    """Each scale's model alone and their averaged probabilities on the test images (`probes.py ensemble`)."""
    loaded = [load_model(checkpoint=run) for run in students]
    images, labels = load_test_set(loaded[0], dataset)
    return probe_ensemble([lm.model.eval() for lm in loaded], images, labels)


# the protocol recipe's fields a CAA run shares with the baseline (its new-layer lr and stage epochs are its own)
TEACHER_RECIPE_FIELDS = ('optimizer', 'backbone_lr', 'epochs', 'batch_size', 'weight_decay', 'scheduler',
                         'warmup_epochs', 'mixed_precision', 'label_smoothing')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--caa-run', required=True, help='a trained CAA transfer run folder (model.safetensors)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workdir', required=True, help='runs go to <workdir>/caa_multiscale_baseline/...')
    p.add_argument('--dataset', default=None, help="the target image folder (default: the CAA run's)")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--max-steps', type=int, default=None, help='a smoke run')
    p.add_argument('--cpu', action='store_true', help='train on the CPU even where an accelerator is present')
    p.add_argument('--views', choices=['caa', 'centre'], default='caa',
                   help="caa: the CAA run's zoomed views; centre: fixed central crops of their mean size "
                        '(attention off)')
    p.add_argument('--results-dir', default=str(RESULTS_DIR), help='adds a reference row to accuracy_transfer.json')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from timm_fgvc.engine.config import TrainConfig
    from timm_fgvc.engine.trainer import accelerator_type, train

    missing = [f for f in ('results.json', 'model.safetensors') if not (Path(args.caa_run) / f).exists()]
    if missing:
        p.error(f'--caa-run {args.caa_run}: no {" or ".join(missing)} there; give the folder of a finished CAA run '
                '(bench/accuracy.py --suites transfer --methods caa ...).')
    caa_cfg = json.loads((Path(args.caa_run) / 'results.json').read_text())['config']
    if not caa_cfg['model'].startswith('caa_'):
        p.error(f"--caa-run {args.caa_run} is a {caa_cfg['model']} run; the views come from a CAA run.")
    recipe = dict(TRANSFER_DEFAULTS, device=accelerator_type(args.cpu))
    # the row is paired with the baseline of this seed and recipe: its views must come from a CAA run of both
    differs = [f'{k} {caa_cfg.get(k)!r} (the row: {v!r})' for k, v in
               [('seed', args.seed), ('max_steps', None)]
               + [(k, recipe[k]) for k in TEACHER_RECIPE_FIELDS] if caa_cfg.get(k) != v]
    if differs:
        p.error(f'--caa-run {args.caa_run} was trained with ' + ', '.join(differs) + ': give the CAA run of this '
                '--seed under the protocol recipe, or --seed its seed.')
    dataset = args.dataset or caa_cfg['dataset']
    scales = teacher_model(args.caa_run).num_scales
    root = (Path(args.workdir) / 'caa_multiscale_baseline' / f'seed{args.seed}' /
            (Path(args.caa_run).name + ('_centre' if args.views == 'centre' else '')))
    init, runs, per_scale = str(SOURCE_WEIGHTS), [], []
    start = time.time()
    boxes = mean_box_fractions(args.caa_run, dataset) if args.views == 'centre' else None
    if boxes:
        print(json.dumps({'caa_boxes': boxes}), flush=True)
    for k in range(scales):
        out = root / f'scale_{k}'
        cfg = TrainConfig(
            model='caa_view_resnet18', model_args={'teacher_run': str(args.caa_run), 'scale': k, 'init': init,
                                                   'box_fraction': boxes[k]['box_fraction'] if boxes else None},
            dataset=dataset, output_stride=PROTOCOL['output_stride'], img_size=PROTOCOL['img_size'],
            crop_pct=PROTOCOL['crop_pct'], seed=args.seed, eval_every=recipe['epochs'], keep_checkpoints=1,
            max_steps=args.max_steps, output_dir=str(out), overwrite=True, cpu=args.cpu,
            **{k: v for k, v in recipe.items() if k != 'device'})
        result = train(cfg)
        top1 = result.get('final', {}).get('eval_top1')
        per_scale.append(top1)
        print(json.dumps({'scale': k, 'top1': top1, 'seconds': round(time.time() - start)}), flush=True)
        runs.append(str(out))
        init = str(out / 'model.safetensors')
    ensemble = ensemble_top1(runs, dataset)
    print(json.dumps({'per_scale_top1': per_scale, **ensemble}), flush=True)
    run = reference_run(args.caa_run, args.seed, recipe, args.max_steps, ensemble, time.time() - start, boxes)
    add_run(Path(args.results_dir) / 'accuracy_transfer.json', run)


def reference_run(caa_run: str, seed: int, recipe: dict, max_steps, ensemble: dict, wall: float,
                  boxes=None) -> dict:
    """The transfer-results entry (role 'reference': a control with a gain over the baseline mean and no gate)."""
    scales = len(ensemble['each'])
    caa = json.loads((Path(caa_run) / 'results.json').read_text())
    views, what = (("fixed central crops of CAA's mean zoom", "the multi-scale baseline with CAA's attention off")
                   if boxes else ("CAA's zoomed views", "the CAA paper's multi-scale baseline"))
    return {
        'model': PROTOCOL['baseline'], 'role': 'reference', 'seed': seed,
        'label': f"{PROTOCOL['baseline']} x{scales} on {views}, {recipe['epochs']} epochs each ({what})",
        'recipe_id': recipe_id({**recipe, 'max_steps': max_steps}), 'recipe': recipe,
        'model_args': {'global_pool': 'max', 'views_of': caa['config']['model'] + ' ' + Path(caa_run).name,
                       **({'box_fraction': [b['box_fraction'] for b in boxes]} if boxes else {})},
        'lr': recipe['lr'], 'stage_epochs': [float(recipe['epochs'])] * scales, 'epochs_ratio': float(scales),
        # scale k: k frozen CAA passes + its own (a fixed crop: its own only)
        'compute_ratio': float(scales if boxes else sum(k + 1 for k in range(scales))),
        'top1': ensemble['ensemble'], 'top5': None,
        'per_head_top1': {f'scale_{k}': v for k, v in enumerate(ensemble['each'])},
        'eval_samples': ensemble['images'], 'wall_seconds': wall, 'threads': torch.get_num_threads(),
        'caa_top1': caa.get('final', {}).get('eval_top1'),
        **run_metadata(torch.device(recipe.get('device', 'cpu')))}

if __name__ == '__main__':
    main()
