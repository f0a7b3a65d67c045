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

    python bench/caa_multiscale_baseline.py --caa-run RUN_DIR --seed 0 --workdir /work/runs --threads 1

Prints one JSON line per scale and the ensemble; appends the result to `--results` (a JSON list, one entry per CAA
run and seed).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, run_metadata  # noqa: E402
from transfer import PROTOCOL, SOURCE_WEIGHTS, TRANSFER_DEFAULTS, locked, recipe_id  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from timm.models import register_model  # noqa: E402

from timm_fgvc.inference import load_model  # noqa: E402
from timm_fgvc.models._weights import load_backbone_weights, read_state_dict  # noqa: E402

_TEACHERS = {}  # run folder -> its loaded CAA model (one per process, shared by the scales' students)


def teacher_model(run: str) -> nn.Module:
    if run not in _TEACHERS:
        model = load_model(checkpoint=run).model.eval()
        _TEACHERS[run] = model.requires_grad_(False)
    return _TEACHERS[run]


class ZoomedViewModel(nn.Module):
    """A plain timm model that sees scale `scale` of a frozen CAA's zoom chain instead of the input image."""

    def __init__(self, student: nn.Module, teacher_run: str, scale: int):
        super().__init__()
        self.student = student
        self.scale = scale
        self.__dict__['teacher'] = teacher_model(teacher_run)  # not a submodule: neither trained nor saved
        self.num_classes = student.num_classes
        self.pretrained_cfg = self.default_cfg = {**student.pretrained_cfg, 'classifier': 'student.fc'}

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def view(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 0:
            return x
        with torch.no_grad():
            return self.teacher._forward_scales(x, self.scale + 1)[self.scale]['image']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(self.view(x))


@register_model
def caa_view_resnet18(pretrained: bool = False, teacher_run: str = '', scale: int = 0, init: str = '',
                      **kwargs) -> ZoomedViewModel:
    student = timm.create_model('resnet18', global_pool='max', **kwargs)
    state = read_state_dict(init)
    if any(k.startswith('student.') for k in state):  # the previous scale's trained model: all of it
        student.load_state_dict({k.removeprefix('student.'): v for k, v in state.items()})
    else:  # the source weights: all but their 150-way classifier
        load_backbone_weights(student, init)
    return ZoomedViewModel(student, teacher_run, scale)


@torch.no_grad()
def ensemble_top1(students, dataset: str) -> dict:
    from torchvision.datasets import ImageFolder
    from timm_fgvc.inference import eval_transform
    loaded = [load_model(checkpoint=run) for run in students]
    transform, _ = eval_transform(loaded[0])
    folder = ImageFolder(str(Path(dataset) / 'test'), transform=transform)
    images = torch.stack([folder[i][0] for i in range(len(folder))])
    labels = torch.tensor(folder.targets)
    models = [lm.model.eval() for lm in loaded]
    probs = []
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for m in models:
            probs.append(torch.cat([m(images[i:i + 64]).float().softmax(-1) for i in range(0, len(images), 64)]))
    top1 = lambda p: round(100 * (p.argmax(1) == labels).float().mean().item(), 2)  # noqa: E731
    return {'each': [top1(p) for p in probs], 'ensemble': top1(sum(probs)), 'images': len(labels)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--caa-run', required=True, help='a trained CAA transfer run folder (model.safetensors)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workdir', required=True, help='runs go to <workdir>/caa_multiscale_baseline/...')
    p.add_argument('--dataset', default=None, help="the target image folder (default: the CAA run's)")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--max-steps', type=int, default=None, help='a smoke run')
    p.add_argument('--results', default=str(RESULTS_DIR / 'caa_multiscale_baseline.json'))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from timm_fgvc.engine.config import TrainConfig
    from timm_fgvc.engine.trainer import train

    caa_cfg = json.loads((Path(args.caa_run) / 'results.json').read_text())['config']
    dataset = args.dataset or caa_cfg['dataset']
    scales = teacher_model(args.caa_run).num_scales
    recipe = dict(TRANSFER_DEFAULTS)
    root = Path(args.workdir) / 'caa_multiscale_baseline' / f'seed{args.seed}' / Path(args.caa_run).name
    init, runs, per_scale = str(SOURCE_WEIGHTS), [], []
    start = time.time()
    for k in range(scales):
        out = root / f'scale_{k}'
        cfg = TrainConfig(
            model='caa_view_resnet18', model_args={'teacher_run': str(args.caa_run), 'scale': k, 'init': init},
            dataset=dataset, output_stride=PROTOCOL['output_stride'], img_size=PROTOCOL['img_size'],
            crop_pct=PROTOCOL['crop_pct'], seed=args.seed, eval_every=recipe['epochs'], keep_checkpoints=1,
            max_steps=args.max_steps, output_dir=str(out), overwrite=True,
            **{k2: v for k2, v in recipe.items() if k2 != 'label_smoothing'})
        result = train(cfg)
        top1 = result.get('final', {}).get('eval_top1')
        per_scale.append(top1)
        print(json.dumps({'scale': k, 'top1': top1, 'seconds': round(time.time() - start)}), flush=True)
        runs.append(str(out))
        init = str(out / 'model.safetensors')
    entry = {'caa_run': str(args.caa_run), 'caa_top1': json.loads((Path(args.caa_run) / 'results.json').read_text())
             .get('final', {}).get('eval_top1'), 'seed': args.seed, 'recipe_id': recipe_id({**recipe, 'max_steps':
                                                                                           args.max_steps}),
             'per_scale_top1': per_scale, **ensemble_top1(runs, dataset), 'wall_seconds': time.time() - start,
             'command': 'python ' + shlex.join(sys.argv),
             **run_metadata(torch.device('cpu'))}
    print(json.dumps({k: entry[k] for k in ('caa_top1', 'per_scale_top1', 'each', 'ensemble')}), flush=True)
    path = Path(args.results)
    with locked(path):
        entries = json.loads(path.read_text()) if path.exists() else []
        entries = [e for e in entries if (e['caa_run'], e['seed'], e['recipe_id']) !=
                   (entry['caa_run'], entry['seed'], entry['recipe_id'])] + [entry]
        path.write_text(json.dumps(entries, indent=1) + '\n')


if __name__ == '__main__':
    main()
