"""The transfer protocol (SPEC §8), used by `bench/accuracy.py --suites transfer`.

Source: `../shared/data/resnet18_cub150.safetensors`, a plain timm resnet18 trained on CUB classes 51-200.
Target: CUB classes 1-50 (never seen by the source), official split (1,500 train / 1,389 test), 128 px, the
backbone at output stride 16 (an 8 x 8 grid). The baseline (plain resnet18) and every backbone of a method start
from the source weights (`--pretrained-path`); everything new starts from random.

A method gets the baseline's recipe (optimizer, backbone lr, schedule, epochs) with its paper's loss weights,
its paper's stage proportions (of the same total epochs) and its paper's new-layer / backbone lr ratio, both read
from its paper-backbone hub config (`hub_configs/<method>_<paper backbone>.cub200.yaml`).

`--img-size N` (N other than 128) runs a probe off the protocol: the same 128 px crop's field of view, magnified to
N px (the stored images are 160 px, so no detail is added). The plain model at N px becomes a reference row, and
each method's row names it as its `yardstick`: the gain is taken against it, and the row has no gate.

Every finished run is written at once to `bench/results/accuracy_transfer.json` (a list of runs, one per model,
seed, recipe and model args; a later run with the same key replaces the earlier), so runs started in parallel
processes and runs still to come add up; the summary (baseline mean +- std, each method's gain) is computed
from that list when it is printed or rendered (`timm_fgvc.benchmarks.transfer_summary`).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
import yaml

from _common import PAPER_SETUP, REPO, locked, run_metadata, split_variant, write_atomic
from timm_fgvc.benchmarks import transfer_summary
from timm_fgvc.engine.trainer import accelerator_type

SOURCE_WEIGHTS = REPO.parent / 'shared' / 'data' / 'resnet18_cub150.safetensors'
PROTOCOL = dict(classes=50, img_size=128, output_stride=16, crop_pct=0.875, baseline='resnet18')
# The protocol's recipe: the baseline sweep's best (bench/README.md); bf16 autocast makes a run ~3x faster on a
# CPU with AMX (resnet18 step at 128 px, batch 32, one thread: 1.37 s fp32 -> 0.47 s)
TRANSFER_DEFAULTS = dict(optimizer='sgd', lr=0.04, backbone_lr=0.02, epochs=12, batch_size=32, weight_decay=1e-4,
                         scheduler='cosine', warmup_epochs=1., mixed_precision='bf16', label_smoothing=0.)
# the fixture's published checksum (../shared/data/resnet18_cub150.safetensors.sha256): each run records its source's
SOURCE_SHA256 = '4a6506a12fdcd76f3e7466f0f3d9ee04328ef9159f6349098d29a606eb6c7cea'
SOURCE_STEP_EPOCHS = 3.  # HSM's step 1 on the source classes (a 4,500-image stand-in for the paper's ImageNet step)
RECIPE_FIELDS = ('optimizer', 'lr', 'backbone_lr', 'epochs', 'batch_size', 'weight_decay', 'scheduler',
                 'warmup_epochs', 'mixed_precision', 'label_smoothing')


def recipe_id(recipe: dict) -> str:
    """A short readable name of a recipe, e.g. `sgd lr0.02/bb0.01 wd0.0001 cosine w1 e12 b32` (a run cut short
    with --max-steps is its own recipe, never pooled with the full ones; a few-shot run, `--shots k`, ends in
    ` k<k>`: each k has its own baseline; a run on an accelerator ends in its device type, e.g. ` cuda`: its numerics
    differ from the CPU's, so its runs are never pooled with theirs; a run from other source weights or other data
    than the protocol's ends in ` src<sha>` / ` data:<tar>`: never pooled with the protocol's runs)."""
    return (f"{recipe['optimizer']} lr{recipe['lr']:g}/bb{recipe['backbone_lr']:g} wd{recipe['weight_decay']:g} "
            f"{recipe['scheduler']} w{recipe['warmup_epochs']:g} e{recipe['epochs']} b{recipe['batch_size']}"
            + (f" ls{recipe['label_smoothing']:g}" if recipe.get('label_smoothing') else '')
            + (f" {recipe['mixed_precision']}" if recipe.get('mixed_precision', 'no') != 'no' else '')
            + (f" max{recipe['max_steps']}steps" if recipe.get('max_steps') else '')
            + (f" k{recipe['shots']}" if recipe.get('shots') else '')
            + (f" {recipe['device']}" if recipe.get('device', 'cpu') != 'cpu' else '')
            + (f" src{recipe['source']}" if recipe.get('source') else '')
            + (f" data:{recipe['data']}" if recipe.get('data') else ''))


def paper_recipe(method: str) -> dict:
    """The paper's new-layer / backbone lr ratio and stage epochs, from the method's paper-backbone hub config."""
    backbone = PAPER_SETUP[method][0]
    path = REPO / 'hub_configs' / f'{method}_{backbone}.cub200.yaml'
    train = yaml.safe_load(path.read_text())['train']
    lr, backbone_lr = float(train['lr']), float(train.get('backbone_lr') or float(train['lr']) * 0.1)
    return {'lr_ratio': lr / backbone_lr, 'stage_epochs': train.get('stage_epochs'), 'epochs': train['epochs'],
            'model_args': dict(train.get('model_args') or {}), 'source': str(path.relative_to(REPO))}


def stage_split(model, paper: dict, epochs: float) -> Optional[List[float]]:
    """`epochs` shared between the model's stages in the paper's proportions (None for a one-stage method that
    trains for the run's epochs; a single stage with its own epochs, e.g. CAA with one scale, gets all `epochs`)."""
    stages = model.training_stages()
    if len(stages) == 1:
        return None if stages[0].epochs is None else [float(epochs)]
    paper_epochs = paper['stage_epochs'] or [s.epochs if s.epochs is not None else paper['epochs'] for s in stages]
    total = float(sum(paper_epochs))
    return [epochs * e / total for e in paper_epochs]


@torch.no_grad()
def backbone_passes(model, size: int, stage_epochs: Optional[List[float]] = None, batch: int = 2,
                    per_stage: bool = False):
    """Backbone pixels processed per input pixel in one training step (the baseline: 1.0), averaged over the
    method's stages by their epochs: the compute ratio of a method against its baseline. `per_stage`: the list,
    one value per stage, not averaged."""
    backbones = [b for _, b in model.named_backbones()] if hasattr(model, 'forward_train') else [model]
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
    passes = []
    try:
        for stage in stages:
            pixels.clear()
            if stage is not None:
                model.set_training_stage(stage)
                model.forward_train(x, target)
            else:
                model(x)
            passes.append(sum(pixels) / (batch * size * size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if per_stage:
        return passes
    return sum(p * w for p, w in zip(passes, weights)) / sum(weights)


def compute_ratio(model, size: int, stage_epochs: Optional[List[float]], epochs_ratio: float,
                  source_step: Optional[dict] = None, target_steps: Optional[int] = None) -> float:
    """Backbone pixels a run processes in training against its baseline's at 128 px (the same steps on the target).
    A step 1 on the source classes (HSM) adds its own steps: its passes x its steps / the target's steps."""
    scale = epochs_ratio * (size / PROTOCOL['img_size']) ** 2
    if not source_step:
        return scale * backbone_passes(model, size, stage_epochs or None)
    on_source, on_target = backbone_passes(model, size, per_stage=True)
    return scale * (on_target + on_source * source_step['steps'] / target_steps)


def run_key(run: dict) -> tuple:
    """One row per model, seed, recipe, model arguments and label (an ablation of a runner flag, e.g.
    --source-step-lr, differs only by its label)."""
    return (run['model'], run['seed'], run['recipe_id'], json.dumps(run.get('model_args', {}), sort_keys=True),
            run.get('label'))


def add_run(path: Path, run: dict) -> None:
    """Add one finished run to the results file (under a lock: parallel processes write the same file). The file's
    protocol recipe and hand-written keys (summary, notes) stay as they are."""
    with locked(path):
        data = json.loads(path.read_text()) if path.exists() else {}
        runs = [r for r in data.get('runs', []) if run_key(r) != run_key(run)] + [run]
        kept = {k: v for k, v in data.items() if k not in ('suite', 'protocol', 'recipe', 'runs')}  # summary, notes
        recipe = data.get('recipe') or recipe_id(TRANSFER_DEFAULTS)
        if recipe != recipe_id(TRANSFER_DEFAULTS):  # e.g. a job started before the defaults changed: never switch back
            print(f"note: {path} keeps its protocol recipe {recipe!r}; this process's defaults are "
                  f"{recipe_id(TRANSFER_DEFAULTS)!r} (edit 'recipe' in the file to change the protocol's)",
                  file=sys.stderr)
        data = {'suite': 'transfer', 'protocol': {**PROTOCOL, 'source': 'resnet18_cub150.safetensors'},
                'recipe': recipe, **kept, 'runs': runs}
        write_atomic(path, json.dumps(data, indent=2) + '\n')


def method_config(name: str, recipe: dict, model_args: dict) -> dict:
    """The method's lr and stage epochs under the transfer recipe (paper ratio and proportions)."""
    import timm
    method, _ = split_variant(name)
    if method not in PAPER_SETUP:  # the plain baseline
        return {'lr': recipe['lr'], 'stage_epochs': []}
    paper = paper_recipe(method)
    model = timm.create_model(name, num_classes=2, **model_args)
    split = stage_split(model, paper, recipe['epochs'])
    return {'lr': recipe['backbone_lr'] * paper['lr_ratio'], 'stage_epochs': split or [],
            'paper': paper}


# Methods whose paper trains a new part on the pretraining data, the pretrained model frozen, before fine-tuning:
# HSM's step 1 runs on ImageNet with the ImageNet model and head frozen (Sec. 3.4). Here the pretraining data is
# the source (CUB classes 51-200) and the frozen model is the source resnet18 with its 150-way classifier.
SOURCE_STEP_METHODS = ('hsm',)


def source_initialisation(name: str, model_args: dict, weights: Path, out: Path) -> Path:
    """A weights file of method `name` whose backbone is the source model and whose classifier is the source's
    own (HSM's step 1 keeps the pretrained model's trained head, frozen)."""
    import timm
    from safetensors.torch import save_file
    from timm_fgvc.models._weights import read_state_dict
    state = read_state_dict(weights)
    model = timm.create_model(name, num_classes=state['fc.weight'].shape[0], pretrained_backbone=str(weights),
                              **model_args)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(state['fc.weight'])
        head.bias.copy_(state['fc.bias'])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return out


@torch.no_grad()
def saliency_activity(run_dir: Path, dataset: str, images: int = 64) -> Optional[dict]:
    """HSM: the share of non-zero saliency cells and the mean map on the first `images` eval images of a run (a
    dead branch reads 0: the method is then its backbone)."""
    from PIL import Image
    from timm_fgvc.inference import eval_transform, load_model
    loaded = load_model(checkpoint=run_dir)
    if not hasattr(loaded.model, 'saliency_map'):
        return None
    transform, _ = eval_transform(loaded)
    files = sorted((Path(dataset) / 'test').glob('*/*.jpg'))
    files = files[::max(1, len(files) // images)][:images]  # spread over the classes
    x = torch.stack([transform(Image.open(f).convert('RGB')) for f in files])
    s = loaded.model.saliency_map(x).float()
    return {'active_cells': float((s > 0).float().mean()), 'mean': float(s.mean()), 'max': float(s.max()),
            'images': len(files)}


def input_size(args) -> int:
    """The run's input size: the protocol's 128 px unless `--img-size` names another (a probe off the protocol)."""
    size = getattr(args, 'img_size', None) or PROTOCOL['img_size']
    if size % 32:  # resnet18's stride without dilation: a whole feature grid at output stride 16 or 32
        raise SystemExit(f'--img-size {size}: pick a multiple of 32 (resnet18\'s undilated stride), '
                         'e.g. 160, 192 or 256.')
    return size


def _at_size(name: str, size: int, what: str) -> str:
    return f"{name} at {size} px, the {PROTOCOL['img_size']} px crop's field of view ({what})"


def size_reference_label(size: int) -> str:
    """The label of the plain model at another input size: the yardstick of the methods run at that size."""
    zoom = size / PROTOCOL['img_size']
    how = f'magnified {zoom:g}x, no detail added' if zoom > 1 else f'shrunk to {zoom:g}x'
    return _at_size(PROTOCOL['baseline'], size, f'the input {how}')


def run_label(name: str, label: Optional[str], size: int) -> str:
    """A row's label: the model's name, an ablation's `--label`, and the input size when it is off the protocol."""
    if size == PROTOCOL['img_size']:
        return name if not label or name == PROTOCOL['baseline'] else f'{name} ({label})'
    if name == PROTOCOL['baseline']:
        return size_reference_label(size)
    return _at_size(name, size, label or "a probe of the protocol's input size")


def source_step_stages(args, recipe: dict) -> List[float]:
    """HSM's stage epochs: step 1 on the source classes, then step 2 on the target for the recipe's epochs."""
    return [args.source_step_epochs, recipe['epochs']]


def source_weights(path: Path) -> dict:
    """What a run started from: the file's name and SHA-256, and whether it is the protocol's fixture."""
    from timm_fgvc.engine.checkpoint import sha256_file
    digest = sha256_file(path)
    return {'file': path.name, 'sha256': digest, 'fixture': digest == SOURCE_SHA256}


def source_step_key(name: str, step_args: dict, recipe: dict, lr: float, seed: int, epochs: float, weights: Path,
                    max_steps: Optional[int], img_size: int = PROTOCOL['img_size']) -> str:
    """What defines a step-1 run: it does not depend on the target (nor on --shots), so every target run with the
    same key starts from the same step-1 weights. The source weights enter by content (SHA-256), not by path or
    date: a file replaced in place gets a new step, a copy elsewhere reuses it."""
    import hashlib
    key = {'model': name, 'model_args': step_args, 'lr': lr, 'seed': seed, 'epochs': epochs, 'max_steps': max_steps,
           'recipe': {k: v for k, v in recipe.items() if k not in ('shots', 'max_steps')},
           'weights_sha256': source_weights(weights)['sha256']}
    if img_size != PROTOCOL['img_size']:  # off the protocol (the protocol's keys stay as they were)
        key['img_size'] = img_size
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_source_step(args, train, TrainConfig, name: str, model_args: dict, recipe: dict, lr: float, seed: int,
                    weights: Path, out_root: Path) -> dict:
    """HSM's step 1 on the source classes: the saliency branch alone learns, the source model and its head frozen.

    A finished step is kept under `<workdir>/transfer/source_steps/<key>/` with its record `step.json` (written
    last, so a killed step is never reused) and reused by every later target run with the same key (the few-shot
    runs of one seed share it)."""
    step_args = {**model_args, 'saliency_step_trains_head': False}  # the paper: the pretrained head stays frozen
    key = source_step_key(name, step_args, recipe, lr, seed, args.source_step_epochs, weights, args.max_steps,
                          input_size(args))
    step_root = Path(args.workdir) / 'transfer' / 'source_steps' / key
    record = step_root / 'step.json'
    with locked(record):  # parallel jobs of one seed: the first trains the step, the others wait and reuse it
        return _source_step(args, train, TrainConfig, name, step_args, recipe, lr, seed, weights, key, step_root)


def _source_step(args, train, TrainConfig, name: str, step_args: dict, recipe: dict, lr: float, seed: int,
                 weights: Path, key: str, step_root: Path) -> dict:
    record = step_root / 'step.json'
    if record.exists():
        step = json.loads(record.read_text())
        if Path(step['weights']).exists():
            print(f'\n=== transfer seed {seed}: {name} step 1 on the source classes: reusing {step_root}', flush=True)
            return {**step, 'reused': True}
    out_root = step_root
    init = source_initialisation(name, step_args, weights, out_root / 'source_init.safetensors')
    dataset = args.source_dataset()
    n_train = sum(1 for _ in (Path(dataset) / 'train').glob('*/*.jpg'))
    steps = int(args.source_step_epochs * (n_train // recipe['batch_size']))
    steps = min(steps, args.max_steps) if args.max_steps else steps  # a smoke run
    cfg = TrainConfig(
        model=name, model_args=step_args, dataset=dataset, pretrained_path=str(init),
        output_stride=PROTOCOL['output_stride'], img_size=input_size(args), crop_pct=PROTOCOL['crop_pct'],
        optimizer=recipe['optimizer'], lr=lr, backbone_lr=recipe['backbone_lr'], batch_size=recipe['batch_size'],
        weight_decay=recipe['weight_decay'], scheduler=recipe['scheduler'], warmup_epochs=recipe['warmup_epochs'],
        mixed_precision=recipe['mixed_precision'], stage_epochs=source_step_stages(args, recipe),
        epochs=recipe['epochs'], max_steps=steps, max_eval_samples=600, seed=seed, eval_every=10 ** 6, cpu=args.cpu,
        keep_checkpoints=1, num_workers=args.workers, overwrite=True, output_dir=str(out_root / 'source_step'))
    print(f'\n=== transfer seed {seed}: {name} step 1 on the source classes ({args.source_step_epochs:g} epochs, '
          f'{steps} steps, lr {lr:g})', flush=True)
    start = time.time()
    results = train(cfg)
    final = results.get('final', {})
    step = {'dataset': 'CUB classes 51-200 (train split)', 'epochs': args.source_step_epochs, 'steps': steps,
            'lr': lr, 'wall_seconds': time.time() - start, 'source_top1_600': final.get('eval_top1'),
            'saliency': saliency_activity(out_root / 'source_step', dataset),
            'weights': str(out_root / 'source_step' / 'model.safetensors'), 'key': key}
    write_atomic(record, json.dumps(step, indent=2) + '\n')
    return step


def resume_fields(output_dir: Path, resume: bool) -> dict:
    """A run's `resume` / `overwrite`: with --resume, continue from the newest complete checkpoint in its folder (the
    engine refuses one of another configuration, naming what differs); otherwise, or with no complete checkpoint
    there (said), start the run again."""
    from timm_fgvc.engine.checkpoint import checkpoint_problems, list_checkpoints
    if resume:
        if any(not checkpoint_problems(c) for c in list_checkpoints(output_dir)):
            return {'resume': 'latest', 'overwrite': False}
        print(f'--resume: no complete checkpoint in {output_dir}; this run starts from the beginning', flush=True)
    return {'resume': None, 'overwrite': True}


PARTS_FILE = 'bench_parts.json'  # in a run's folder: the processes that trained it


def record_part(run_dir: Path, resuming: bool, device: torch.device) -> List[dict]:
    """The processes that trained a run, oldest first, each with its `run_metadata` (code revision, start date,
    command, device, versions): a fresh start begins the list, a resume adds to it (a part from before these records
    is listed with revision None)."""
    path = run_dir / PARTS_FILE
    parts = []
    if resuming:
        parts = (json.loads(path.read_text()) if path.exists()
                 else [{'git': None, 'note': 'trained before the bench recorded its parts'}])
    parts.append(run_metadata(device))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(parts, indent=1) + '\n')
    if len({p['git'] for p in parts}) > 1:
        print(f'warning: {run_dir} was trained in parts by different code revisions '
              f"({', '.join(str(p['git']) for p in parts)}); the run records each part", flush=True)
    return parts


def run_transfer(args, train, TrainConfig, dataset: str) -> None:
    """Train each model of `args` (baseline unless --skip-baseline, then the method variants) for each seed."""
    import timm
    recipe = {k: getattr(args, k) for k in RECIPE_FIELDS + ('max_steps', 'shots')}
    recipe['device'] = accelerator_type(args.cpu)  # in the recipe id: devices are never pooled
    size = input_size(args)
    reference = None if size == PROTOCOL['img_size'] else size_reference_label(size)  # a probe's yardstick
    names = ([] if args.skip_baseline else [PROTOCOL['baseline']]) + list(args.transfer_models)
    stage_override = args.stage_epochs
    has_source_step = any(split_variant(n)[0] in SOURCE_STEP_METHODS for n in names)
    if stage_override and has_source_step:
        raise SystemExit("--stage-epochs: HSM's stages are its source step (--source-step-epochs) and the target "
                         'run (--epochs); set those instead.')
    other_step = has_source_step and args.source_step_epochs != SOURCE_STEP_EPOCHS  # a step 1 of another length
    if (args.model_args or args.lr_ratio is not None or args.no_source_step or args.source_step_lr is not None
            or stage_override or other_step) and not args.label:
        raise SystemExit('--model-args / --lr-ratio / --stage-epochs / --no-source-step / --source-step-lr / '
                         '--source-step-epochs make an ablation row: name it with --label '
                         "(the plain row is the paper recipe: its hub config's model arguments and new-layer / "
                         'backbone lr ratio).')
    if names == [PROTOCOL['baseline']] and (args.model_args or args.label or args.lr_ratio is not None
                                            or stage_override):
        raise SystemExit('--model-args / --label / --lr-ratio / --stage-epochs apply to the methods; with no method '
                         'only the plain baseline trains, as the protocol has it.')
    weights = Path(args.pretrained_path or SOURCE_WEIGHTS)
    if not weights.is_file():
        raise SystemExit(f'--pretrained-path: {weights} is not a file. The protocol starts from '
                         f'{SOURCE_WEIGHTS.name} (../shared/data, see its README); pass its path.')
    source = source_weights(weights)
    if not source['fixture']:  # other weights or data: rows of their own, never the protocol's
        recipe['source'] = source['sha256'][:8]
        print(f"warning: {weights} is not the protocol's {SOURCE_WEIGHTS.name} (SHA-256 {source['sha256'][:12]}, "
              f"expected {SOURCE_SHA256[:12]}): its runs are filed under recipe ' src{recipe['source']}'", flush=True)
    if getattr(args, 'other_data', None):
        recipe['data'] = args.other_data
    rid = recipe_id(recipe)
    out = Path(args.results_dir) / 'accuracy_transfer.json'
    for seed in args.seeds:
        for name in names:
            paper_args = {} if name == PROTOCOL['baseline'] else method_config(name, recipe, {})['paper']['model_args']
            model_args = {} if name == PROTOCOL['baseline'] else {**paper_args, **args.model_args}
            extra = method_config(name, recipe, model_args)
            if args.lr_ratio is not None and name != PROTOCOL['baseline']:  # an ablation of the paper's ratio
                extra['lr'] = recipe['backbone_lr'] * args.lr_ratio
            epochs_ratio = 1.0  # epochs trained / the recipe's: a stage-epochs ablation's compute and gate say so
            if stage_override and name != PROTOCOL['baseline']:
                extra['stage_epochs'] = [float(e) for e in stage_override]
                epochs_ratio = sum(extra['stage_epochs']) / recipe['epochs']
            out_dir = (Path(args.workdir) / 'transfer' / rid.replace(' ', '_').replace('/', '-') / f'seed{seed}'
                       / (name + (('_' + args.label) if args.label else '') + (f'_{size}px' if reference else '')))
            source_step, start_stage, init = None, 0, weights
            if split_variant(name)[0] in SOURCE_STEP_METHODS and not args.no_source_step:
                step_lr = extra['lr'] if args.source_step_lr is None else args.source_step_lr
                source_step = run_source_step(args, train, TrainConfig, name, model_args, recipe, step_lr, seed,
                                              weights, out_dir)
                init, start_stage = Path(source_step['weights']), 1  # step 2 on the target, all the epochs
                extra['stage_epochs'] = source_step_stages(args, recipe)
            run_dir = out_dir / 'target' if source_step else out_dir
            resume = resume_fields(run_dir, args.resume)
            parts = record_part(run_dir, bool(resume['resume']), torch.device(recipe['device']))
            cfg = TrainConfig(
                model=name, model_args=model_args, dataset=dataset, pretrained_path=str(init), start_stage=start_stage,
                output_stride=PROTOCOL['output_stride'], img_size=size, crop_pct=PROTOCOL['crop_pct'],
                optimizer=recipe['optimizer'], lr=extra['lr'], backbone_lr=recipe['backbone_lr'],
                epochs=recipe['epochs'], batch_size=recipe['batch_size'], weight_decay=recipe['weight_decay'],
                scheduler=recipe['scheduler'], warmup_epochs=recipe['warmup_epochs'],
                mixed_precision=recipe['mixed_precision'], label_smoothing=recipe['label_smoothing'], cpu=args.cpu,
                stage_epochs=extra['stage_epochs'], shots=recipe['shots'], seed=seed,
                eval_every=max(recipe['epochs'], 1),
                keep_checkpoints=1, max_steps=args.max_steps, num_workers=args.workers, output_dir=str(run_dir),
                **resume)
            print(f'\n=== transfer seed {seed}: {name} {model_args or ""} lr {extra["lr"]:g} / backbone '
                  f'{recipe["backbone_lr"]:g}, stage epochs {extra["stage_epochs"] or recipe["epochs"]}', flush=True)
            start = time.time()
            results = train(cfg)
            wall = time.time() - start
            if torch.device(results['device']).type != recipe['device']:  # never credit a run to the wrong device
                raise RuntimeError(f"{run_dir} trained on {results['device']}, but its recipe says "
                                   f"{recipe['device']!r}: run with --cpu, or on one device type.")
            final = results.get('final', {})
            probe = timm.create_model(name, num_classes=PROTOCOL['classes'], **results['model_args'])
            label = run_label(name, args.label, size)
            role = 'method' if name != PROTOCOL['baseline'] else 'reference' if reference else 'baseline'
            run = {
                'model': name, 'label': label, 'role': role, 'img_size': size,
                **({'yardstick': reference} if reference and role == 'method' else {}),
                'seed': seed, 'recipe_id': rid, 'recipe': recipe, 'model_args': model_args,
                'lr': extra['lr'], 'stage_epochs': extra['stage_epochs'],
                'paper_recipe': extra.get('paper'), 'top1': final.get('eval_top1'), 'top5': final.get('eval_top5'),
                'per_head_top1': {k[len('eval_top1_'):]: v for k, v in final.items() if k.startswith('eval_top1_')},
                'eval_samples': final.get('eval_samples'), 'steps': final.get('step'),
                'final_train_loss': final.get('train_loss'), 'history': results.get('history'),
                'epochs_ratio': epochs_ratio,
                'compute_ratio': compute_ratio(probe, size, extra['stage_epochs'], epochs_ratio, source_step,
                                               final.get('step')),
                'wall_seconds': wall, 'threads': torch.get_num_threads(), 'note': args.note,
                'source_weights': source, 'source_step': source_step, 'resumed': results.get('resumed_from'),
                'resume_warnings': results.get('resume_warnings') or [], 'parts': parts,
                'saliency': saliency_activity(Path(cfg.output_dir), dataset) if name.startswith('hsm') else None,
                **run_metadata(torch.device(recipe['device'])),
            }
            add_run(out, run)
            print(f"{label}: top-1 {run['top1']:.2f}% (heads {json.dumps(run['per_head_top1'])}), compute "
                  f"x{run['compute_ratio']:.2f}, {wall:.0f} s -> {out}", flush=True)
    with locked(out):
        data = json.loads(out.read_text())
    table = transfer_summary(data)
    print(f"\ntransfer, recipe {table['recipe']}: baseline mean {table['baseline_mean']}")
    for row in table['rows'].values():
        print(f"| {row['label']} | seeds {row['seeds']} | {row['mean']:.2f} | gain "
              f"{'-' if row['gain'] is None else format(row['gain'], '+.2f')} | x{row['compute']:.2f} |")
