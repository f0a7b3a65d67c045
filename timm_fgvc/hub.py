"""Hugging Face Hub I/O (SPEC §5): export a model or a training run as a Hub-ready folder, and push it.

    folder = export_run('output/s3n_resnet50.cub200', 'export/s3n_resnet50.cub200',
                        hub_config='hub_configs/s3n_resnet50.cub200.yaml')
    push(folder, 'timm-fgvc/s3n_resnet50.cub200')
    model = timm.create_model('hf-hub:timm-fgvc/s3n_resnet50.cub200', pretrained=True)  # after `import timm_fgvc`

The folder is timm's own format, written by `timm.models._hub.save_for_hf` (config.json with architecture,
num_classes, num_features, label_names, model_args -- every constructor argument of a method, so a default changed
later does not change the reloaded model -- and pretrained_cfg; model.safetensors), plus a README.md model
card built with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult`. The card's `model-index` holds only
measured accuracy (a run's results.json or a hub config's `measured:`); the paper's reported accuracy is shown in
its own column and never enters the metadata.
"""
from __future__ import annotations

import importlib
import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import timm
import torch.nn as nn
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import save_for_hf

from .cards import (CONFIG_DIR, NOT_MEASURED, format_number, format_recipe, hub_model_backbone, load_hub_config,
                    run_mismatch, train_command)
from .catalog import DATASETS, METHODS, DatasetInfo, split_model_name
from .engine.checkpoint import load_weights
from .runs import (RUNTIME_MODEL_ARGS, read_run, run_create_args, run_data_config, run_device, run_held_out,
                   run_model_args)

__all__ = ['RUNTIME_MODEL_ARGS', 'EXPORT_FILES', 'export_model', 'export_run', 'read_run', 'build_model_card',
           'push', 'HubUploadError']

EXPORT_FILES = ('config.json', 'model.safetensors', 'README.md')
_PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.pkl', '.ckpt')
_RECIPE_KEYS = ('model', 'pretrained', 'pretrained_backbone', 'pretrained_path', 'output_stride', 'model_args',
                'dataset', 'shots', 'img_size', 'test_img_size', 'crop_pct', 'augment', 'epochs', 'max_steps',
                'batch_size', 'grad_accum_steps', 'optimizer', 'lr', 'backbone_lr', 'momentum', 'weight_decay',
                'scheduler', 'warmup_epochs', 'label_smoothing', 'mixed_precision', 'seed', 'max_train_samples',
                'max_eval_samples')


# --- helpers -------------------------------------------------------------------------------------
def _dataset_info(name: Optional[str]) -> Optional[DatasetInfo]:
    """A catalog entry from a tag or a Hub dataset id."""
    if not name:
        return None
    return DATASETS.get(name) or next((d for d in DATASETS.values() if d.hub_id == name), None)


def validate_repo_id(repo_id: str) -> None:
    """`owner/name` as the Hub accepts it, checked before any work (an export's card names it, push creates it)."""
    try:
        _hf_validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f'--repo-id {repo_id!r} is not a Hub repo id (<user or org>/<name>: letters, digits, '
                         f"'-', '_', '.'): {e}") from e


def _weights_license(pretrained_cfg: Dict[str, Any], base_model: Optional[str]) -> Optional[str]:
    """Fine-tuned weights keep the license of the timm weights they started from (`resnet18.tv_in1k` is
    bsd-3-clause, `resnet50.fb_swsl_ig1b_ft_in1k` cc-by-nc-4.0); else the architecture cfg's."""
    if base_model and base_model.startswith('timm/'):
        try:
            return resolve_pretrained_cfg(base_model[len('timm/'):]).license or pretrained_cfg.get('license')
        except (RuntimeError, KeyError, ValueError):
            pass
    return pretrained_cfg.get('license')


def _run_dataset_info(results: Optional[dict]) -> Optional[DatasetInfo]:
    """The catalog dataset a run read: never for a local folder (`dataset_path`), even one named like a Hub id."""
    if not results or results.get('dataset_path'):
        return None
    return _dataset_info(results.get('dataset'))


def _run_dataset_name(results: dict) -> str:
    """How a card names a run's data: the Hub id, or a local folder by its name (never the machine's path)."""
    dataset = str(results.get('dataset'))
    return f'local folder {Path(dataset).name}' if results.get('dataset_path') else dataset


def run_training_data(results: dict) -> Dict[str, Any]:
    """config.json's `training_data`: the data a run trained on (`dataset` as its card names it; `folder`, the name
    of a local one) and, when it held out part of its training split for evaluation, that draw (split, fraction,
    seed, and the split's image count before it), so `timm-fgvc eval` of the export scores the images the run held
    out, not a draw that may hold its training images."""
    data, cfg = results.get('data') or {}, results.get('config') or {}
    record = {'dataset': _run_dataset_name(results), 'train_split': data.get('train_split', cfg.get('train_split'))}
    if results.get('dataset_path'):
        record['folder'] = Path(results['dataset_path']).name
    if run_held_out(results):
        whole = cfg.get('shots') is None and cfg.get('max_train_samples') is None and not results.get(
            'bad_images_skipped')  # else the counts are of a draw, not of the split
        record.update(eval_fraction=cfg.get('eval_fraction'), seed=cfg.get('seed'),
                      images=int(data.get('train_samples', 0)) + int(data.get('eval_samples', 0)) if whole else None)
    return record


def _registering_package(arch: str) -> str:
    """The package whose import registers `arch` with timm: timm_fgvc, or a plugin method's own."""
    if timm.models.is_model(arch):
        return timm.models.model_entrypoint(arch).__module__.split('.')[0]
    return 'timm_fgvc'


def check_out_dir(out_dir: Path) -> None:
    """An export writes into a new or empty folder, or over an earlier export (its three files, replaced as a
    re-export does); a folder holding anything else is refused before any work, never overwritten."""
    if _is_run_folder(out_dir):
        raise ValueError(f'{out_dir} is a training run folder (results.json, checkpoints/): export to a new folder, '
                         'so the run stays as it was and the export holds only what is uploaded.')
    if not out_dir.is_dir():
        return
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
    if others:
        raise ValueError(f'{out_dir} holds other files ({", ".join(others[:5])}): export to a new or empty folder, '
                         'so nothing of yours is overwritten.')


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if not cfg.get('architecture'):
        raise ValueError('The model has no pretrained_cfg["architecture"]; build it with timm.create_model().')
    return cfg['architecture']


def _base_model(model: nn.Module, run_config: Dict[str, Any]) -> Optional[str]:
    """The Hub id the weights were initialised from (timm's ImageNet weights of the backbone or model, or the Hub
    model a run fine-tuned), when the run says; None when unknown or a local folder."""
    try:
        if run_config.get('pretrained_backbone') and getattr(model, 'backbone_name', None):
            return resolve_pretrained_cfg(model.backbone_name).hf_hub_id
        source, model_id = timm.models.parse_model_name(str(run_config.get('model', '')))
        if run_config.get('pretrained') and source == 'hf-hub':
            return model_id.split('@')[0]  # fine-tuned from a Hub model: that is its parent
        if run_config.get('pretrained') and source is None:
            return resolve_pretrained_cfg(run_config['model']).hf_hub_id
    except (RuntimeError, KeyError, ValueError):
        pass
    return None


def _measured(results: Optional[dict]) -> Optional[Dict[str, Any]]:
    """The measured accuracy of these weights: their run's final eval (None without a run)."""
    final = (results or {}).get('final') or {}
    top1 = final.get('eval_top1')
    if isinstance(top1, (int, float)) and math.isfinite(top1):
        config = results.get('config') or {}
        split = (results.get('data') or {}).get('eval_split') or config.get('eval_split')  # the one evaluated
        info = _run_dataset_info(results)
        top5 = final.get('eval_top5')
        return dict(
            top1=float(top1), top5=float(top5) if isinstance(top5, (int, float)) and math.isfinite(top5) else None,
            dataset=info.hub_id if info and info.hub_id else _run_dataset_name(results),
            dataset_title=info.title if info else _run_dataset_name(results),
            tag=info.tag if info else None, split=split, samples=final.get('eval_samples'),
            source='results.json of the training run', device=run_device(results))
    return None  # a hub config's `measured:` is of its recorded run, not of weights exported without one


def _md_list(values: Sequence) -> str:
    return ', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)


# --- the model card ------------------------------------------------------------------------------
def build_model_card(
        config: Dict[str, Any],
        *,
        repo_id: Optional[str] = None,
        hub_config: Optional[Dict[str, Any]] = None,
        results: Optional[Dict[str, Any]] = None,
        base_model: Optional[str] = None,
        num_params: Optional[int] = None,
) -> ModelCard:
    """The README.md of an export, from its timm `config.json` dict, an optional hub config and run results."""
    pretrained_cfg = config.get('pretrained_cfg') or {}
    arch = config['architecture']
    method, backbone, _ = split_model_name(arch)
    backbone = (config.get('model_args') or {}).get('backbone') or backbone  # the one built, not the name's
    tag = pretrained_cfg.get('tag')
    name = hub_config['model'] if hub_config else (f'{arch}.{tag}' if tag else arch)
    repo_id = repo_id or (hub_config or {}).get('hub_id') or f'<your-hub-user>/{name}'
    info = DATASETS[hub_config['dataset']] if hub_config else (_run_dataset_info(results) if results
                                                                 else _dataset_info(tag))
    measured = _measured(results)
    paper = dict((hub_config or {}).get('paper') or {})
    if not paper and pretrained_cfg.get('paper_name'):
        paper = dict(title=pretrained_cfg['paper_name'], venue=pretrained_cfg.get('paper_ids'),
                     url=None, code=pretrained_cfg.get('origin_url'), top1=None)
    method_name = METHODS.get(method or '', None)

    tags = ['image-classification', 'timm', 'fine-grained', 'timm-fgvc'] + ([method] if method else [])
    datasets = [info.hub_id] if info is not None and info.hub_id else None
    eval_results = None
    if measured:
        eval_results = [EvalResult(
            task_type='image-classification', task_name='Fine-grained image classification',
            dataset_type=measured['dataset'], dataset_name=measured['dataset_title'],
            dataset_split=measured['split'], metric_type='accuracy', metric_name='Top-1 accuracy',
            metric_value=round(measured['top1'], 2), verified=False)]
        if measured['top5'] is not None and config['num_classes'] > 5:  # with 5 classes or fewer it is 100%
            eval_results.append(EvalResult(
                task_type='image-classification', task_name='Fine-grained image classification',
                dataset_type=measured['dataset'], dataset_name=measured['dataset_title'],
                dataset_split=measured['split'], metric_type='accuracy', metric_name='Top-5 accuracy',
                metric_value=round(measured['top5'], 2), verified=False))
    card_data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', tags=tags, datasets=datasets,
        license=_weights_license(pretrained_cfg, base_model), base_model=base_model,
        metrics=['accuracy'] if measured else None,
        model_name=name if measured else None, eval_results=eval_results)

    num_classes = config['num_classes']
    input_size = pretrained_cfg.get('input_size') or (3, 224, 224)
    what = (f'{method_name} ({paper.get("title")}) with a `{backbone}` backbone' if method_name
            else f'The plain timm `{arch}` (a baseline without an FGVC method)')
    lines = [f'# {name}', '']
    recipe = (results or {}).get('config') or (hub_config or {}).get('train') or {}
    from_weights = base_model or any(recipe.get(k) for k in ('pretrained', 'pretrained_backbone', 'pretrained_path',
                                                             'initial_checkpoint'))
    lines.append(f'{what}, '
                 + (f'{"fine-tuned" if from_weights or not recipe else "trained from scratch"} on {info.title} '
                    f'({num_classes} classes).' if info else f'for {num_classes} classes.')
                 + ' Packaged by timm-fgvc (`pip install timm-fgvc`), a model zoo of fine-grained classification '
                   'methods that load through `timm`.')
    lines += ['', '## Model details', '']
    package = _registering_package(arch) if method else None
    lines.append(f'- **Architecture:** `{arch}`' + (f' (registered with timm by `import {package}`)' if method else ''))
    if base_model:
        lines.append(f'- **Initialised from:** [`{base_model}`](https://huggingface.co/{base_model})')
    if info is not None:  # the card's license is the weights'; the data they were trained on has terms of its own
        data = f'[{info.title}](https://huggingface.co/datasets/{info.hub_id})' if info.hub_id else info.title
        lines.append(f'- **Training data:** {data}, ' + (info.license if info.license != 'other' else
                                                          "under its own terms of use (see its dataset card), which "
                                                          "apply beside the weights' license"))
    elif results and results.get('dataset_path'):
        lines.append(f'- **Training data:** a {_run_dataset_name(results)}: its own terms apply beside the '
                     "weights' license")
    lines.append(f'- **Classes:** {num_classes}' + (' (names in `model.pretrained_cfg["label_names"]`)'
                                                      if config.get('label_names') else ''))
    if num_params:
        lines.append(f'- **Parameters:** {num_params / 1e6:.1f} M')
    lines.append(f'- **Input:** {input_size[-2]}x{input_size[-1]} px'
                 + (f' (test {pretrained_cfg["test_input_size"][-1]} px)' if pretrained_cfg.get('test_input_size')
                    else '')
                 + f', crop_pct {pretrained_cfg.get("crop_pct")}, {pretrained_cfg.get("interpolation")} '
                   f'interpolation, mean ({_md_list(pretrained_cfg.get("mean", ()))}), '
                   f'std ({_md_list(pretrained_cfg.get("std", ()))})')
    if paper.get('title'):
        link = f'[{paper["title"]}]({paper["url"]})' if paper.get('url') else paper['title']
        lines.append(f'- **Paper:** {link}' + (f', {paper["venue"]}' if paper.get('venue') else ''))
    if paper.get('code'):
        lines.append(f'- **Original code:** {paper["code"]}')
    lines.append('- **Weights:** `model.safetensors` (no pickle)')

    lines += ['', '## Usage', '', '```python', 'import timm', 'import torch']
    if method:
        lines.append(f'import {package}  # registers the {arch} architecture with timm')
    lines += [
        'from PIL import Image, ImageOps', '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model, use_test_size=True)  # the size it was measured at',
        'transform = timm.data.create_transform(**data_config, is_training=False)', '',
        "image = ImageOps.exif_transpose(Image.open('image.jpg')).convert('RGB')  # upright, as the model trained",
        'with torch.no_grad():',
        '    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)',
        f'top = probabilities.topk({min(5, int(num_classes))})  # the {min(5, int(num_classes))} most likely classes',
    ]
    if config.get('label_names'):
        lines.append("print([(model.pretrained_cfg['label_names'][i], round(p, 3)) "
                     "for p, i in zip(top.values[0].tolist(), top.indices[0].tolist())])")
    else:
        lines.append('print(top.indices[0].tolist(), top.values[0].tolist())')
    lines += ['```']

    lines += ['', '## Training', '']
    run_config = (results or {}).get('config') or {}
    if run_config:
        base = hub_config['train'] if hub_config else None
        base_path = f'{CONFIG_DIR}/{hub_config["model"]}.yaml' if hub_config else None
        command = train_command(run_config, base=base, base_path=base_path,
                                num_processes=int((results or {}).get('num_processes') or 1))
        recipe = {k: run_config[k] for k in _RECIPE_KEYS if k in run_config}
        lines += ['These weights come from the training run summarised here (its `results.json`):', '',
                  f'```bash\n{command}\n```', '', f'Recipe: {format_recipe(recipe, skip=())}']
        limits = [f'`{k}={run_config[k]}`' for k in ('shots', 'max_steps', 'max_train_samples', 'max_eval_samples')
                  if run_config.get(k) is not None]
        if limits:
            lines += ['', f'Note: a reduced protocol ({", ".join(limits)}); the measured accuracy is not comparable '
                          'to the paper\'s full-dataset number.']
    elif hub_config:
        lines += [f'The recipe of `{CONFIG_DIR}/{hub_config["model"]}.yaml` (timm-fgvc):', '',
                  f'```bash\naccelerate launch train_fgvc.py --config {CONFIG_DIR}/{hub_config["model"]}.yaml\n```',
                  '', f'Recipe: {format_recipe(hub_config["train"], skip=())}']
    else:
        lines.append('No training record was given with this export.')

    lines += ['', '## Results', '',
              'Top-1 accuracy (%). *Paper* is the number the authors report (their backbone and protocol); '
              '*measured* is what timm-fgvc measured for these weights. Only measured numbers enter the '
              'model-index metadata.', '',
              '| Dataset | Paper top-1 (reported) | Measured top-1 (timm-fgvc) | Measured top-5 | Measured on |',
              '|---|---|---|---|---|']
    # without a hub config the paper's number is not at hand here: not the same as "not reported"
    paper_top1 = (format_number(paper['top1']) if paper.get('top1') is not None else
                  'not reported' if hub_config else 'see the paper (no hub config given)')

    def where(m: dict) -> str:
        parts = [p for p in (f'split `{m["split"]}`' if m.get('split') else None,
                             f'{m["samples"]} images' if m.get('samples') else None,
                             m.get('device'), m.get('date')) if p]
        return ', '.join(parts) or m['source']

    same = measured is not None and info is not None and measured.get('tag') == info.tag
    if info is not None:
        cells = ([format_number(measured['top1']), format_number(measured['top5']), where(measured)] if same
                 else [NOT_MEASURED, '–', '–'])
        lines.append(f'| {info.title} | {paper_top1} | ' + ' | '.join(cells) + ' |')
    if measured is not None and not same:
        lines.append(f'| {measured["dataset_title"]} | – | {format_number(measured["top1"])} | '
                     f'{format_number(measured["top5"])} | {where(measured)} |')
    if info is None and measured is None:
        lines.append(f'| – | {paper_top1} | {NOT_MEASURED} | – | – |')
    if measured and measured.get('command'):
        lines += ['', f'Measured with: `{measured["command"]}`']

    if paper.get('title'):
        lines += ['', '## Citation', '', 'If you use this model, please cite the paper:', '',
                  f'> {paper["title"]}. {paper.get("venue") or ""}. {paper.get("url") or ""}'.rstrip()]
    body = '\n'.join(lines) + '\n'
    return ModelCard(f'---\n{card_data.to_yaml()}\n---\n\n{body}')


# --- export --------------------------------------------------------------------------------------
def _check_run_fits(results: Dict[str, Any], hub_config: Dict[str, Any], same_dataset: bool) -> None:
    """The run is the hub config's model trained on its dataset (`run_mismatch`, as `timm-fgvc record` checks)."""
    problem = run_mismatch(results, hub_config, same_dataset)
    if problem:
        raise ValueError(f'The run is not {hub_config["model"]!r} as its card would say: {problem}.')


def export_model(
        model: nn.Module,
        out_dir: Union[str, Path],
        *,
        label_names: Optional[Sequence[str]] = None,
        results: Optional[Dict[str, Any]] = None,
        hub_config: Optional[Union[str, Path, Dict[str, Any]]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        same_dataset: bool = False,
) -> Path:
    """Write a Hub-ready folder for `model`: config.json + model.safetensors (timm's `save_for_hf`) + README.md.

    `label_names` default to the model's `pretrained_cfg['label_names']`; `data_config` (input_size, crop_pct,
    mean, std, interpolation, ...) is the preprocessing the weights expect; `results` is a run's results.json
    and `hub_config` a `hub_configs/*.yaml` (path or dict) for the card. Runtime-only model args
    (`RUNTIME_MODEL_ARGS`) are left out of config.json. `repo_id` names the repo in the card's usage snippet
    (default: the hub config's `hub_id`). A run on a local folder is credited to the hub config's dataset only with
    `same_dataset` (a local copy of it with its official split), as `timm-fgvc record` asks.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if repo_id is not None:
        validate_repo_id(repo_id)
    hub_config = load_hub_config(hub_config) if hub_config is not None else None
    arch = _architecture(model)
    num_classes = model.num_classes
    if hub_config:
        expected_arch = hub_config['model'].split('.')[0]
        info = DATASETS[hub_config['dataset']]
        if arch != expected_arch:
            raise ValueError(f'The model is {arch!r} but hub config {hub_config["model"]!r} is for {expected_arch!r}.')
        if num_classes != info.num_classes:
            raise ValueError(f'The model has {num_classes} classes but {hub_config["model"]!r} is for {info.title} '
                             f'({info.num_classes} classes).')
        expected_backbone = hub_model_backbone(hub_config)
        backbone = getattr(model, 'backbone_name', None)
        if backbone and expected_backbone and backbone != expected_backbone:
            raise ValueError(f'The model\'s backbone is {backbone!r} but {hub_config["model"]!r} has '
                             f'{expected_backbone!r}.')
        if results:
            _check_run_fits(results, hub_config, same_dataset)
    if label_names is None:
        label_names = (model.pretrained_cfg or {}).get('label_names')
        if label_names is not None and len(label_names) != num_classes:
            label_names = None  # the architecture's default cfg, not these weights
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(label_names) != num_classes:
            raise ValueError(f'{len(label_names)} label names for a model with {num_classes} classes.')

    # the dataset tag of these weights: the hub config's, else the run's (a tag left from the architecture's
    # default cfg, e.g. `a1_in1k` or `cub200`, would misdescribe fine-tuned weights)
    results_info = _run_dataset_info(results)
    dataset_tag = hub_config['dataset'] if hub_config else (results_info.tag if results_info else None)
    if hub_config and results_info and results_info.tag != hub_config['dataset']:
        raise ValueError(f'The run was trained on {results_info.title} but hub config {hub_config["model"]!r} is '
                         f'for {DATASETS[hub_config["dataset"]].title}.')

    saved_args = getattr(model, '_model_args', None)
    if saved_args is not None:  # config.json gets every constructor argument: a later default cannot change it
        model._model_args = run_model_args({'init_args': getattr(model, 'init_args', None), 'model_args': saved_args})
    try:
        save_for_hf(model, out_dir, model_config={'label_names': label_names} if label_names else None,
                    safe_serialization=True, data_config=data_config)
    finally:
        if saved_args is not None:
            model._model_args = saved_args

    config_path = out_dir / 'config.json'
    config = json.loads(config_path.read_text())
    if dataset_tag:
        config['pretrained_cfg']['tag'] = dataset_tag
    else:
        config['pretrained_cfg'].pop('tag', None)
    if results:
        config['training_data'] = run_training_data(results)  # timm reads config.json's own keys only
    config_path.write_text(json.dumps(config, indent=2))

    run_config = dict((results or {}).get('config') or {})
    if not run_config and hub_config:
        run_config = dict(hub_config['train'])
    card = build_model_card(
        config, repo_id=repo_id, hub_config=hub_config, results=results, base_model=_base_model(model, run_config),
        num_params=sum(p.numel() for p in model.parameters()))
    card.save(out_dir / 'README.md')
    return out_dir


def export_run(
        run_dir: Union[str, Path],
        out_dir: Union[str, Path],
        hub_config: Optional[Union[str, Path, Dict[str, Any]]] = None,
        repo_id: Optional[str] = None,
        same_dataset: bool = False,
) -> Path:
    """Rebuild a train_fgvc.py run's model from its results.json + model.safetensors and `export_model` it.

    The export carries the run's label names and preprocessing (input_size, crop_pct, mean, std, interpolation,
    test size), and its card the run's measured accuracy and recipe.
    """
    run_dir = Path(run_dir)
    results = read_run(run_dir)
    check_out_dir(Path(out_dir))  # before the model is built, as the hub config's fit to the run
    if hub_config is not None:
        hub_config = load_hub_config(hub_config)
        _check_run_fits(results, hub_config, same_dataset)
    name, kwargs = run_create_args(results)
    if ':' not in name:
        name = name.split('.')[0]  # the run's tag named its dataset, not these weights
    model = timm.create_model(name, pretrained=False, **{**kwargs, 'num_classes': results['num_classes']})
    load_weights(model, run_dir / 'model.safetensors')
    model.eval()
    label_names = results.get('label_names')
    if label_names is not None and len(label_names) != results['num_classes']:
        raise ValueError(f'{run_dir / "results.json"} has {len(label_names)} label names for '
                         f'{results["num_classes"]} classes.')
    return export_model(model, out_dir, label_names=label_names, results=results, hub_config=hub_config,
                        data_config=run_data_config(results), repo_id=repo_id, same_dataset=same_dataset)


# --- push ----------------------------------------------------------------------------------------
class HubUploadError(OSError):
    """`push` could not reach the Hub, or the Hub refused the upload."""


def push(
        folder: Union[str, Path],
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        commit_message: str = 'Upload timm-fgvc model (config.json, model.safetensors, model card)',
):
    """Upload an exported folder to `repo_id` (created if needed); returns the commit info. Needs a token."""
    validate_repo_id(repo_id)
    folder = Path(folder)
    missing = [n for n in EXPORT_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f'{folder} is not an export folder: missing {missing}. Run `timm-fgvc export` first.')
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f'{folder} holds pickle weights {pickles}; only model.safetensors is uploaded. Remove them.')
    if _is_run_folder(folder):
        raise ValueError(f'{folder} is a training run folder (results.json, checkpoints/): export it with '
                         '`timm-fgvc export --run RUN --out NEW_FOLDER` and push that folder.')
    if f'hf-hub:{repo_id}' not in (folder / 'README.md').read_text():
        warnings.warn(f'The model card in {folder} does not show loading from hf-hub:{repo_id}; re-export with '
                      f'--repo-id {repo_id} to fix its usage snippet.')
    token = token or get_token()
    if not token:
        raise ValueError('push needs a Hugging Face token with write access: set HF_TOKEN, run `hf auth login`, '
                         'or pass --token.')
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        # the export's three files only: nothing else in the folder (notes, a copied run) leaves the machine
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 allow_patterns=list(EXPORT_FILES))
    except _network_errors() as e:
        raise HubUploadError(f'Upload of {folder} to {repo_id} failed ({type(e).__name__}: {e}). Check the network '
                             '(HF_HUB_OFFLINE unset), that the token can write to this repo, and try again.') from e


def _is_run_folder(folder: Path) -> bool:
    return (folder / 'results.json').is_file() or (folder / 'checkpoints').is_dir()


def _network_errors() -> Tuple[type, ...]:
    """What huggingface_hub raises when the Hub is unreachable or says no: its own HTTP errors, and those of the
    HTTP library it is built on (httpx2, httpx or requests, by version)."""
    errors = [HfHubHTTPError, ConnectionError, TimeoutError]
    for module, name in (('httpx2', 'HTTPError'), ('httpx', 'HTTPError'), ('requests', 'RequestException')):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)
