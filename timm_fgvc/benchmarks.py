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
    for e in entries:
        bounds.setdefault(e['method_name'], e['bound']['definition'])
    notes = '\n'.join(f'- {m}: {d}.' for m, d in sorted(bounds.items()))
    devices = sorted({e['device'] for e in entries})
    return '\n'.join(rows) + (
        '\n\nOverhead = method time / backbone-bound time (median of the timed iterations, method and bound '
        'interleaved; on CPU also the ratio of process CPU times). Training = `forward_train` + loss + backward + '
        'SGD step. Peak memory: `torch.cuda.max_memory_allocated` on CUDA; on CPU approximate (live tensor bytes, '
        'weights and optimizer state included). ' +
        ('CPU rows come from a small machine shared with other jobs: the ratios hold (method and bound ran '
         'interleaved), absolute images/s vary several-fold with the load. ' if any(e['device_type'] == 'cpu'
                                                                                     for e in entries) else '') +
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
            f"baseline CAM {fmt(base_hr.get('part_hit_rate'), 1)} / {fmt(base_hr.get('object_hit_rate'), 1)}")
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
             'backbone\'s feature grid; the baseline\'s point is the argmax of its top-1 class activation map. The paper\'s '
             'hit rate uses CUB\'s object boxes and ImageNet-pretrained ResNet-50 at 448 px: compare it with the '
             'object column only loosely. Paper numbers:\n' + '\n'.join(sources) +
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


def render(throughput: List[dict], accuracy: List[dict], paper: Optional[Dict[str, Dict[str, float]]] = None,
           include_quick: bool = False) -> Tuple[str, str]:
    """(table block for README.md and MODEL_CARDS.md, full bench/README.md). `paper`: see `paper_top1`."""
    commands = Commands()
    speed = throughput_table(throughput, commands)
    acc = accuracy_tables(accuracy, commands, paper or {}, include_quick)
    cmds = commands.render()
    block = ('### Speed against the backbone bound\n\n' + speed + '\n### Accuracy against the baseline\n\n' + acc +
             ('\nCommands:\n\n' + cmds + '\n' if cmds else '') +
             '\nGenerated by `python bench/report.py` from `bench/results/*.json`; see `bench/README.md`.\n')
    full = ('<!-- Generated by `python bench/report.py` from bench/results/*.json: do not edit by hand. -->\n\n'
            '# timm-fgvc benchmarks\n\n' + HOW_TO_RUN + '\n## Results\n\n' + block)
    return block, full


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
