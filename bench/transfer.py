"""The transfer protocol (SPEC §8), used by `bench/accuracy.py --suites transfer`.

Source: `../shared/data/resnet18_cub150.safetensors`, a plain timm resnet18 trained on CUB classes 51-200.
Target: CUB classes 1-50 (never seen by the source), official split (1,500 train / 1,389 test), 128 px, the
backbone at output stride 16 (an 8 x 8 grid). The baseline (plain resnet18) and every backbone of a method start
from the source weights (`--pretrained-path`); everything new starts from random.

A method gets the baseline's recipe (optimizer, backbone lr, schedule, epochs) with its paper's loss weights,
its paper's stage proportions (of the same total epochs) and its paper's new-layer / backbone lr ratio, both read
from its paper-backbone hub config (`hub_configs/<method>_<paper backbone>.cub200.yaml`).

Every finished run is written at once to `bench/results/accuracy_transfer.json` (a list of runs, one per model,
seed, recipe and model args; a later run with the same key replaces the earlier), so runs started in parallel
processes and runs still to come add up; the summary (baseline mean +- std, each method's gain) is computed
from that list when it is printed or rendered (`timm_fgvc.benchmarks.transfer_summary`).
"""
from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

import torch
import yaml

from _common import METHODS, REPO, run_metadata, split_variant
from timm_fgvc.benchmarks import transfer_summary

SOURCE_WEIGHTS = REPO.parent / 'shared' / 'data' / 'resnet18_cub150.safetensors'
PROTOCOL = dict(classes=50, img_size=128, output_stride=16, crop_pct=0.875, baseline='resnet18')
RECIPE_FIELDS = ('optimizer', 'lr', 'backbone_lr', 'epochs', 'batch_size', 'weight_decay', 'scheduler',
                 'warmup_epochs')


def recipe_id(recipe: dict) -> str:
    """A short readable name of a recipe, e.g. `sgd lr0.02/bb0.01 wd0.0001 cosine w1 e12 b32` (a run cut short
    with --max-steps is its own recipe, never pooled with the full ones)."""
    return (f"{recipe['optimizer']} lr{recipe['lr']:g}/bb{recipe['backbone_lr']:g} wd{recipe['weight_decay']:g} "
            f"{recipe['scheduler']} w{recipe['warmup_epochs']:g} e{recipe['epochs']} b{recipe['batch_size']}"
            + (f" max{recipe['max_steps']}steps" if recipe.get('max_steps') else ''))


def paper_recipe(method: str) -> dict:
    """The paper's new-layer / backbone lr ratio and stage epochs, from the method's paper-backbone hub config."""
    backbone = METHODS[method][1]
    path = REPO / 'hub_configs' / f'{method}_{backbone}.cub200.yaml'
    train = yaml.safe_load(path.read_text())['train']
    lr, backbone_lr = float(train['lr']), float(train.get('backbone_lr') or float(train['lr']) * 0.1)
    return {'lr_ratio': lr / backbone_lr, 'stage_epochs': train.get('stage_epochs'), 'epochs': train['epochs'],
            'model_args': dict(train.get('model_args') or {}), 'source': str(path.relative_to(REPO))}


def stage_split(model, paper: dict, epochs: float) -> Optional[List[float]]:
    """`epochs` shared between the model's stages in the paper's proportions (None for a one-stage method)."""
    stages = model.training_stages()
    if len(stages) == 1:
        return None
    paper_epochs = paper['stage_epochs'] or [s.epochs if s.epochs is not None else paper['epochs'] for s in stages]
    total = float(sum(paper_epochs))
    return [epochs * e / total for e in paper_epochs]


@torch.no_grad()
def backbone_passes(model, size: int, stage_epochs: Optional[List[float]] = None, batch: int = 2) -> float:
    """Backbone pixels processed per input pixel in one training step (the baseline: 1.0), averaged over the
    method's stages by their epochs: the compute ratio of a method against its baseline."""
    backbones = [m for n, m in model.named_modules() if n == 'backbone' or n.startswith('zoom_backbones.')
                 and n.count('.') == 1] if hasattr(model, 'forward_train') else [model]
    stems = [b.get_submodule(b.pretrained_cfg['first_conv']) for b in backbones]  # methods call forward_features
    pixels = []
    hooks = [b.register_forward_pre_hook(lambda mod, inp: pixels.append(inp[0].shape[0] * inp[0].shape[-2]
                                                                         * inp[0].shape[-1])) for b in stems]
    x = torch.randn(batch, 3, size, size)
    target = torch.zeros(batch, dtype=torch.long)
    was_training = model.training
    model.train()
    stages = model.training_stages() if hasattr(model, 'training_stages') else [None]
    weights = stage_epochs or [1.0] * len(stages)
    per_stage = []
    try:
        for stage in stages:
            pixels.clear()
            if stage is not None:
                model.set_training_stage(stage)
                model.forward_train(x, target)
            else:
                model(x)
            per_stage.append(sum(pixels) / (batch * size * size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sum(p * w for p, w in zip(per_stage, weights)) / sum(weights)


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_key(run: dict) -> tuple:
    return (run['model'], run['seed'], run['recipe_id'], json.dumps(run.get('model_args', {}), sort_keys=True))


def add_run(path: Path, run: dict) -> None:
    """Add one finished run to the results file (under a lock: parallel processes write the same file)."""
    with locked(path):
        data = json.loads(path.read_text()) if path.exists() else {}
        runs = [r for r in data.get('runs', []) if run_key(r) != run_key(run)] + [run]
        data = {'suite': 'transfer', 'protocol': {**PROTOCOL, 'source': 'resnet18_cub150.safetensors'},
                'notes': data.get('notes', {}), 'runs': runs}
        path.write_text(json.dumps(data, indent=2) + '\n')


def method_config(name: str, recipe: dict, model_args: dict) -> dict:
    """The method's lr and stage epochs under the transfer recipe (paper ratio and proportions)."""
    import timm
    method, _ = split_variant(name)
    if method not in METHODS:
        return {'lr': recipe['lr'], 'stage_epochs': []}
    paper = paper_recipe(method)
    model = timm.create_model(name, num_classes=2, **model_args)
    split = stage_split(model, paper, recipe['epochs'])
    return {'lr': recipe['backbone_lr'] * paper['lr_ratio'], 'stage_epochs': split or [],
            'paper': paper}


def run_transfer(args, train, TrainConfig, dataset: str) -> None:
    """Train each model of `args` (baseline unless --skip-baseline, then the method variants) for each seed."""
    import timm
    recipe = {k: getattr(args, k) for k in RECIPE_FIELDS + ('max_steps',)}
    rid = recipe_id(recipe)
    out = Path(args.results_dir) / 'accuracy_transfer.json'
    weights = Path(args.pretrained_path or SOURCE_WEIGHTS)
    names = ([] if args.skip_baseline else [PROTOCOL['baseline']]) + list(args.transfer_models)
    if (args.model_args or args.lr_ratio is not None) and not args.label:
        raise SystemExit('--model-args / --lr-ratio make an ablation row: name it with --label (the plain row is the '
                         "paper recipe: its hub config's model arguments and new-layer / backbone lr ratio).")
    for seed in args.seeds:
        for name in names:
            paper_args = {} if name == PROTOCOL['baseline'] else method_config(name, recipe, {})['paper']['model_args']
            model_args = {} if name == PROTOCOL['baseline'] else {**paper_args, **args.model_args}
            extra = method_config(name, recipe, model_args)
            if args.lr_ratio is not None and name != PROTOCOL['baseline']:  # an ablation of the paper's ratio
                extra['lr'] = recipe['backbone_lr'] * args.lr_ratio
            cfg = TrainConfig(
                model=name, model_args=model_args, dataset=dataset, pretrained_path=str(weights),
                output_stride=PROTOCOL['output_stride'], img_size=PROTOCOL['img_size'], crop_pct=PROTOCOL['crop_pct'],
                optimizer=recipe['optimizer'], lr=extra['lr'], backbone_lr=recipe['backbone_lr'],
                epochs=recipe['epochs'], batch_size=recipe['batch_size'], weight_decay=recipe['weight_decay'],
                scheduler=recipe['scheduler'], warmup_epochs=recipe['warmup_epochs'],
                stage_epochs=extra['stage_epochs'], seed=seed, eval_every=max(recipe['epochs'], 1),
                keep_checkpoints=1, max_steps=args.max_steps, num_workers=args.workers, overwrite=True,
                output_dir=str(Path(args.workdir) / 'transfer' / rid.replace(' ', '_').replace('/', '-')
                               / f'seed{seed}' / (name + (('_' + args.label) if args.label else ''))))
            print(f'\n=== transfer seed {seed}: {name} {model_args or ""} lr {extra["lr"]:g} / backbone '
                  f'{recipe["backbone_lr"]:g}, stage epochs {extra["stage_epochs"] or recipe["epochs"]}', flush=True)
            start = time.time()
            results = train(cfg)
            wall = time.time() - start
            final = results.get('final', {})
            probe = timm.create_model(name, num_classes=PROTOCOL['classes'], **results['model_args'])
            label = name if not args.label or name == PROTOCOL['baseline'] else f'{name} ({args.label})'
            run = {
                'model': name, 'label': label, 'role': 'baseline' if name == PROTOCOL['baseline'] else 'method',
                'seed': seed, 'recipe_id': rid, 'recipe': recipe, 'model_args': model_args,
                'lr': extra['lr'], 'stage_epochs': extra['stage_epochs'],
                'paper_recipe': extra.get('paper'), 'top1': final.get('eval_top1'), 'top5': final.get('eval_top5'),
                'per_head_top1': {k[len('eval_top1_'):]: v for k, v in final.items() if k.startswith('eval_top1_')},
                'eval_samples': final.get('eval_samples'), 'steps': final.get('step'),
                'final_train_loss': final.get('train_loss'), 'history': results.get('history'),
                'compute_ratio': backbone_passes(probe, PROTOCOL['img_size'], extra['stage_epochs'] or None),
                'wall_seconds': wall, 'threads': torch.get_num_threads(), 'note': args.note,
                **run_metadata(torch.device('cpu')),
            }
            add_run(out, run)
            print(f"{label}: top-1 {run['top1']:.2f}% (heads {json.dumps(run['per_head_top1'])}), compute "
                  f"x{run['compute_ratio']:.2f}, {wall:.0f} s -> {out}", flush=True)
    table = transfer_summary(json.loads(out.read_text()))
    print(f"\ntransfer, recipe {table['recipe']}: baseline mean {table['baseline_mean']}")
    for row in table['rows'].values():
        print(f"| {row['label']} | seeds {row['seeds']} | {row['mean']:.2f} | gain "
              f"{'-' if row['gain'] is None else format(row['gain'], '+.2f')} | x{row['compute']:.2f} |")
