"""Tables of the benchmark results (`bench/results/*.json`), shared by `bench/report.py` and MODEL_CARDS.md.

`bench/throughput.py` and `bench/accuracy.py` write JSON results; `render` turns them into Markdown tables in
which every figure points at the command that produced it. `bench/report.py` writes them into README.md and
bench/README.md; `timm-fgvc cards` puts the same block into MODEL_CARDS.md (and a speed line per model card),
so all three stay in sync (`--check` in CI). Paper numbers: the method's top-1 comes from `hub_configs/*.yaml`
(`paper.top1`); the paper's own baseline and hit rate, where the paper reports them, from `PAPER` below. Measured
and paper numbers are separate columns, never mixed.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .catalog import METHODS

__all__ = ['PAPER', 'RESULTS_DIR', 'load_results', 'paper_top1', 'render', 'speed_summary']

RESULTS_DIR = Path('bench') / 'results'
# What the papers report besides the method's own top-1 (which hub_configs hold): the fine-tuned backbone
# baseline of the same paper and the attention hit rate, per dataset tag, with the source.
PAPER: Dict[str, dict] = {
    's3n': {
        'backbone': 'resnet50',
        'baseline_top1': {'cub200': 86.0, 'aircraft': 89.9, 'cars': 92.6},
        'hit_rate': {'cub200': 94.63, 'aircraft': 97.22, 'cars': 98.76},
        'source': 'S3N paper, Sec. 4.3 / Table 5 (ResNet-50 baseline "FT ResNet") and Table 1 (mean hit rate of '
                  'the sparse attention in the ground-truth bounding boxes)',
    },
    'lfd': {
        'backbone': 'resnet50',
        'baseline_top1': {'cub200': 84.5},
        'source': 'LFD paper, Table 1 (ResNet-50 baseline of its ref. [18], CUB only); no hit rate reported',
    },
    'caa': {
        'backbone': 'resnet50',
        'baseline_top1': {'cub200': 84.0, 'aircraft': 87.9, 'cars': 91.2},
        'source': 'CAA paper, Tables 2-4 ("ResNet50 (single scale)" baseline); no hit rate reported',
    },
    'hsm': {
        'backbone': 'resnet152',
        'baseline_top1': {'flowers102': 95.4, 'cars': 90.7, 'cub200': 83.7},
        'source': 'HSM paper, Table 2 (ResNet-152 "Baseline-RGB" and Approach B, all training images "K"); no hit '
                  'rate reported',
    },    'ssanet': {
        'backbone': 'resnet50',
        'baseline_top1': {'cub200': 84.5},
        'source': 'SSANet paper, Table 3 (ResNet-50 baseline, CUB only); no hit rate reported',
    },
}
DATASET_TITLES = {'cub200': 'CUB', 'aircraft': 'Aircraft', 'cars': 'Cars', 'flowers102': 'Flowers'}


def load_results(pattern: str, folder: Union[str, Path], repo: Optional[Union[str, Path]] = None) -> List[dict]:
    """Every entry of the JSON files matching `pattern` in `folder`, each tagged with its file (`_file`, relative
    to `repo` when inside it). A missing folder gives no entries."""
    entries = []
    for path in sorted(Path(folder).glob(pattern)):
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f'{path}: not valid JSON ({e}); fix or delete it and re-run the benchmark.') from e
        shown = str(path)
        if repo is not None and path.resolve().is_relative_to(Path(repo).resolve()):
            shown = str(path.resolve().relative_to(Path(repo).resolve()))
        for entry in data.get('entries', []):
            entry['_file'] = shown
            entries.append(entry)
    return entries


def paper_top1(configs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """`{'s3n_resnet50': {'cub200': 88.5, ...}}` from hub configs (`paper.top1` where the paper reports one)."""
    table: Dict[str, Dict[str, float]] = {}
    for cfg in configs:
        top1 = (cfg.get('paper') or {}).get('top1')
        if top1 is not None:
            table.setdefault(cfg['model'].split('.')[0], {})[cfg['dataset']] = float(top1)
    return table


def fmt(value, digits: int = 2, suffix: str = '') -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    return f'{value:.{digits}f}{suffix}'


def signed(value, digits: int = 2) -> str:
    return '–' if value is None else f'{value:+.{digits}f}'


class Commands:
    """Numbered footnotes: every figure points at the command that produced it (and the results file)."""

    def __init__(self):
        self.items: Dict[str, List[str]] = {}
        self.explicit: Dict[str, str] = {}

    def ref(self, command: str, where: str, explicit: Optional[str] = None) -> str:
        files = self.items.setdefault(command, [])
        if where not in files:
            files.append(where)
        if explicit and explicit != command:
            self.explicit[command] = explicit
        return f'[{list(self.items).index(command) + 1}]'

    def render(self) -> str:
        lines = []
        for i, (command, files) in enumerate(self.items.items(), 1):
            line = f"{i}. `{command}` → {', '.join(files)}"
            if command in self.explicit:
                line += f"; with every budget flag explicit: `{self.explicit[command]}`"
            lines.append(line)
        return '\n'.join(lines)


def _day(entry: dict) -> str:
    return (entry.get('date') or '')[:10]


def _short_device(entry: dict) -> str:
    return entry.get('device', '?').split(' (')[0]


def _threads(entry: dict) -> str:
    if entry['device_type'] != 'cpu':
        return ''
    n = entry.get('threads')
    return f"{n} thread{'' if n == 1 else 's'}"


def throughput_table(entries: List[dict], commands: Commands) -> str:
    if not entries:
        return '_No throughput results yet: run `python bench/throughput.py`._\n'
    rows = ['| Method | Variant | px | Batch | Device | Settings | Inference img/s (method / bound) | '
            'Inference overhead | Training img/s (method / bound) | Training overhead | Peak train MiB '
            '(method / bound) | torch.export | torch.compile | Date | Cmd |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    order = lambda e: (e['method'], e['device_type'], not e.get('paper_variant'), e['variant'], e['img_size'])  # noqa
    for e in sorted(entries, key=order):
        inf, tr = e['inference'], e['training']
        settings = ', '.join(filter(None, [e['amp'] if e['amp'] != 'none' else 'fp32',
                                           'channels_last' if e['channels_last'] else '',
                                           'compiled' if e['compile'] else 'eager',
                                           'flush-denormal' if e.get('flush_denormal') else '',
                                           _threads(e)]))

        def overhead(result, target):
            mark = 'ok' if result['overhead'] <= target else '**above**'
            cpu = f"; CPU-time {result['overhead_cpu_time']:.2f}" if 'overhead_cpu_time' in result else ''
            return f"{result['overhead']:.2f} ({mark} ≤ {target}{cpu})"

        memory = e.get('memory_training') or {}
        peak = lambda k: fmt((memory.get(k) or {}).get('peak_mib'), 0)  # noqa: E731
        mem = f"{peak('method')} / {peak('bound')}"
        export = e.get('torch_export')
        export_cell = '–' if export is None else (
            'ok' if export.get('ok') else f"fails: {export.get('error', '')[:80]}")
        compiled = e.get('torch_compile')
        compile_cell = '–' if compiled is None else (
            f"ok, allclose {compiled['matches_eager']['allclose']}" if compiled.get('ok')
            else f"fails: {compiled.get('error', '')[:80]}")
        rows.append(
            f"| {e['method_name']} | `{e['variant']}` | {e['img_size']} | {e['batch_size']} | {_short_device(e)} | "
            f"{settings} | {inf['method']['images_per_s']:.2f} / {inf['bound']['images_per_s']:.2f} | "
            f"{overhead(inf, inf['target'])} | "
            f"{tr['method']['images_per_s']:.2f} / {tr['bound']['images_per_s']:.2f} | "
            f"{overhead(tr, tr['target'])} | {mem} | {export_cell} | {compile_cell} | {_day(e)} | "
            f"{commands.ref(e['command'], e['_file'])} |")
    bounds = {}
    for e in sorted(entries, key=lambda e: e.get('date') or ''):  # the newest entry's definition of each bound
        bounds[e['method_name']] = e['bound']['definition']
    notes = '\n'.join(f'- {m}: {d}.' for m, d in sorted(bounds.items()))
    devices = sorted({e['device'] for e in entries})
    return '\n'.join(rows) + (
        '\n\nOverhead = method time / backbone-bound time (median of the timed iterations, method and bound '
        'interleaved; on CPU also the ratio of process CPU times). Training = `forward_train` + loss + backward + '
        'SGD step. Peak memory: `torch.cuda.max_memory_allocated` on CUDA; on CPU approximate (live tensor bytes, '
        'weights and optimizer state included). ' +
        ('CPU rows come from a small machine shared with other jobs: the ratios hold (method and bound ran '
         'interleaved), absolute images/s vary several-fold with the load. On that machine fresh memory is dear: '
         "glibc maps every tensor over 32 MB anew, and a step that allocates gigabytes pays the page faults "
         '(`ssanet_resnet50` at 448 px, batch 2, one thread: training steps of 41-46 s; with '
         '`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`, which keep freed memory in the heap, 45, 32 '
         'and 22 s as the heap grows to its peak; a resnet18 '
         'step at 128 px, batch 32, is unchanged), so a method that needs more memory than its bound pays more '
         'than its extra arithmetic: with those settings `ssanet_resnet50` measures 1.07 / 1.02 (inference / '
         'training) against the 1.04 / 1.39 of its row, at 0.32 / 0.11 img/s instead of 0.23 / 0.04. '
         if any(e['device_type'] == 'cpu' for e in entries) else '') +
        'Backbone bound per method:\n' + notes +
        '\n\nDevices: ' + '; '.join(devices) + '.\n')


def accuracy_tables(entries: List[dict], commands: Commands, paper: Dict[str, Dict[str, float]],
                    include_quick: bool = False) -> str:
    entries = [e for e in entries if include_quick or not e.get('quick')]
    if not entries:
        return '_No accuracy results yet: run `python bench/accuracy.py`._\n'
    # the newest result of every (suite, backbone, method variant); an entry may hold several methods
    latest: Dict[tuple, dict] = {}
    for e in sorted(entries, key=lambda e: e.get('date', '')):
        for row in e['summary']:
            if row['role'] == 'method':
                latest[(_suite_label(e), e['backbone'], row['model'])] = e
    rows = ['| Suite | Method | Backbone | Top-1 method | Top-1 baseline | Gain | Beats baseline | '
            'Hit rate part / object (chance) | Paper (method / baseline / gain / hit rate) | Wall | Date, device '
            '| Cmd |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|']
    parts, described = [], []
    for (suite, backbone, model), e in sorted(latest.items(), key=lambda kv: (kv[0][0] != 'synthetic', kv[0])):
        summary = {row['model']: row for row in e['summary']}
        base, row = summary[e['baseline']], summary[model]
        ref = commands.ref(e['command'], e['_file'], e.get('reproduce'))
        method = model.split('_')[0]
        gain = row.get('gain_top1', {})
        seeds = f" ± {gain['std']:.2f} ({gain['n']} seeds)" if gain.get('n', 0) > 1 else ''
        hr = row.get('hit_rate') or {}
        base_hr = base.get('hit_rate') or {}
        hit = '–' if not hr else (
            f"{fmt(hr.get('part_hit_rate'), 1)} / {fmt(hr.get('object_hit_rate'), 1)} "
            f"({fmt(hr.get('chance_part_hit_rate'), 1)} / {fmt(hr.get('chance_object_hit_rate'), 1)}); "
            f"baseline CAM {fmt(base_hr.get('part_hit_rate'), 1)} / {fmt(base_hr.get('object_hit_rate'), 1)}"
            # the rates average the images that have peaks: say how many lack them (their chance counts all)
            + (f"; {hr['images_without_peaks']:g} of {hr['images']:g} images without peaks"
               if 0 < (hr.get('images_without_peaks') or 0) < (hr.get('images') or 0) else ''))
        rows.append(
            f"| {suite} | {METHODS.get(method, method)} | {backbone} | {fmt(row['top1']['mean'])} | "
            f"{fmt(base['top1']['mean'])} | {signed(gain.get('mean'))}{seeds} | "
            f"{'yes' if row.get('beats_baseline') else '**no**'} | {hit} | {paper_cell(method, paper)} | "
            f"{(row['wall_seconds'] + base['wall_seconds']) / 60:.0f} min | {_day(e)}, {_short_device(e)} | "
            f"{ref} |")
        if any(e is d for d in described):
            continue
        described.append(e)
        parts.append(f"- {suite} ({ref}): {e['data']}; budget for both: {budget_text(e['budget'])}; "
                     f"seeds {e['seeds']}; torch threads {e.get('threads', '?')}"
                     + (f"; note: {e['note']}" if e.get('note') else ''))
    tried = [e for e in entries if not any(e is d for d in described)]
    text = '\n'.join(rows) + '\n\n' + '\n'.join(parts) + '\n'
    if tried:
        text += '\nAlso tried (earlier budgets):\n' + '\n'.join(
            f"- {_suite_label(e)}, {_day(e)}: {budget_text(e['budget'])} -> "
            + ', '.join(f"{r['model']} {fmt(r['top1']['mean'])}" for r in e['summary'])
            + f" ({commands.ref(e['command'], e['_file'], e.get('reproduce'))})"
            + (f"; note: {e['note']}" if e.get('note') else '') for e in tried) + '\n'
    sources = [f"- {METHODS.get(m, m)}: {p['source']}." for m, p in PAPER.items()]
    text += ('\nHit rate: share of attention peaks (S3N), region centres (LFD, SSANet) or attention-map maxima (CAA '
             'per scale, HSM saliency; "–" when every map is flat) inside the ground-truth part boxes (or object '
             'box), per image, averaged over the test images (S3N Table 1); chance = a point at a random cell of the '
             'backbone\'s feature grid; the baseline\'s point is the argmax of its top-1 class activation map. '
             'The paper\'s hit rate uses CUB\'s object boxes and ImageNet-pretrained ResNet-50 at 448 px: compare it '
             'with the object column only loosely. Paper numbers:\n' + '\n'.join(sources) +
             '\n- Paper top-1: `hub_configs/*.yaml` (`paper.top1`).\n')
    return text


def _suite_label(entry: dict) -> str:
    """The suite, with the few-shot k when the run used one (HSM's protocol: one row per k)."""
    shots = (entry.get('budget') or {}).get('shots')
    return f"{entry['suite']}, {shots}-shot" if shots else entry['suite']


def paper_cell(method: str, paper: Dict[str, Dict[str, float]]) -> str:
    info = PAPER.get(method, {})
    variant = f"{method}_{info.get('backbone', '')}"
    tops = paper.get(variant) or next((v for k, v in paper.items() if k.startswith(method + '_')), {})
    cells = []
    for tag, top1 in sorted(tops.items()):
        base = info.get('baseline_top1', {}).get(tag)
        hit = info.get('hit_rate', {}).get(tag)
        cell = f"{DATASET_TITLES.get(tag, tag)} {top1:g}"
        if base is not None:
            cell += f" / {base:g} / {top1 - base:+.1f}"
        if hit is not None:
            cell += f" / {hit:g}"
        cells.append(cell)
    return '; '.join(cells) + (f" ({info.get('backbone', '')})" if info.get('backbone') else '') if cells else '–'


def budget_text(budget: dict) -> str:
    keys = ('img_size', 'crop_pct', 'epochs', 'max_steps', 'batch_size', 'optimizer', 'lr', 'backbone_lr',
            'weight_decay', 'scheduler', 'warmup_epochs', 'mixed_precision', 'shots')
    return ' '.join(f'{k}={budget[k]}' for k in keys if budget.get(k) is not None)


HOW_TO_RUN = """\
## How to run

All three scripts run from the repository root on CPU or GPU and need nothing from the network.

- `python bench/throughput.py` — images/s and peak memory of every registered method variant (the paper's
  backbone at the paper's resolution and the resnet18 variant at 224) against its **backbone bound** (the plain
  backbone passes the method cannot avoid), inference and training; `overhead = method time / bound time`
  (targets: inference ≤ 1.15, training ≤ 1.25); `torch.export` check of the eval forward. Options:
  `--methods s3n`, `--variants paper|small|all|<name>`, `--img-size`, `--batch-size`, `--warmup`, `--iters`,
  `--device cuda --amp bf16 --channels-last --compile` (compiled eval forward checked against eager),
  `--profile` (torch.profiler tables sorted by self time), `--quick` (CPU smoke run, 2 images).
  Writes `bench/results/throughput_<device>.json`.
- `python bench/accuracy.py --suites transfer` — **the accuracy protocol** (SPEC §8): CUB classes 1-50 (1,500
  train / 1,389 test) at 128 px, resnet18 at output stride 16, the baseline and every backbone of a method
  initialised from `../shared/data/resnet18_cub150.safetensors` (a resnet18 trained on classes 51-200). The
  baseline recipe (defaults, the sweep's best: SGD, lr 0.04 new / 0.02 backbone, cosine, 12 epochs, batch 32,
  wd 1e-4, bf16 autocast: ~3x faster than fp32 on a CPU with AMX, same accuracy) is given by the budget flags
  (`--optimizer --lr --backbone-lr --epochs --label-smoothing --mixed-precision`); a method gets the same recipe
  with its paper's new-layer / backbone lr ratio and stage proportions (from its paper hub config). HSM's step 1
  runs on the source classes (51-200) with the source model and its classifier frozen, as the paper's runs on
  ImageNet (`--source-step-epochs`, default 3, another length with `--label`; `--no-source-step --label ...`: on
  the target). `--methods` (none:
  the baseline alone), `--seeds 0 1 2`,
  `--skip-baseline` (methods only: gains against the stored baseline runs of the same recipe), `--model-args
  '{...}' --label NAME` (an ablation row), `--stage-epochs E E E --label NAME` (each stage's epochs instead of
  the paper's proportions of the recipe's; the compute column counts the extra epochs), `--threads 1`, `--shots
  k` (HSM's few-shot protocol: k training images per class drawn per seed, each k against its own baseline;
  HSM's step 1 is run once per seed and reused),
  `--resume` (a killed sweep: each run continues from the newest complete checkpoint in its folder). Each finished
  run is added at once to `bench/results/accuracy_transfer.json`, so parallel processes and interrupted sweeps add
  up. It trains on CUDA where there is one (`--cpu` forces the CPU); a GPU run's recipe id ends in ` cuda`, so it is
  never pooled with CPU runs, and runs of one recipe at several `--epochs` are tabled side by side, each against the
  baseline trained as long. `python bench/sweep.py jobs.txt --slots 8 --common '--suites transfer'` runs a list of
  such jobs (one `bench/accuracy.py` argument list a line) several at a time: one GPU holds many of these small runs.
  `python bench/hsm_source_step.py --workdir W --settings '[[bias, lr, steps], ...]'` probes HSM's step 1 (live
  saliency cells and source top-1 per setting); `python bench/probes.py lfd|caa|caa-where|where RUN --dataset DIR`
  probes a trained run (heads under trained / random / fixed attention, attention off, where CAA's masks fall,
  where any model's attention falls; `--init`, `--checkpoint`); `python bench/probes.py ensemble RUN RUN ...
  --dataset DIR`: the top-1 of several runs' averaged probabilities (e.g. baselines of different seeds).
  `python bench/caa_multiscale_baseline.py --caa-run RUN --seed S --workdir W` trains the CAA paper's multi-scale
  baseline on a trained CAA run's zoomed views (a max-pooled resnet18 per scale, the protocol's recipe each,
  probabilities averaged) and adds it as a 'reference' row: a control with a gain and no gate; `--views centre`:
  the same on fixed central crops as large as CAA's mean box at each scale (CAA's attention off).
- `python bench/accuracy.py` — trains each method and the plain timm backbone with an identical budget through
  the same engine (`timm_fgvc.engine.trainer.train`) and reports top-1, gain over the baseline and, on the
  synthetic set, the attention hit rate. `--suites synthetic cub`, `--epochs`, `--batch-size`, `--lr`,
  `--img-size`, `--synthetic-classes`, `--synthetic-train-per-class`, `--cub-classes 50 --cub-img-size 128`,
  `--seeds 0 1 2`, `--quick` (smoke run, a few steps). Staged methods split the epochs equally over their
  stages (`--stage-epochs` of the engine), so both sides run the same number of steps. Writes
  `bench/results/accuracy_<suite>.json`.
- `python bench/report.py` — renders this file, the README block and the benchmark section of MODEL_CARDS.md
  from `bench/results/*.json` (`--check`: exit 1 when one is stale; the test suite runs it).

Every number in the tables below links to the command that produced it (the Cmd column).
"""


# --- transfer protocol (SPEC §8) -------------------------------------------------------------------
# the gate each method must clear against the baseline's mean at equal epochs (issue: papers report +2.5 to +4)
TRANSFER_GATES = {'s3n': 3.0, 'lfd': 3.0, 'caa': 3.0, 'ssanet': 3.0, 'hsm': 1.5}


def load_transfer(folder: Union[str, Path], repo: Optional[Union[str, Path]] = None) -> Optional[dict]:
    """`accuracy_transfer.json` (a list of runs, written one by one by `bench/accuracy.py --suites transfer`)."""
    path = Path(folder) / 'accuracy_transfer.json'
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data['_file'] = str(path.resolve().relative_to(Path(repo).resolve())) if repo is not None and \
        path.resolve().is_relative_to(Path(repo).resolve()) else str(path)
    return data


def transfer_summary(data: dict) -> Dict[str, Any]:
    """Per row label (a method variant or an ablation) of the protocol's recipe (`data['recipe']`; older files: the
    recipe with the most runs): top-1 over seeds, gain over the baseline mean, per-head top-1, compute ratio, wall
    time, the command."""
    runs = data.get('runs', [])
    counts: Dict[str, Tuple[int, int]] = {}  # recipe -> (method runs, baseline runs): the methods' recipe wins
    for r in runs:
        if _few_shot_base(r):  # a few-shot run is never the protocol's recipe
            continue
        methods, baselines = counts.get(r['recipe_id'], (0, 0))
        counts[r['recipe_id']] = (methods + (r['role'] != 'baseline'), baselines + (r['role'] == 'baseline'))
    recipe = data.get('recipe') if data.get('recipe') in counts else (  # the protocol's recipe, else the most run
        max(sorted(counts), key=counts.get) if counts else None)
    rows: Dict[str, dict] = {}
    for r in runs:
        if r['recipe_id'] == recipe:
            rows.setdefault(r['label'], {'label': r['label'], 'model': r['model'], 'role': r['role'],
                                         'runs': []})['runs'].append(r)
    base = next((row for row in rows.values() if row['role'] == 'baseline'), None)
    base_top1 = [r['top1'] for r in base['runs']] if base else []
    base_mean = statistics.fmean(base_top1) if base_top1 else None
    for row in rows.values():
        # a row measured off the protocol (e.g. at another input size) names the row it is compared with
        yardstick = row['runs'][-1].get('yardstick')
        if yardstick is not None and yardstick not in rows:
            raise ValueError(f"{row['label']!r} is compared with {yardstick!r}, which has no runs of the recipe "
                             f"{recipe!r}: record that row's runs, or drop 'yardstick' from this row's runs.")
        against = rows[yardstick] if yardstick is not None else base
        walls = [r['wall_seconds'] for r in row['runs'] if not r.get('resumed')]  # a resumed run's is only its end
        step_walls = [r['source_step']['wall_seconds'] for r in row['runs']  # HSM's step 1 on the source classes
                      if (r.get('source_step') or {}).get('wall_seconds') is not None]
        heads: Dict[str, List[float]] = {}
        for r in row['runs']:
            for k, v in r['per_head_top1'].items():
                heads.setdefault(k, []).append(v)
        row.update(
            **seed_stats(row['runs'], against['runs'] if against and row['role'] != 'baseline' else []),
            yardstick=yardstick,
            heads={k: statistics.fmean(v) for k, v in heads.items()},
            compute=row['runs'][-1].get('compute_ratio'),
            wall=statistics.fmean(walls) if walls else None, command=row['runs'][-1]['command'],
            step1_wall=statistics.fmean(step_walls) if step_walls else None,
            lr=row['runs'][-1].get('lr'), stage_epochs=row['runs'][-1].get('stage_epochs'),
            epochs_ratio=row['runs'][-1].get('epochs_ratio', 1.0),
            model_args=row['runs'][-1].get('model_args') or {}, date=max(r.get('date', '') for r in row['runs']))
    others = sorted({r['recipe_id'] for r in runs if not _few_shot_base(r)} - {recipe})
    return {'recipe': recipe, 'baseline_mean': base_mean, 'rows': rows, 'other_recipes': others}


# one value per row (a dotted name reads inside a field): the runner's settings, its source weights and test set
ROW_SETTINGS = {'model_args': {}, 'lr': None, 'stage_epochs': None, 'epochs_ratio': 1.0, 'source_step.lr': None,
                'source_step.epochs': None, 'source_weights.sha256': None, 'eval_samples': None}


def _setting(run: dict, field: str, default):
    value = run
    for part in field.split('.'):
        value = value.get(part) if isinstance(value, dict) else None
    return default if value is None else value


def _check_pooled_runs(runs: List[dict]) -> None:
    """Every table cell pools runs by label (and recipe, k or epochs): they must be one setting at distinct seeds.
    Two runs of one seed would count that seed twice (in the mean, the pairing and the 3-seed rule); runs that
    differ in a setting would be reported as one. A reference row may vary its model arguments by seed (e.g. a crop
    measured per seed)."""
    label, role = runs[0]['label'], runs[0]['role']
    seeds = [r['seed'] for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"Row {label!r} holds more than one run of seed(s) {repeated} under recipe "
                         f"{runs[0]['recipe_id']!r}: give the runs of another setting their own --label, or "
                         'remove the stale run from the results file.')
    for field, default in ROW_SETTINGS.items():
        if field == 'model_args' and role == 'reference':
            continue
        settings = [_setting(r, field, default) for r in runs]  # None: unrecorded by an older run, not compared
        values = {json.dumps(v, sort_keys=True) for v in settings if v is not None}
        if len(values) > 1:
            raise ValueError(f"Row {label!r} pools runs with different {field} ({', '.join(sorted(values))}): "
                             'give each setting its own --label.')


def seed_stats(runs: List[dict], baseline_runs: List[dict]) -> Dict[str, Any]:
    """Top-1 over the seeds of `runs`: mean, std (None for one seed), seeds, the gain over the mean of
    `baseline_runs` (None without them), the gain paired by seed (`paired_gain`), and HSM's live saliency cells
    per run (None for other methods). Refuses runs that are not one setting at distinct seeds (`_check_pooled_runs`)."""
    _check_pooled_runs(runs)
    top1 = [r['top1'] for r in runs]
    base = [r['top1'] for r in baseline_runs]
    return {'mean': statistics.fmean(top1), 'std': statistics.stdev(top1) if len(top1) > 1 else None,
            'seeds': sorted(r['seed'] for r in runs),
            'gain': statistics.fmean(top1) - statistics.fmean(base) if base else None,
            'paired': paired_gain(runs, baseline_runs),
            'saliency': [r['saliency']['active_cells'] for r in runs if r.get('saliency')] or None}


def paired_gain(runs: List[dict], baseline_runs: List[dict]) -> Optional[Dict[str, Any]]:
    """The gain paired by seed: a model and its baseline of one seed share the data order and the heads'
    initialisation, so the per-seed difference leaves out most of the seed noise. Mean difference over the seeds
    both have, its standard error (None under two seeds) and their count; None without a common seed."""
    base = {r['seed']: r['top1'] for r in baseline_runs}
    diffs = [r['top1'] - base[r['seed']] for r in runs if r['seed'] in base]
    if not diffs:
        return None
    return {'gain': statistics.fmean(diffs), 'n': len(diffs),
            'se': statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None}


def yardstick_text(row: Dict[str, Any]) -> str:
    """' vs resnet18 at 192 px' for a row compared with another row than the baseline (its label up to the first
    comma), else ''."""
    return f" vs {row['yardstick'].split(',')[0]}" if row.get('yardstick') else ''


def paired_text(stats: Dict[str, Any]) -> str:
    """' (paired by seed: +0.88 ± 0.18 SE, 5 seeds)'; ' (paired with its seed's baseline: -0.22)' for one seed
    (against the mean alone a seed whose baseline is strong or weak looks better or worse than it is)."""
    paired = stats.get('paired')
    if not paired:
        return ''
    if paired['se'] is None:
        return f" (paired with its seed's baseline: {signed(paired['gain'])})"
    return f" (paired by seed: {signed(paired['gain'])} ± {paired['se']:.2f} SE, {paired['n']} seeds)"


def seed_cell(stats: Optional[Dict[str, Any]], baseline: bool = False, spread: bool = True,
              paired: bool = False) -> str:
    """A table cell of `seed_stats`: 'mean ± std (gain, seeds)' ('–' for a gain without a baseline to take it
    against; with `paired`, 'gain, paired SE x' where two or more seeds pair), a baseline's without the gain; '–'
    when not measured."""
    if stats is None:
        return '–'
    text = f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if spread and stats['std'] is not None else '')
    if baseline:
        return text + f" ({len(stats['seeds'])})"
    pair = stats.get('paired') if paired else None
    se = f", paired SE {pair['se']:.2f}" if pair and pair['se'] is not None else ''
    return text + f" ({signed(stats['gain'])}{se}, {len(stats['seeds'])})"


def _few_shot_base(run: dict) -> Optional[Tuple[str, int]]:
    """(base recipe id, k) of a few-shot run (`--shots k`: its recipe id is the base's with ' k<k>', before the
    device of an accelerator run, e.g. '... bf16 k5 cuda' -> '... bf16 cuda'), else None."""
    k = (run.get('recipe') or {}).get('shots')
    if not k:
        return None
    words = run['recipe_id'].split(' ')
    if f'k{k}' not in words:
        return None
    words.remove(f'k{k}')
    return ' '.join(words), k


def few_shot_summaries(data: dict) -> List[Dict[str, Any]]:
    """HSM's evaluation protocol (the paper's Tables 1-2, SPEC §6) under the transfer protocol: k training images
    per class (`--shots k`, drawn per seed), each k with its own baseline of the same recipe; the full training set
    (the base recipe's runs without --shots) is k = 'all'. One summary per base recipe (the protocol's first): per
    row label, mean top-1 and gain per k, and the mean of its gains over the k measured for it and the baseline (the
    paper's AVG column)."""
    protocol = transfer_summary(data)['recipe']
    few = [(r, *base) for r in data.get('runs', []) if (base := _few_shot_base(r))]
    bases = sorted({base for _, base, _ in few}, key=lambda b: (b != protocol, b))
    return [_few_shot_summary(data, base, [(r, k) for r, b, k in few if b == base]) for base in bases]


def _few_shot_summary(data: dict, recipe: str, few: List[Tuple[dict, int]]) -> Dict[str, Any]:
    cells: Dict[Tuple[str, Any], List[dict]] = {}
    labels: Dict[str, dict] = {}
    for r, k in few:
        cells.setdefault((r['label'], k), []).append(r)
        labels.setdefault(r['label'], {'label': r['label'], 'model': r['model'], 'role': r['role']})
    for r in data.get('runs', []):
        if r['recipe_id'] == recipe and not _few_shot_base(r) and r['label'] in labels:
            cells.setdefault((r['label'], 'all'), []).append(r)
    shots = sorted({k for _, k in cells if k != 'all'}) + (['all'] if any(k == 'all' for _, k in cells) else [])
    base_label = next((lab for lab, row in labels.items() if row['role'] == 'baseline'), None)
    for row in labels.values():
        row['per_k'] = {}
        for k in shots:
            runs = cells.get((row['label'], k), [])
            if not runs:
                continue
            base = cells.get((base_label, k), []) if base_label and row['role'] != 'baseline' else []
            row['per_k'][k] = seed_stats(runs, base)
        gains = [c['gain'] for c in row['per_k'].values() if c['gain'] is not None]
        live = [a for c in row['per_k'].values() for a in c['saliency'] or ()]
        own = [r for r, _ in few if r['label'] == row['label']]
        row.update(gain=statistics.fmean(gains) if gains else None, saliency=live or None,
                   model_args=own[-1].get('model_args') or {}, seeds=sorted({r['seed'] for r in own}),
                   date=max(r.get('date', '') for r in own), command=own[-1]['command'],
                   gain_shots=[k for k, c in row['per_k'].items() if c['gain'] is not None])
    return {'recipe': recipe, 'epochs': few[0][0]['recipe'].get('epochs'), 'shots': shots, 'rows': labels}


def _schedule_family(run: dict) -> Optional[Tuple[str, int]]:
    """(recipe id with its epochs as `e*`, epochs) of a run at the recipe's own epochs, else None (a few-shot run, a
    --stage-epochs ablation, which is not at equal epochs, or a run off the protocol, e.g. at another input size, whose
    gain is taken against its own control, not the baseline)."""
    match = re.search(r' e(\d+) ', run['recipe_id'])
    if not match or _few_shot_base(run) or run.get('epochs_ratio', 1.0) != 1.0 or run.get('yardstick') is not None:
        return None
    return run['recipe_id'][:match.start()] + ' e* ' + run['recipe_id'][match.end():], int(match.group(1))


def schedule_summaries(data: dict) -> List[Dict[str, Any]]:
    """Equal epochs at several schedule lengths: runs of one recipe that differ only in epochs (`--epochs`), each
    model against the baseline trained the same epochs. One summary per such recipe family in which a method has a
    gain (a baseline of the same epochs) at two or more lengths: per row label and epochs, mean top-1, std, seeds,
    gain and HSM's live saliency cells per run; `runs`: the runs the summary shows."""
    families: Dict[str, Dict[Tuple[str, int], List[dict]]] = {}
    for r in data.get('runs', []):
        if (key := _schedule_family(r)) is not None:
            families.setdefault(key[0], {}).setdefault((r['label'], key[1]), []).append(r)
    summaries = []
    for family, cells in sorted(families.items()):
        rows: Dict[str, dict] = {}
        for (label, _), runs in cells.items():
            rows.setdefault(label, {'label': label, 'model': runs[0]['model'], 'role': runs[0]['role'],
                                    'per_epochs': {}, 'command': runs[-1]['command']})
        base = next((label for label, row in rows.items() if row['role'] == 'baseline'), None)
        epochs = sorted({e for _, e in cells})
        for label, row in rows.items():
            for e in epochs:
                if (label, e) in cells:
                    row['per_epochs'][e] = seed_stats(cells[(label, e)], cells.get((base, e), [])
                                                      if base and row['role'] != 'baseline' else [])
        if any(sum(c['gain'] is not None for c in row['per_epochs'].values()) >= 2 for row in rows.values()):
            summaries.append({'recipe': family, 'epochs': epochs, 'rows': rows,
                              'runs': [r for runs in cells.values() for r in runs]})
    return summaries


def schedule_table(data: dict, commands: 'Commands', schedules: List[Dict[str, Any]]) -> str:
    """The tables of `schedule_summaries(data)`: a cell per model and epochs, the gate judged at each length."""
    text = ''
    for sch in schedules:
        lines = ['| Model | ' + ' | '.join(f"{e} epochs" for e in sch['epochs']) + ' | Gate | Cmd |',
                 '|---' * (len(sch['epochs']) + 3) + '|']
        for row in sorted(sch['rows'].values(), key=lambda r: (r['role'] != 'baseline', r['label'])):
            cells = [seed_cell(row['per_epochs'].get(e), row['role'] == 'baseline', paired=True) for e in sch['epochs']]
            gate = TRANSFER_GATES.get(row['model'].split('_')[0])
            judged = {e: c for e, c in row['per_epochs'].items() if c['gain'] is not None}
            if row['role'] == 'baseline':
                verdict = 'yardstick'
            elif gate is None or not judged:
                verdict = '–'
            else:
                verdict = f'+{gate:g}: ' + '; '.join(f'{e} epochs {gate_verdict(c, gate)}' for e, c in judged.items())
            lines.append(f"| {row['label']} | " + ' | '.join(cells) + f" | {verdict} | "
                         f"{commands.ref(row['command'], data['_file'])} |")
        text += (f"\nEqual epochs at several schedule lengths, recipe `{sch['recipe']}` (`--epochs`; a staged method "
                 "splits each length in its paper's proportions): every model against the baseline trained the same "
                 "epochs. Cells: top-1 ± std (gain vs that baseline's mean, the standard error of the gain paired by "
                 "seed, seeds).\n\n" + '\n'.join(lines) + '\n')
    return text


DEAD_SALIENCY_SHARE = 0.01  # live saliency cells below which HSM's branch counts as dead


GATE_MARGIN_SEEDS = (1.0, 3)  # within 1 pt of its gate a method needs 3 seeds (the transfer issue's rule)


def seed_count(n: int) -> str:
    return f"{n} seed{'s' if n > 1 else ''}"


def gate_verdict(row: dict, gate: Optional[float], bold: bool = False) -> str:
    """'passes' / 'below' the gate; a gain of a method whose own part is dead (HSM's saliency map zero in at least
    99% of its cells in every run: the model is its backbone with another head schedule) is not credited to it.
    A gain within 1 pt of the gate on fewer than 3 seeds says that more seeds are needed; so does a gain paired by
    seed that is not at least 1 pt on the same side of the gate (a lucky seed lifts the model and its baseline alike:
    the gain over the baseline mean can sit far from the gate while the paired one does not). A row measured off the
    protocol (one with a 'yardstick', e.g. another input size) is never gated: the gate is the protocol's. From 3
    seeds, a paired gain on the other side of the gate than the mean's is named, and such a pass is never bold."""
    if row.get('yardstick') is not None:
        return 'off the protocol, no gate'
    if row['gain'] is None or gate is None:
        return '–'
    if row.get('saliency') is not None and max(row['saliency']) < DEAD_SALIENCY_SHARE:
        return f'not credited (saliency map dead: < {DEAD_SALIENCY_SHARE:.0%} of cells live)'
    margin, needed = GATE_MARGIN_SEEDS
    seeds = len(row.get('seeds') or ())
    paired = row.get('paired')
    gains = [row['gain']] + ([paired['gain']] if paired else [])  # few-shot means over k have no pairing
    clear = all(g >= gate + margin for g in gains) or all(g <= gate - margin for g in gains)  # 1 pt on one side
    unsettled = f" on {seed_count(seeds)} ({needed} needed within {margin:g} pt of the gate)" \
        if seeds and seeds < needed and not clear else ''
    # with enough seeds, a paired gain on the other side of the gate is said, and a pass is not made bold
    disputed = (f" against the mean, {'below' if paired['gain'] < gate else 'passes'} paired ({paired['gain']:+.2f})"
                if paired and not unsettled and (paired['gain'] < gate) != (row['gain'] < gate) else '')
    if row['gain'] < gate:
        return 'below' + unsettled + disputed
    longer = row.get('epochs_ratio', 1.0) > 1  # a --stage-epochs ablation: not at equal epochs
    return ('passes' if longer or not bold or unsettled or disputed else '**passes**') + (
        f" with {row['epochs_ratio']:g}x the baseline's epochs" if longer else '') + unsettled + disputed


def transfer_table(data: Optional[dict], commands: 'Commands') -> str:
    if not data or not data.get('runs'):
        return ('_No transfer-protocol results yet: run `python bench/accuracy.py --suites transfer` '
                '(SPEC §8)._\n')
    s = transfer_summary(data)
    lines = ['| Model | Top-1 (seeds) | Gain vs baseline mean | Gate | Compute (backbone px / baseline) | '
             'Per-head top-1 | New-layer lr, stage epochs | Wall / run | Cmd |',
             '|---|---|---|---|---|---|---|---|---|']
    order = sorted(s['rows'].values(), key=lambda r: (r['role'] != 'baseline', r['role'] != 'reference', r['label']))
    for row in order:
        method = row['model'].split('_')[0]
        gate = TRANSFER_GATES.get(method)
        top1 = f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row['std'] is not None else '') + \
            f" ({', '.join(map(str, row['seeds']))})"
        if row['role'] == 'baseline':
            verdict = 'yardstick'
        elif row['role'] == 'reference':  # a control for the methods (e.g. CAA's paper's multi-scale baseline)
            verdict = 'reference, no gate'
        elif row['yardstick'] is not None:
            verdict = gate_verdict(row, gate)
        elif gate is None or row['gain'] is None:
            verdict = '–'
        else:
            verdict = f"+{gate:g}: " + gate_verdict(row, gate, bold=True)
        heads = ', '.join(f'{k} {v:.1f}' for k, v in row['heads'].items() if k != 'main')
        if row['saliency'] is not None:
            heads += ('; ' if heads else '') + 'saliency cells live ' + '/'.join(f'{a:.0%}' for a in row['saliency'])
        heads = heads or '–'
        stages = '/'.join(f'{e:.1f}' for e in row['stage_epochs']) if row['stage_epochs'] else 'one stage'
        wall = (f"{row['wall'] / 60:.0f} min" if row['wall'] is not None else '– (resumed runs only)') + (
            f" + {row['step1_wall'] / 60:.0f} min step 1" if row.get('step1_wall') is not None else '')
        lines.append(
            f"| {row['label']} | {top1} | {signed(row['gain'])}{yardstick_text(row)}{paired_text(row)} | {verdict} | "
            f"{fmt(row['compute'])} | {heads} | {row['lr']:g}, {stages} | {wall} | "
            f"{commands.ref(row['command'], data['_file'])} |")
    text = (f"Recipe for every row: `{s['recipe']}`; target CUB classes 1-50 (1,500 train / 1,389 test), "
            f"{data['protocol']['img_size']} px, resnet18 at output stride {data['protocol']['output_stride']}, "
            f"all backbones from `{data['protocol']['source']}` (trained on CUB classes 51-200). A method gets "
            "its paper's new-layer / backbone lr ratio and stage proportions of the same epochs. Rows with the gate "
            "'reference, no gate' are controls: plain models that tell what a method's extra compute or views would "
            "give without the method. Rows 'off the protocol' change a protocol setting (e.g. the input size) and "
            "take their gain against the control named in their gain cell. Compute: backbone pixels through "
            "training against the baseline's (HSM's counts its step 1 on the source classes).\n\n")
    if data.get('summary'):  # the verdict in a paragraph, read before the tables and the notes that back it
        text = f"{data['summary']}\n\n" + text
    text += '\n'.join(lines) + '\n'
    schedules = schedule_summaries(data)
    tabled = {id(r) for sch in schedules for r in sch['runs']}  # shown in a schedule table
    others = {rid: [r for r in data['runs'] if r['recipe_id'] == rid and id(r) not in tabled]
              for rid in s['other_recipes']}
    if any(others.values()):
        text += ('\nOther recipes (the baseline sweep, and runs under an earlier recipe):\n\n'
                 '| Recipe | Runs (top-1, seed) |\n|---|---|\n' + '\n'.join(
                     f"| `{rid}` | " + ', '.join(f"{r['label']} {r['top1']:.2f} (s{r['seed']})" for r in runs) + ' |'
                     for rid, runs in others.items() if runs) + '\n')
    text += schedule_table(data, commands, schedules)
    text += few_shot_table(data, commands)
    notes = data.get('notes') or {}
    if notes:
        text += '\n' + '\n'.join(f'- {k}: {v}' for k, v in notes.items()) + '\n'
    return text


def few_shot_table(data: dict, commands: 'Commands') -> str:
    """The few-shot protocol's tables (HSM's: `few_shot_summaries`), one per base recipe; empty when no few-shot run
    exists."""
    text = ''
    for fs in few_shot_summaries(data):
        head = ['k = all' if k == 'all' else f'k = {k}' for k in fs['shots']]
        lines = ['| Model | ' + ' | '.join(head) + ' | Mean gain over k | Gate | Cmd |',
                 '|---' * (len(head) + 4) + '|']
        for row in sorted(fs['rows'].values(), key=lambda r: (r['role'] != 'baseline', r['label'])):
            baseline = row['role'] == 'baseline'
            cells = [seed_cell(row['per_k'].get(k), baseline, spread=baseline) for k in fs['shots']]
            if row['role'] == 'baseline':
                mean_gain, verdict = '–', 'yardstick'
            else:
                gate = TRANSFER_GATES.get(row['model'].split('_')[0])
                mean_gain = f"{signed(row['gain'])} (k = {', '.join(map(str, row['gain_shots']))})"
                verdict = '–' if gate is None else f'+{gate:g}: ' + gate_verdict(row, gate, bold=True)
            lines.append(f"| {row['label']} | " + ' | '.join(cells) + f" | {mean_gain} | {verdict} | "
                         f"{commands.ref(row['command'], data['_file'])} |")
        text += (f"\nFew-shot protocol (HSM's, the paper's Tables 1-2), recipe `{fs['recipe']}` on k training images "
                 'per class drawn per seed (`--shots k`), each k against the baseline of the same recipe and k'
                 + ('; k = all: the full training set (30 images per class)' if 'all' in
                    fs['shots'] else '')
                 + '. Cells: top-1 (gain vs that baseline, seeds); the baseline: mean ± std (seeds). The gate applies '
                 "to the mean gain over k (the paper's AVG column; Birds, ResNet-152: +1.6).\n\n"
                 + '\n'.join(lines) + '\n')
    return text


def headline_row(rows, model: str) -> Optional[dict]:
    """The row that speaks for `model` in the README and the model cards: its plain row (label = model name) when
    measured, else the labelled variant nearest the registered model: the fewest model-argument overrides, then the
    most seeds, then the newest run (never the best score: a headline chosen by its result would flatter)."""
    candidates = sorted((r for r in rows if r['model'] == model), key=lambda r: r['date'], reverse=True)
    return min(candidates, key=lambda r: (r['label'] != model, len(r['model_args']), -len(r['seeds'])), default=None)


def variant_name(row: dict) -> str:
    """What a labelled row varies, e.g. 'border shift' of 'lfd_resnet18 (border shift)' (brackets inside kept)."""
    label, prefix = row['label'], row['model'] + ' ('
    return label[len(prefix):-1] if label.startswith(prefix) and label.endswith(')') else label


def summary_table(throughput: List[dict], transfer: Optional[dict]) -> str:
    """README's table: one row per method - its paper backbone's overhead against the backbone bound and its
    transfer-protocol gain over the fine-tuned backbone (the full tables are in bench/README.md)."""
    rows = ['| Method | Paper backbone: inference / training overhead | Transfer protocol: top-1 (gain vs resnet18, '
            'gate) | Compute vs baseline |', '|---|---|---|---|']
    summary = transfer_summary(transfer) if transfer and transfer.get('runs') else None
    few_shot = few_shot_summaries(transfer) if summary else []
    schedules = schedule_summaries(transfer) if summary else []
    for method, name in METHODS.items():
        paper_rows = [e for e in throughput if e['method'] == method and e.get('paper_variant')
                      and e['device_type'] == 'cpu']
        speed = '–'
        if paper_rows:
            e = max(paper_rows, key=lambda e: e.get('date', ''))
            speed = f"{e['inference']['overhead']:.2f} / {e['training']['overhead']:.2f} (`{e['variant']}`)"
        rows_of = (summary or {}).get('rows', {})
        row = headline_row(rows_of.values(), f'{method}_resnet18')
        variant = ''
        if row is not None and row['label'] != row['model']:  # only labelled variants measured so far: name it
            variant = f" — variant: {variant_name(row)}"
        gate = TRANSFER_GATES.get(method)
        if row is None:
            acc, compute = 'not yet measured', '–'
        else:
            verdict = gate_verdict(row, gate)
            acc = (f"{row['mean']:.2f} ({signed(row['gain'])}; gate +{gate:g}: {verdict}; "
                   f"{seed_count(len(row['seeds']))}{variant})")
            compute = fmt(row['compute'])
            for other in rows_of.values():  # a labelled variant past the gate is named with its condition
                passes = other['model'] == row['model'] and other is not row and gate_verdict(other, gate)
                if passes and passes.startswith('pass'):
                    acc += (f"; {variant_name(other)}: {other['mean']:.2f} ({signed(other['gain'])}, {passes}, "
                            f"{seed_count(len(other['seeds']))}, compute {fmt(other['compute'])})")
        for fs in few_shot:
            few = headline_row(fs['rows'].values(), f'{method}_resnet18')
            if few is not None and few['gain'] is not None:
                label = '' if few['label'] == few['model'] else f', {variant_name(few)}'
                acc += (f"; few-shot k = {', '.join(map(str, few['gain_shots']))}"
                        + (f", {fs['epochs']} epochs" if fs['epochs'] else '')
                        + f": mean gain {signed(few['gain'])} (gate: {gate_verdict(few, gate)}{label})")
        for sch in schedules:  # the paper's own model past its gate at equal epochs on a longer schedule
            plain = sch['rows'].get(f'{method}_resnet18', {}).get('per_epochs', {})
            for epochs, cell in plain.items():
                protocol = sch['recipe'].replace(' e* ', f' e{epochs} ') == summary['recipe']  # the main cell's
                verdict = gate_verdict(cell, gate) if cell['gain'] is not None and not protocol else ''
                if verdict.startswith('pass'):
                    where = ', GPU runs' if sch['recipe'].endswith(' cuda') else ''
                    acc += (f"; equal epochs, {epochs} for both{where}: "
                            f"{cell['mean']:.2f} ({signed(cell['gain'])} vs the baseline trained as long, {verdict}, "
                            f"{len(cell['seeds'])} seeds)")
        rows.append(f'| {name} | {speed} | {acc} | {compute} |')
    base = (summary or {}).get('baseline_mean')
    base_row = (summary or {}).get('rows', {}).get('resnet18')
    text = '\n'.join(rows) + '\n'
    if base is not None:
        text += (f"\nBaseline: plain resnet18 fine-tuned with the same recipe, {base:.2f}"
                 + (f" ± {base_row['std']:.2f}" if base_row and base_row['std'] is not None else '')
                 + f" over seeds {base_row['seeds'] if base_row else []}. The transfer protocol (SPEC §8): CUB classes "
                 "1-50 at 128 px from a resnet18 trained on classes 51-200; details and every run in "
                 "`bench/README.md`.\n")
    return text


def render(throughput: List[dict], accuracy: List[dict], paper: Optional[Dict[str, Dict[str, float]]] = None,
           include_quick: bool = False, transfer: Optional[dict] = None) -> Tuple[str, str, str]:
    """(full table block for MODEL_CARDS.md, full bench/README.md, the short summary for README.md).
    `paper`: see `paper_top1`; `transfer`: `load_transfer`."""
    commands = Commands()
    transfer_text = transfer_table(transfer, commands)
    speed = throughput_table(throughput, commands)
    acc = accuracy_tables(accuracy, commands, paper or {}, include_quick)
    cmds = commands.render()
    block = ('### Transfer protocol: does each method beat its fine-tuned backbone?\n\n' + transfer_text +
             '\n### Speed against the backbone bound\n\n' + speed +
             '\n### From-scratch smoke suites (say nothing about a method; SPEC §8)\n\n' + acc +
             ('\nCommands:\n\n' + cmds + '\n' if cmds else '') +
             '\nGenerated by `python bench/report.py` from `bench/results/*.json`; see `bench/README.md`.\n')
    full = ('<!-- Generated by `python bench/report.py` from bench/results/*.json: do not edit by hand. -->\n\n'
            '# timm-fgvc benchmarks\n\n' + HOW_TO_RUN + '\n## Results\n\n' + block)
    short = (summary_table(throughput, transfer) +
             '\nGenerated by `python bench/report.py`; full tables and commands in `bench/README.md`.\n')
    return block, full, short


def speed_summary(entries: List[dict], variant: str) -> List[str]:
    """One line per throughput result of `variant` (the architecture of a model card), newest first."""
    lines = []
    for e in sorted((e for e in entries if e['variant'] == variant), key=lambda e: e.get('date', ''), reverse=True):
        inf, tr = e['inference'], e['training']
        export = e.get('torch_export')
        export_text = '' if export is None else f"; torch.export {'ok' if export.get('ok') else 'fails'}"
        lines.append(
            f"inference {inf['overhead']:.2f}x and training {tr['overhead']:.2f}x the backbone bound "
            f"({inf['method']['images_per_s']:.2f} / {tr['method']['images_per_s']:.2f} img/s) at "
            f"{e['img_size']} px, batch {e['batch_size']}, {_short_device(e)} {e['device_type'].upper()}"
            f"{', ' + _threads(e) if _threads(e) else ''}, {_day(e)}{export_text}: `{e['command']}`")
    return lines
