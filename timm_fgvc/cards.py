"""Hub configs and the generated MODEL_CARDS.md (SPEC §1, §5).

`hub_configs/<model>.yaml` holds one planned Hub model: its repo, dataset, the paper's reported accuracy, this
package's measured accuracy (`measured:`, filled by `timm-fgvc record` from a run's results.json) and the
training recipe (`train:`, read by train_fgvc.py). MODEL_CARDS.md is rendered from them by `timm-fgvc cards`;
`timm-fgvc cards --check` (CI) fails when it is stale. Paper and measured numbers stay in separate columns and a
model without a measurement says "not yet measured". When the repository has benchmark results
(`bench/results/*.json`), MODEL_CARDS.md also shows them: a speed line per model card and the tables of
`bench/README.md` (rendered by `timm_fgvc.benchmarks`, the same code as `bench/report.py`). Imports point one
way: `hub` -> `cards` -> `benchmarks` -> `catalog` (the method names); run folders are read by `runs`.
"""
from __future__ import annotations

import datetime
import difflib
import functools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Union

import timm
import torch
import yaml

from .benchmarks import (RESULTS_DIR, few_shot_summaries, headline_row, load_results, load_transfer, paper_top1, render,
                         speed_summary, transfer_summary)
from .catalog import METHODS, split_model_name
from .catalog import DATASETS
from .models._builder import HUB_ORG
from .runs import read_run, run_device, run_held_out

__all__ = [
    'METHODS', 'NOT_MEASURED', 'CARDS_FILE', 'CONFIG_DIR', 'split_model_name', 'load_hub_config',
    'load_hub_configs', 'render_model_cards', 'write_model_cards', 'check_model_cards', 'format_number',
    'format_recipe', 'train_command', 'record_measurement', 'update_measured', 'load_bench_results',
]

NOT_MEASURED = 'not yet measured'
CARDS_FILE = 'MODEL_CARDS.md'
CONFIG_DIR = 'hub_configs'
REGENERATE = 'timm-fgvc cards'

_REQUIRED = {
    '': ('model', 'hub_id', 'published', 'method', 'dataset', 'paper', 'measured', 'train'),
    'paper': ('title', 'venue', 'url', 'top1'),
    'measured': ('top1', 'command', 'date', 'device'),
}
# run settings that do not change the weights: left out of recipes and reproduction commands
_NOT_RECIPE = ('output_dir', 'checkpoint_every', 'keep_checkpoints', 'resume', 'log_with', 'num_workers',
               'eval_every', 'overwrite', 'verbose', 'check_images', 'skip_bad_images')


# the fields of a hub config's `train:` recipe that make its protocol: a run that changes one measures another recipe
# (the data's location, the seed, precision and run bookkeeping may differ; the batch counts as batch x processes x
# accumulation steps)
_PROTOCOL_KEYS = ('pretrained', 'pretrained_backbone', 'pretrained_path', 'output_stride', 'model_args',
                  'initial_checkpoint', 'img_size', 'test_img_size', 'crop_pct', 'augment', 'epochs', 'optimizer', 'lr',
                  'backbone_lr', 'momentum', 'weight_decay', 'scheduler', 'step_epochs', 'step_gamma', 'warmup_epochs',
                  'label_smoothing', 'clip_grad', 'stage_epochs', 'start_stage')


def recipe_changes(results: Dict[str, Any], recipe: Dict[str, Any]) -> List[str]:
    """Where a run (results.json) left a hub config's `train:` recipe, as `field run-value (recipe: value)`."""
    from .engine.config import TrainConfig

    run = results.get('config') or {}
    reference = TrainConfig(**recipe).to_dict()  # cast as the run's were (YAML reads `lr: 1e-3` as a string)
    changes = [f'{key} {_flag_value(run[key])} (recipe: {_flag_value(reference.get(key))})'
               for key in _PROTOCOL_KEYS if key in run and not _same_value(run[key], reference.get(key))]
    if 'batch_size' in run:
        batch = run['batch_size'] * int(results.get('num_processes') or 1) * int(run.get('grad_accum_steps') or 1)
        expected = reference['batch_size'] * int(reference.get('grad_accum_steps') or 1)
        if batch != expected:
            changes.append(f'effective batch {batch} (recipe: {expected})')
    return changes


def _same_value(value: Any, reference: Any) -> bool:
    if isinstance(value, (list, tuple)) or isinstance(reference, (list, tuple)):
        return list(value or []) == list(reference or [])
    return value == reference


def format_number(value: Optional[float]) -> str:
    """88.5 -> '88.5', 87.4321 -> '87.43'; None -> '–'."""
    if value is None:
        return '–'
    return f'{float(value):.2f}'.rstrip('0').rstrip('.')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate(cfg: Any, name: str, source: str) -> Dict[str, Any]:
    if not isinstance(cfg, dict):
        raise ValueError(f'Hub config {source} is not a YAML mapping.')
    for section, keys in _REQUIRED.items():
        where = cfg if not section else cfg.get(section)
        if section and not isinstance(where, dict):
            raise ValueError(f'Hub config {source}: `{section}:` must be a mapping with keys {list(keys)}.')
        missing = [k for k in keys if k not in where]
        if missing:
            label = f'`{section}:` ' if section else ''
            raise ValueError(f'Hub config {source}: {label}missing key(s) {missing}.')
    model = cfg['model']
    if name and model != name:
        raise ValueError(f'Hub config {source}: model {model!r} must equal the file name stem {name!r}.')
    if cfg['hub_id'] != f'{HUB_ORG}/{model}':
        raise ValueError(f'Hub config {source}: hub_id {cfg["hub_id"]!r} must be {HUB_ORG + "/" + model!r}.')
    if cfg['dataset'] not in DATASETS:
        raise ValueError(f'Hub config {source}: unknown dataset {cfg["dataset"]!r}; known: {sorted(DATASETS)}.')
    method, _, tag = split_model_name(model)
    if method is None:
        raise ValueError(f'Hub config {source}: {model!r} is not a catalogued method: add its prefix to '
                         'timm_fgvc/catalog.py METHODS (a plugin: timm_fgvc.register_method).')
    if tag != cfg['dataset']:
        raise ValueError(f'Hub config {source}: the model tag {tag!r} must name its dataset {cfg["dataset"]!r}.')
    if method != cfg['method']:
        raise ValueError(f'Hub config {source}: method {cfg["method"]!r} does not match the model name {model!r}.')
    if not isinstance(cfg['published'], bool):
        raise ValueError(f'Hub config {source}: published must be true or false, got {cfg["published"]!r}.')
    for section in ('paper', 'measured'):
        top1 = cfg[section]['top1']
        if top1 is not None and not _is_number(top1):
            raise ValueError(f'Hub config {source}: {section}.top1 must be a number or null, got {top1!r}.')
    if not isinstance(cfg['train'], dict):
        raise ValueError(f'Hub config {source}: `train:` must be a mapping of training fields.')
    return cfg


def load_hub_config(source: Union[str, Path, Dict[str, Any]]) -> Dict[str, Any]:
    """One validated hub config, from a YAML file (whose stem must be its `model`) or an already loaded dict."""
    if isinstance(source, dict):
        return _validate(dict(source), '', f'for {source.get("model")!r}')
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f'No hub config at {path}.')
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f'Hub config {path} is not valid YAML: {e}') from e
    return _validate(cfg, path.name[:-len(path.suffix)], str(path))


def load_hub_configs(root: Union[str, Path] = '.') -> List[Dict[str, Any]]:
    """Every `<root>/hub_configs/*.yaml`, validated, sorted by model name."""
    folder = Path(root) / CONFIG_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f'No {CONFIG_DIR}/ folder under {Path(root).resolve()}.')
    configs = [load_hub_config(p) for p in sorted(folder.glob('*.yaml'))]
    return sorted(configs, key=lambda c: c['model'])


# --- recipes and commands ------------------------------------------------------------------------
def format_recipe(train: Dict[str, Any], skip: Sequence[str] = ('model', 'dataset')) -> str:
    """`key=value` pairs of a training section, in its own order, one line of Markdown code spans."""
    parts = []
    for key, value in train.items():
        if key in skip or key in _NOT_RECIPE or value is None or value == {} or value == []:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        parts.append(f'`{key}={value}`')
    return ' '.join(parts)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return 'none'
    if isinstance(value, dict):
        return "'" + json.dumps(value, sort_keys=True) + "'"
    if isinstance(value, (list, tuple)):
        return ' '.join(str(v) for v in value)
    text = str(value)
    return f"'{text}'" if re.search(r'[\s\'"$&|;<>*?]', text) else text


def train_command(run_config: Dict[str, Any], base: Optional[Dict[str, Any]] = None,
                  base_path: Optional[str] = None, num_processes: int = 1) -> str:
    """The `train_fgvc.py` command line that reproduces `run_config` (a results.json `config`).

    With a hub config's `train:` section as `base` (at `base_path`) the command is `--config <base_path>` plus
    the fields where the run differed; without, the fields that differ from `TrainConfig`'s defaults.
    """
    from .engine.config import TrainConfig

    defaults = TrainConfig().to_dict()
    reference = TrainConfig(**base).to_dict() if base else defaults  # cast as the run's values were
    launch = 'accelerate launch'
    if num_processes > 1:
        launch += f' --multi_gpu --num_processes {num_processes}'
    parts = [launch, 'train_fgvc.py']
    if base is not None and base_path:
        parts.append(f'--config {base_path}')
    for key in defaults:
        if key in _NOT_RECIPE or key not in run_config:
            continue
        value = run_config[key]
        always = base is None and key in ('model', 'dataset')
        if not always and _same_value(value, reference.get(key)):
            continue
        parts.append(f'--{key.replace("_", "-")} {_flag_value(value)}')
    return ' '.join(parts)


# --- MODEL_CARDS.md ----------------------------------------------------------------------------------
def _dataset_link(tag: str) -> str:
    info = DATASETS[tag]
    if info.hub_id:
        return f'[{info.title}](https://huggingface.co/datasets/{info.hub_id})'
    return info.title


def _paper_cell(paper: Dict[str, Any]) -> str:
    return format_number(paper['top1']) if paper.get('top1') is not None else 'not reported'


def _measured_cell(measured: Dict[str, Any]) -> str:
    if measured.get('top1') is None:
        return NOT_MEASURED
    return format_number(measured['top1']) + (' (off its recipe)' if measured.get('recipe_changes') else '')


def _backbone(cfg: Dict[str, Any]) -> str:
    """The backbone the model is built with (`s3n_resnet50_authors` is S3N's authors' recipe on a resnet50)."""
    _, backbone, _ = split_model_name(cfg['model'])
    return hub_model_backbone(cfg) or backbone


def load_bench_results(root: Union[str, Path] = '.') -> Dict[str, List[dict]]:
    """`{'throughput': [...], 'accuracy': [...]}` from `<root>/bench/results/*.json` (empty lists without it)."""
    folder = Path(root) / RESULTS_DIR
    results = {kind: load_results(f'{kind}_*.json', folder, root) for kind in ('throughput', 'accuracy')}
    results['transfer'] = load_transfer(folder, root)
    return results


def render_model_cards(configs: Sequence[Dict[str, Any]], bench: Optional[Dict[str, List[dict]]] = None) -> str:
    """The Markdown of MODEL_CARDS.md for these hub configs (deterministic: sorted by model name).

    `bench` (from `load_bench_results`) adds each card's measured speed and a "Benchmarks measured here" section.
    """
    configs = sorted(configs, key=lambda c: c['model'])
    bench = bench or {}
    throughput, accuracy = bench.get('throughput') or [], bench.get('accuracy') or []
    transfer = bench.get('transfer')
    transfer_rows = transfer_summary(transfer)['rows'] if transfer and transfer.get('runs') else {}
    few_shot = few_shot_summaries(transfer) if transfer_rows else []
    has_bench = bool(throughput or accuracy or transfer_rows)
    lines = [
        f'<!-- Generated from {CONFIG_DIR}/*.yaml by `{REGENERATE}`: do not edit by hand. Change the hub config',
        f'     (or record a run with `timm-fgvc record`) and run `{REGENERATE}`; CI runs `{REGENERATE} --check`. -->',
        '',
        '# timm-fgvc model cards',
        '',
        f'Every planned Hugging Face Hub model of timm-fgvc, one per file in `{CONFIG_DIR}/`. **Paper top-1** is the '
        'accuracy the paper reports (for the paper\'s own backbone and protocol); **measured top-1** is what this '
        f'package measured with the recorded command. They are never mixed: "{NOT_MEASURED}" means no run of this '
        'package has been recorded for that model.' + (
            ' Speed and accuracy measured by the benchmark scripts are under '
            '[Benchmarks measured here](#benchmarks-measured-here).' if has_bench else ''),
        '',
        '| Model | Method | Backbone | Dataset | Hub id | Published | Paper top-1 | Measured top-1 |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for cfg in configs:
        hub = (f'[`{cfg["hub_id"]}`](https://huggingface.co/{cfg["hub_id"]})' if cfg['published']
               else f'`{cfg["hub_id"]}`')
        lines.append(
            f'| [`{cfg["model"]}`](#{_anchor(cfg["model"])}) | {METHODS.get(cfg["method"], cfg["method"])} '
            f'| {_backbone(cfg)} | {DATASETS[cfg["dataset"]].title} | {hub} | {"yes" if cfg["published"] else "no"} '
            f'| {_paper_cell(cfg["paper"])} | {_measured_cell(cfg["measured"])} |')
    for cfg in configs:
        paper, measured, info = cfg['paper'], cfg['measured'], DATASETS[cfg['dataset']]
        command = f'accelerate launch train_fgvc.py --config {CONFIG_DIR}/{cfg["model"]}.yaml'
        code = f', [authors\' code]({paper["code"]})' if paper.get('code') else ''
        lines += [
            '',
            f'## {cfg["model"]}',
            '',
            f'{METHODS.get(cfg["method"], cfg["method"])} with a {_backbone(cfg)} backbone, fine-tuned on '
            f'{_dataset_link(cfg["dataset"])} ({info.num_classes} classes). '
            f'Paper: [{paper["title"]}]({paper["url"]}) ({paper["venue"]}){code}.',
            '',
        ]
        if cfg['published']:
            lines.append(f'- Weights: `timm.create_model("hf-hub:{cfg["hub_id"]}", pretrained=True)` '
                         '(after `import timm_fgvc`)')
        else:
            lines.append(f'- Weights: not published yet; train them with `{command}`')
        lines.append(f'- Paper top-1: {_paper_cell(paper)}')
        if measured['top1'] is None:
            lines.append(f'- Measured top-1: {NOT_MEASURED}')
        else:
            details = ', '.join(str(measured[k]) for k in ('date', 'device') if measured.get(k))
            lines.append(f'- Measured top-1: {format_number(measured["top1"])}' + (f' ({details})' if details else ''))
            if measured.get('command'):
                lines.append(f'- Measured with: `{measured["command"]}`')
            if measured.get('recipe_changes'):
                lines.append(f'- Off its recipe: {measured["recipe_changes"]}; not a measurement of the recipe below')
        lines.append(f'- Recipe (`train:`): {format_recipe(cfg["train"])}')
        for speed in speed_summary(throughput, cfg['model'].split('.')[0]):
            lines.append(f'- Speed measured here: {speed}')
        small = headline_row(transfer_rows.values(), f"{cfg['method']}_resnet18")
        base = transfer_rows.get('resnet18')
        if small and base:
            lines.append(f"- Transfer protocol measured here (`{small['label']}`, CUB classes 1-50 from a "
                         f"resnet18 trained on 51-200, 128 px): top-1 {small['mean']:.2f} vs fine-tuned resnet18 "
                         f"{base['mean']:.2f} ({small['gain']:+.2f}; seeds {small['seeds']})")
        for fs in few_shot:
            few = headline_row(fs['rows'].values(), f"{cfg['method']}_resnet18")
            if few and few['gain'] is not None:
                per_k = ', '.join(f"k = {k}: {c['mean']:.2f} ({c['gain']:+.2f})" for k, c in few['per_k'].items()
                                  if c['gain'] is not None)
                lines.append(f"- Few-shot protocol measured here (`{few['label']}`, recipe `{fs['recipe']}`, k "
                             f"training images per class; gain vs resnet18 at that k): {per_k}; mean gain "
                             f"{few['gain']:+.2f}")
    if has_bench:
        block, _, _ = render(throughput, accuracy, paper_top1(configs), transfer=transfer)
        lines += ['', '## Benchmarks measured here', '',
                  'From `bench/results/*.json` (`python bench/report.py` renders the same tables into README.md and '
                  '`bench/README.md`). These runs are short CPU benchmarks of this package, not the papers\' '
                  'protocol: read the paper columns as context, not as a target.', '', block.rstrip('\n')]
    return '\n'.join(lines) + '\n'


def _anchor(model: str) -> str:
    """GitHub's heading anchor: lower case, punctuation other than '-' and '_' dropped."""
    return re.sub(r'[^\w\- ]', '', model.lower()).replace(' ', '-')


def write_model_cards(root: Union[str, Path] = '.') -> Path:
    """Render `<root>/MODEL_CARDS.md` from `<root>/hub_configs/`."""
    path = Path(root) / CARDS_FILE
    path.write_text(render_model_cards(load_hub_configs(root), load_bench_results(root)))
    return path


def check_model_cards(root: Union[str, Path] = '.', stream: Optional[TextIO] = None) -> bool:
    """True when MODEL_CARDS.md equals what `timm-fgvc cards` renders now; else False and a diff on `stream`."""
    stream = sys.stderr if stream is None else stream
    path = Path(root) / CARDS_FILE
    expected = render_model_cards(load_hub_configs(root), load_bench_results(root))
    current = path.read_text() if path.is_file() else None
    if current == expected:
        return True
    if current is None:
        stream.write(f'{path} is missing; run `{REGENERATE}` to generate it.\n')
        return False
    diff = difflib.unified_diff(current.splitlines(keepends=True), expected.splitlines(keepends=True),
                                fromfile=f'{CARDS_FILE} (committed)', tofile=f'{CARDS_FILE} (from {CONFIG_DIR}/)')
    stream.write(f'{path} is out of date with {CONFIG_DIR}/ and bench/results/; run `{REGENERATE}` to regenerate '
                 'it.\n')
    stream.writelines(diff)
    return False


# --- recording a measurement -------------------------------------------------------------------------
def _yaml_scalar(value: Any) -> str:
    if value is None:
        return 'null'
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    return yaml.safe_dump(value, default_flow_style=True).splitlines()[0]


def update_measured(path: Union[str, Path], measured: Dict[str, Any]) -> None:
    """Rewrite the `measured:` section of a hub config in place, keeping every other line and the comments."""
    path = Path(path)
    before = yaml.safe_load(path.read_text())
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r'measured:\s*(#.*)?$', line.rstrip('\n'))), None)
    if start is None:
        raise ValueError(f'Hub config {path} has no top-level `measured:` section to update.')
    end = start + 1
    while end < len(lines) and (lines[end].startswith((' ', '\t')) or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # keep blank lines that follow the section
        end -= 1
    block, todo = lines[start + 1:end], dict(measured)
    for i, line in enumerate(block):
        match = re.match(r'(\s+)(\w+):(\s*)([^#\n]*?)(\s*#.*)?\n?$', line)
        if match and match.group(2) in todo:
            indent, key, _, _, comment = match.groups()
            block[i] = f'{indent}{key}: {_yaml_scalar(todo.pop(key))}{comment or ""}\n'
    indent = next((re.match(r'\s+', l).group(0) for l in block if l.strip()), '  ')
    block += [f'{indent}{key}: {_yaml_scalar(value)}\n' for key, value in todo.items()]
    text = ''.join(lines[:start + 1] + block + lines[end:])
    after = yaml.safe_load(text)
    expected = dict(before, measured=dict(before.get('measured') or {}, **measured))
    if after != expected:  # never leave a hub config that reads back differently
        raise ValueError(f'Could not update {path} safely; edit its `measured:` section by hand.')
    path.write_text(text)


def hub_model_backbone(cfg: Dict[str, Any]) -> Optional[str]:
    """The backbone the hub config's model is built with (None for a plain timm model), read from a model built on
    the meta device: no weights, no download."""
    return _built_backbone(cfg['model'].split('.')[0], json.dumps(cfg['train'].get('model_args') or {}, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _built_backbone(architecture: str, model_args: str) -> Optional[str]:
    with torch.device('meta'):
        model = timm.create_model(architecture, **json.loads(model_args))
    return (getattr(model, 'init_args', None) or {}).get('backbone')


def run_mismatch(results: Dict[str, Any], cfg: Dict[str, Any], same_dataset: bool = False) -> Optional[str]:
    """Why a run's results.json is not the hub config `cfg`'s model trained on its dataset (None when it is): another
    architecture (for a run fine-tuned from `hf-hub:` / `local-dir:`, the one it built) or backbone, another
    number of classes, a run cut short (max_steps, max_*_samples, shots), or other data: another Hub dataset, or a
    local folder the user does not say is a copy of the dataset with its official split (`same_dataset`)."""
    arch = (results.get('source_config') or {}).get('architecture') or results['model'].split('.')[0]
    expected = cfg['model'].split('.')[0]
    if arch != expected:
        return f'it trained {results["model"]!r} ({arch}), not {expected!r}'
    backbone = {**(results.get('init_args') or {}), **(results.get('model_args') or {})}.get('backbone')
    expected_backbone = hub_model_backbone(cfg)
    if backbone and expected_backbone and backbone != expected_backbone:
        return f'its backbone is {backbone!r}, not {expected_backbone!r}'
    info = DATASETS[cfg['dataset']]
    if results['num_classes'] != info.num_classes:
        return f'it has {results["num_classes"]} classes, {info.title} {info.num_classes}'
    run_cfg = results.get('config') or {}
    cut = [f'{k}={run_cfg[k]}' for k in ('max_steps', 'max_train_samples', 'max_eval_samples', 'shots')
           if run_cfg.get(k) is not None]
    if cut:
        return f'it was cut short ({", ".join(cut)}); train the whole recipe'
    known = {info.hub_id, (cfg.get('train') or {}).get('dataset')} - {None}
    if (results.get('dataset') not in known or results.get('dataset_path')) and not same_dataset:
        read = f'the local folder {results["dataset_path"]}' if results.get('dataset_path') else repr(
            results.get('dataset'))  # a folder may be named like the Hub id
        return (f'it read {read}, not {" or ".join(sorted(known))} from the Hub; if that is a copy of {info.title} '
                'with its official split, pass --same-dataset')
    return None


def record_measurement(run_dir: Union[str, Path], hub_config: Union[str, Path], command: Optional[str] = None,
                       same_dataset: bool = False) -> Dict[str, Any]:
    """Write a run's measured top-1 (with date, device and command) into a hub config's `measured:` section.

    The run must be of the hub config's architecture and number of classes, and evaluated on its dataset (the
    Hub id or tag; a local copy needs `same_dataset=True`), so a number is never recorded for the wrong model.
    The command defaults to the `train_fgvc.py` command that reproduces the run's config.
    """
    run_dir, path = Path(run_dir), Path(hub_config)
    cfg = load_hub_config(path)
    results = read_run(run_dir, weights=False)
    top1 = (results.get('final') or {}).get('eval_top1')
    if not _is_number(top1):
        raise ValueError(f'Run {run_dir} has no measured eval_top1 in results.json (final: '
                         f'{results.get("final")!r}); train with an eval split before recording.')
    problem = run_mismatch(results, cfg, same_dataset)
    if problem:
        raise ValueError(f'Run {run_dir} is not a measurement of {cfg["model"]} ({path}): {problem}.')
    info = DATASETS[cfg['dataset']]
    data = results.get('data') or {}
    split = data.get('eval_split')
    if run_held_out(results):
        raise ValueError(f'Run {run_dir} was evaluated on {split}, not on a test split of {info.title}: its number '
                         "is not comparable with the paper's. Train with the dataset's test split (--eval-split).")
    if command is None:
        config_path = f'{CONFIG_DIR}/{path.name}'
        command = train_command(results.get('config') or {}, base=cfg['train'], base_path=config_path,
                                num_processes=int(results.get('num_processes') or 1))
    device = run_device(results)
    mtime = (run_dir / 'results.json').stat().st_mtime
    measured = {
        'top1': round(float(top1), 2),
        'command': command,
        'date': datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).date().isoformat(),
        'device': device,
    }
    if split:
        measured['split'] = split
    # a run off the recipe is recorded, with where it left it (its command shows the flags too)
    measured['recipe_changes'] = '; '.join(recipe_changes(results, cfg['train'])) or None
    update_measured(path, measured)
    return measured
