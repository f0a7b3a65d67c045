"""The transfer protocol's summary (SPEC §8): gains against the baseline's mean, and gates a dead part cannot pass."""
import json
import sys
from pathlib import Path

import pytest

from timm_fgvc.benchmarks import (Commands, few_shot_summaries, few_shot_table, gate_verdict, headline_row,
                                   schedule_summaries, summary_table, transfer_summary, transfer_table)


def _run(model, seed, top1, role='method', label=None, recipe='sgd e12', saliency=None, model_args=None, date=''):
    run = {'model': model, 'label': label or model, 'role': role, 'seed': seed, 'recipe_id': recipe, 'top1': top1,
           'per_head_top1': {'main': top1}, 'wall_seconds': 60.0, 'command': 'cmd', 'model_args': model_args or {},
           'date': date}
    if saliency is not None:
        run['saliency'] = {'active_cells': saliency}
    return run


BENCH = Path(__file__).resolve().parents[1] / 'bench'  # bench/transfer.py, imported by the runner's tests
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def _runner_args(tmp_path, **overrides):
    """`bench/accuracy.py --suites transfer`'s arguments as `run_transfer` reads them: the protocol's recipe on the
    CPU, results and runs under tmp_path, one seed, no ablation."""
    import argparse
    from transfer import RECIPE_FIELDS, TRANSFER_DEFAULTS
    args = dict({k: TRANSFER_DEFAULTS[k] for k in RECIPE_FIELDS}, max_steps=None, shots=None, cpu=True,
                results_dir=str(tmp_path), pretrained_path=str(tmp_path / 'w.safetensors'), skip_baseline=False,
                transfer_models=[], stage_epochs=None, model_args={}, lr_ratio=None, no_source_step=False,
                source_step_lr=None, source_step_epochs=3., label=None, seeds=[0], workdir=str(tmp_path), workers=0,
                resume=False, note=None)
    return argparse.Namespace(**{**args, **overrides})


def test_gains_are_against_the_baseline_mean_of_the_protocol_recipe_and_dead_saliency_is_not_credited():
    runs = [_run('resnet18', s, t, role='baseline') for s, t in enumerate([55.0, 56.0, 57.0])]
    runs += [_run('resnet18', 0, 40.0, role='baseline', recipe='adamw e12'),  # another recipe: never pooled
             _run('hsm_resnet18', 0, 58.5, saliency=0.0003), _run('hsm_resnet18', 1, 57.5, saliency=0.0),
             _run('hsm_resnet18', 0, 58.0, label='hsm live', saliency=0.4),
             _run('s3n_resnet18', 0, 57.0), _run('s3n_resnet18', 1, 60.0)]
    s = transfer_summary({'recipe': 'sgd e12', 'runs': runs})
    assert s['baseline_mean'] == pytest.approx(56.0) and s['other_recipes'] == ['adamw e12']
    rows = s['rows']
    assert rows['hsm_resnet18']['gain'] == pytest.approx(2.0) and rows['hsm live']['gain'] == pytest.approx(2.0)
    assert gate_verdict(rows['hsm_resnet18'], 1.5).startswith('not credited')  # 0.03% live cells: dead
    assert gate_verdict(rows['hsm live'], 1.5) == 'passes on 1 seed (3 needed within 1 pt of the gate)'
    assert gate_verdict(rows['hsm live'], 2.9) == 'below on 1 seed (3 needed within 1 pt of the gate)'
    assert gate_verdict(rows['hsm live'], 0.9) == 'passes' and gate_verdict(rows['hsm live'], 4.1) == 'below'
    # +2.0 over the baseline mean is 1.1 from a gate of 3.1, but +3.0 over its own seed's baseline is within 1 pt
    assert rows['hsm live']['paired']['gain'] == pytest.approx(3.0)
    assert gate_verdict(rows['hsm live'], 3.1) == 'below on 1 seed (3 needed within 1 pt of the gate)'
    assert gate_verdict(dict(rows['hsm live'], paired=None), 3.1) == 'below'
    assert gate_verdict(dict(rows['hsm live'], seeds=[0, 1, 2]), 1.5) == 'passes'  # 3 seeds settle it
    assert rows['s3n_resnet18']['std'] == pytest.approx(2.1213, abs=1e-3)
    assert gate_verdict(rows['s3n_resnet18'], 3.0) == 'below on 2 seeds (3 needed within 1 pt of the gate)'
    assert gate_verdict(rows['resnet18'], None) == '–'


def test_the_gain_paired_by_seed_takes_each_seed_against_its_own_baseline():
    """Seed noise shared by a model and its baseline cancels in the per-seed difference: a model that is 1 pt above
    its baseline at every seed has a paired gain of +1 with no spread, whatever the seeds' own spread; a seed the
    baseline lacks is left out of the pairing (not out of the mean gain)."""
    base = [_run('resnet18', s, t, role='baseline') for s, t in enumerate([54.0, 57.0, 55.0])]
    model = [_run('s3n_resnet18', s, t + 1.0) for s, t in enumerate([54.0, 57.0, 55.0])]
    model.append(_run('s3n_resnet18', 7, 50.0))  # no baseline of seed 7
    for run in base + model:
        run.update(lr=0.02, compute_ratio=1.0)
    data = {'recipe': 'sgd e12', 'runs': base + model, 'protocol': {'img_size': 128, 'output_stride': 16,
                                                                    'source': 'w'}, '_file': 'f'}
    row = transfer_summary(data)['rows']['s3n_resnet18']
    assert row['paired']['gain'] == pytest.approx(1.0) and row['paired']['se'] == pytest.approx(0.0, abs=1e-9)
    assert row['paired']['n'] == 3 and row['gain'] == pytest.approx((55 + 58 + 56 + 50) / 4 - (54 + 57 + 55) / 3)
    assert 'paired by seed: +1.00 ± 0.00 SE, 3 seeds' in transfer_table(data, Commands())
    data['summary'] = '**Where each method stands.** S3N is 1 pt above its baseline.'
    table = transfer_table(data, Commands())
    assert table.startswith(data['summary'] + '\n\n') and table.index('S3N is 1 pt') < table.index('| s3n_resnet18 |')
    del data['summary']
    model[1]['top1'] = 59.0  # seed 1 now +2: differences 1, 2, 1
    row = transfer_summary(data)['rows']['s3n_resnet18']
    assert row['paired']['gain'] == pytest.approx(4 / 3) and row['paired']['se'] == pytest.approx(0.3333, abs=1e-3)


def test_the_readme_headline_of_a_method_with_only_variants_is_the_nearest_to_the_registered_model():
    runs = [_run('resnet18', 0, 55.0, role='baseline'),
            _run('ssanet_resnet18', 0, 25.0, label='ssanet_resnet18 (old selection)', date='2026-01-01',
                 model_args={'dsm_pool_size': 4, 'proposal_selection': 'global'}),
            _run('ssanet_resnet18', 0, 43.0, label='ssanet_resnet18 (big parts)', date='2026-01-03',
                 model_args={'dsm_pool_size': 4, 'part_scale': 0.875, 'candidate_features': 'roi_align'}),
            _run('ssanet_resnet18', 0, 41.0, label='ssanet_resnet18 (per level)', date='2026-01-02',
                 model_args={'dsm_pool_size': 4, 'proposal_selection': 'per_level'})]
    rows = transfer_summary({'recipe': 'sgd e12', 'runs': runs})['rows'].values()
    # two overrides each: the newer wins the tie; the best score (big parts, four overrides) is not the headline
    assert headline_row(rows, 'ssanet_resnet18')['label'] == 'ssanet_resnet18 (per level)'
    runs.append(_run('ssanet_resnet18', 1, 24.0, label='ssanet_resnet18 (old selection)', date='2026-01-01',
                     model_args={'dsm_pool_size': 4, 'proposal_selection': 'global'}))
    rows = transfer_summary({'recipe': 'sgd e12', 'runs': runs})['rows'].values()
    assert headline_row(rows, 'ssanet_resnet18')['label'] == 'ssanet_resnet18 (old selection)'  # more seeds
    assert headline_row(rows, 's3n_resnet18') is None
    table = summary_table([], {'recipe': 'sgd e12', 'runs': runs})
    assert '24.50 (-30.50; gate +3: below; 2 seeds — variant: old selection)' in table
    # a plain row speaks for its model whenever it is measured, even against a variant with no overrides and more seeds
    runs += [_run('s3n_resnet18', s, 56.0, label='s3n_resnet18 (runner flag)', date='2026-01-05') for s in (0, 1)]
    runs.append(_run('s3n_resnet18', 0, 54.0, date='2026-01-04'))
    rows = transfer_summary({'recipe': 'sgd e12', 'runs': runs})['rows'].values()
    assert headline_row(rows, 's3n_resnet18')['label'] == 's3n_resnet18'
    table = summary_table([], {'recipe': 'sgd e12', 'runs': runs})
    assert '| S3N | – | 54.00 (-1.00; gate +3: below; 1 seed) |' in table


def test_few_shot_runs_are_compared_per_k_against_their_own_baseline_and_the_gate_takes_the_mean_gain():
    def shot(model, seed, top1, k, **kw):
        run = _run(model, seed, top1, recipe=f'sgd e12 k{k}', **kw)
        run['recipe'] = {'shots': k}
        return run
    runs = [_run('resnet18', s, 56.0, role='baseline') for s in (0, 1)] + [
        _run('hsm_resnet18', 0, 57.0, label='hsm live', saliency=0.9),
        shot('resnet18', 0, 20.0, 1, role='baseline'), shot('resnet18', 1, 22.0, 1, role='baseline'),
        shot('resnet18', 0, 40.0, 5, role='baseline'),
        shot('hsm_resnet18', 0, 23.0, 1, label='hsm live', saliency=0.8),
        shot('hsm_resnet18', 1, 24.0, 1, label='hsm live', saliency=0.7),
        shot('hsm_resnet18', 0, 41.0, 5, label='hsm live', saliency=0.9),
        shot('hsm_resnet18', 0, 30.0, 3, label='hsm live', saliency=0.9)]  # k = 3 has no baseline: no gain
    data = {'recipe': 'sgd e12', 'runs': runs}
    s = transfer_summary(data)
    assert s['other_recipes'] == [] and s['baseline_mean'] == pytest.approx(56.0)  # few-shot runs stay apart
    fs = few_shot_summaries(data)[0]
    assert fs['shots'] == [1, 3, 5, 'all']
    hsm = fs['rows']['hsm live']
    assert hsm['per_k'][1]['gain'] == pytest.approx(2.5) and hsm['per_k'][5]['gain'] == pytest.approx(1.0)
    assert hsm['per_k'][3]['gain'] is None and hsm['per_k']['all']['gain'] == pytest.approx(1.0)
    assert hsm['gain_shots'] == [1, 5, 'all'] and hsm['gain'] == pytest.approx(1.5)
    assert gate_verdict(hsm, 1.5) == gate_verdict(hsm, 1.6).replace('below', 'passes') == \
        'passes on 2 seeds (3 needed within 1 pt of the gate)'
    assert gate_verdict(hsm, 0.4) == 'passes' and gate_verdict(hsm, 2.6) == 'below'
    assert 'resnet18' in fs['rows'] and few_shot_summaries({'recipe': 'sgd e12', 'runs': runs[:3]}) == []
    data['_file'] = 'results.json'
    table = few_shot_table(data, Commands())
    assert ('| hsm live | 23.50 (+2.50, 2) | 30.00 (–, 1) | 41.00 (+1.00, 1) | 57.00 (+1.00, 1) '
            '| +1.50 (k = 1, 5, all) |') in table
    assert 'few-shot k = 1, 5, all: mean gain +1.50 (gate: passes on 2 seeds (3 needed within 1 pt of the gate), ' \
        'hsm live)' in summary_table([], data)
    # another base recipe (here: more epochs) is its own table, with its own baseline and no k = all without full runs
    data['runs'] += [dict(shot('resnet18', 0, 30.0, 1, role='baseline'), recipe_id='sgd e70 k1'),
                     dict(shot('hsm_resnet18', 0, 29.0, 1, label='hsm live', saliency=0.9), recipe_id='sgd e70 k1')]
    protocol, other = few_shot_summaries(data)
    assert protocol['recipe'] == 'sgd e12' and other['recipe'] == 'sgd e70' and other['shots'] == [1]
    assert other['rows']['hsm live']['gain'] == pytest.approx(-1.0) and protocol['rows']['hsm live']['gain'] == \
        pytest.approx(1.5)
    assert transfer_summary(data)['other_recipes'] == []


def test_a_variant_past_the_gate_is_named_in_the_readme_with_the_epochs_it_took():
    """The headline stays the plain row; a labelled variant that passes is listed after it, and one that trained
    longer than the recipe (a --stage-epochs row) says so instead of counting as a pass at equal epochs."""
    longer = dict(_run('caa_resnet18', 0, 62.0, label='caa_resnet18 (each scale 12 epochs (3x))'), epochs_ratio=3.0)
    runs = [_run('resnet18', 0, 55.0, role='baseline'), _run('caa_resnet18', 0, 54.0), longer,
            _run('caa_resnet18', 0, 56.0, label='caa_resnet18 (small change)')]
    rows = transfer_summary({'recipe': 'sgd e12', 'runs': runs})['rows']
    assert gate_verdict(rows['caa_resnet18 (each scale 12 epochs (3x))'], 3.0, bold=True) == \
        "passes with 3x the baseline's epochs"
    line = next(l for l in summary_table([], {'recipe': 'sgd e12', 'runs': runs}).splitlines() if l.startswith('| CAA'))
    assert "54.00 (-1.00; gate +3: below; 1 seed); each scale 12 epochs (3x): 62.00 (+7.00, passes with 3x the " \
           "baseline's epochs, 1 seed, compute" in line
    assert 'small change' not in line  # +1: below the gate, not listed


def test_a_reference_row_is_measured_against_the_baseline_but_neither_gated_nor_a_method_headline():
    """A control run (role 'reference', e.g. CAA's paper's multi-scale baseline on CAA's views) gets its gain over
    the baseline mean, leaves that mean alone, is listed right after the baseline with no gate, and never speaks
    for a method in the README."""
    reference = dict(_run('resnet18', 0, 60.0, role='reference', label='resnet18 x3 on caa views'), epochs_ratio=3.0)
    runs = [dict(r, lr=0.04) for r in (_run('resnet18', 0, 55.0, role='baseline'),
                                       _run('resnet18', 1, 57.0, role='baseline'), reference,
                                       _run('caa_resnet18', 0, 59.0))]
    data = {'recipe': 'sgd e12', 'runs': runs, 'protocol': {'img_size': 128, 'output_stride': 16, 'source': 'src'},
            '_file': 'f.json'}
    rows = transfer_summary(data)['rows']
    assert transfer_summary(data)['baseline_mean'] == pytest.approx(56.0)
    assert rows['resnet18 x3 on caa views']['gain'] == pytest.approx(4.0)
    lines = [l for l in transfer_table(data, Commands()).splitlines() if l.startswith('| ') and '---' not in l][1:]
    assert [l.split(' | ')[0] for l in lines] == ['| resnet18', '| resnet18 x3 on caa views', '| caa_resnet18']
    assert "| +4.00 (paired with its seed's baseline: +5.00) | reference, no gate |" in lines[1]
    assert 'reference' not in summary_table([], data) and '59.00 (+3.00' in summary_table([], data)


def test_a_row_off_the_protocol_takes_its_gain_against_the_control_it_names_and_is_never_gated():
    """A method run at another input size (a probe of the protocol's resolution) is compared with the plain model at
    that size, named in its runs' 'yardstick', not with the protocol's baseline; it gets no gate, and a large gain
    over the protocol's baseline never lists it in the README as a method past its gate."""
    size_ref = 'resnet18 at 192 px, the same field of view'
    probe = 's3n_resnet18 at 192 px'
    runs = [dict(r, lr=0.04) for r in (
        _run('resnet18', 0, 55.0, role='baseline'), _run('resnet18', 1, 57.0, role='baseline'),
        _run('resnet18', 0, 58.0, role='reference', label=size_ref),
        _run('resnet18', 1, 60.0, role='reference', label=size_ref),
        dict(_run('s3n_resnet18', 0, 61.0, label=probe), yardstick=size_ref),
        dict(_run('s3n_resnet18', 1, 61.0, label=probe), yardstick=size_ref), _run('s3n_resnet18', 0, 56.0))]
    data = {'recipe': 'sgd e12', 'runs': runs, 'protocol': {'img_size': 128, 'output_stride': 16, 'source': 'src'},
            '_file': 'f.json'}
    rows = transfer_summary(data)['rows']
    assert rows[probe]['gain'] == pytest.approx(2.0)  # 61 against 59, not against the protocol's 56
    assert rows[probe]['paired']['gain'] == pytest.approx(2.0) and rows[probe]['paired']['se'] == pytest.approx(1.0)
    assert rows[size_ref]['gain'] == pytest.approx(3.0)  # the control itself: against the protocol's baseline
    line = next(l for l in transfer_table(data, Commands()).splitlines() if l.startswith(f'| {probe} |'))
    assert '| +2.00 vs resnet18 at 192 px (paired by seed: +2.00 ± 1.00 SE, 2 seeds) | off the protocol, no gate |' \
        in line
    readme = next(l for l in summary_table([], data).splitlines() if l.startswith('| S3N'))
    assert '56.00 (+0.00; gate +3: below; 1 seed)' in readme and '192' not in readme  # +5 over 56, not a pass
    runs[4]['yardstick'] = runs[5]['yardstick'] = 'resnet18 at 192 px, never run'
    with pytest.raises(ValueError, match='never run'):
        transfer_summary(data)


def test_the_runner_trains_a_probe_off_the_protocol_at_its_size_and_files_it_against_the_plain_model_there(
        tmp_path):
    """`bench/accuracy.py --suites transfer --img-size 192`: the plain model and the method train at 192 px with the
    protocol's field of view, in folders of their own; the plain model is filed as the reference at that size, the
    method names it as its yardstick (its gain is paired against it, not against the 128 px baseline), the compute
    counts the larger input, and a size off the backbone's stride stops before any training."""
    import json
    from transfer import run_transfer
    from timm_fgvc.engine.config import TrainConfig
    (tmp_path / 'w.safetensors').write_bytes(b'not the fixture')
    configs = []
    top1 = {(128, 'resnet18'): 55.0, (192, 'resnet18'): 58.0, (192, 's3n_resnet18'): 59.0}

    def train(cfg):
        configs.append(cfg)
        return {'device': 'cpu', 'model_args': cfg.model_args,
                'final': {'eval_top1': top1[cfg.img_size, cfg.model] + cfg.seed, 'step': 1}}

    def run(models, img_size):
        args = _runner_args(tmp_path, transfer_models=models, seeds=[0, 1], img_size=img_size)
        run_transfer(args, train, TrainConfig, str(tmp_path))

    with pytest.raises(SystemExit, match='multiple of 32'):
        run(['s3n_resnet18'], 200)
    assert configs == []
    run([], None)
    run(['s3n_resnet18'], 192)
    assert [(c.model, c.img_size, c.crop_pct) for c in configs[2:]] == [('resnet18', 192, 0.875),
                                                                        ('s3n_resnet18', 192, 0.875)] * 2
    assert len({c.output_dir for c in configs}) == 6 and all(c.output_dir.endswith('_192px') for c in configs[2:])
    data = json.loads((tmp_path / 'accuracy_transfer.json').read_text())
    by_label = {}
    for r in data['runs']:
        by_label.setdefault(r['label'], []).append(r)
    reference = "resnet18 at 192 px, the 128 px crop's field of view (the input magnified 1.5x, no detail added)"
    probe = "s3n_resnet18 at 192 px, the 128 px crop's field of view (a probe of the protocol's input size)"
    assert set(by_label) == {'resnet18', reference, probe}
    assert {r['role'] for r in by_label[reference]} == {'reference'} and all(r['img_size'] == 192
                                                                           for r in by_label[probe])
    assert {r['yardstick'] for r in by_label[probe]} == {reference}
    assert by_label[reference][0]['compute_ratio'] == pytest.approx(2.25)
    assert by_label[probe][0]['compute_ratio'] == pytest.approx(2.25 * 3)  # S3N: 3 passes of the 192 px input
    data['_file'] = 'f.json'
    rows = transfer_summary(data)['rows']
    assert transfer_summary(data)['baseline_mean'] == pytest.approx(55.5)
    assert rows[probe]['gain'] == pytest.approx(1.0) and rows[probe]['paired']['gain'] == pytest.approx(1.0)
    assert gate_verdict(rows[probe], 3.0) == 'off the protocol, no gate'


def test_longer_schedules_compare_each_model_with_the_baseline_of_the_same_epochs_and_never_pool_devices():
    """Runs that differ from a recipe only in epochs form one table, each cell against the baseline trained as long;
    a --stage-epochs ablation (not at equal epochs), a few-shot run and another device's runs stay out of it."""
    gpu = lambda e: f'sgd e{e} b32 bf16 cuda'  # noqa: E731
    runs = [_run('resnet18', s, t, role='baseline', recipe=gpu(12)) for s, t in ((0, 55.0), (1, 57.0))]
    runs += [_run('resnet18', s, t, role='baseline', recipe=gpu(36)) for s, t in ((0, 57.0), (1, 58.0))]
    runs += [_run('caa_resnet18', 0, 57.0, recipe=gpu(12)), _run('caa_resnet18', 0, 60.0, recipe=gpu(36)),
             _run('caa_resnet18', 1, 62.0, recipe=gpu(36)),
             _run('resnet18', 0, 40.0, role='baseline', recipe='sgd e36 b32 bf16'),  # the CPU's: another family
             dict(_run('caa_resnet18', 0, 70.0, label='caa 3x', recipe=gpu(12)), epochs_ratio=3.0)]
    runs = [dict(r, lr=0.04) for r in runs + [_run('resnet18', 0, 55.0, role='baseline', recipe='sgd e12 b32 bf16')]]
    data = {'recipe': 'sgd e12 b32 bf16', 'runs': runs,
            'protocol': {'img_size': 128, 'output_stride': 16, 'source': 'src'}, '_file': 'f.json'}
    (sch,) = schedule_summaries(data)
    assert sch['recipe'] == 'sgd e* b32 bf16 cuda' and sch['epochs'] == [12, 36]
    assert set(sch['rows']) == {'resnet18', 'caa_resnet18'}
    caa = sch['rows']['caa_resnet18']['per_epochs']
    assert caa[12]['gain'] == pytest.approx(1.0) and caa[36]['gain'] == pytest.approx(3.5)
    assert caa[36]['seeds'] == [0, 1] and sch['rows']['resnet18']['per_epochs'][36]['gain'] is None
    table = transfer_table(data, Commands())
    assert ('| caa_resnet18 | 57.00 (+1.00, 1) | 61.00 ± 1.41 (+3.50, paired SE 0.50, 2) | +3: 12 epochs below; '
            '36 epochs passes on 2 seeds (3 needed within 1 pt of the gate) |') in table
    line = next(l for l in summary_table([], data).splitlines() if l.startswith('| CAA'))
    assert 'equal epochs, 36 for both, GPU runs: 61.00 (+3.50 vs the baseline trained as long, passes on 2 seeds' \
        in line
    assert '12 for both' not in line  # +1: below, not named
    other = table.split('Other recipes')[1].split('Equal epochs')[0]  # runs of the schedule table not listed again
    assert '`sgd e36 b32 bf16`' in other and 'caa 3x 70.00 (s0)' in other  # ... the rest of their recipe is
    assert 'caa_resnet18' not in other and 'resnet18 55.00' not in other
    # a dead saliency map is not credited at any length, in the table and in the README
    dead = [dict(_run('hsm_resnet18', 0, 59.0, recipe=gpu(e), saliency=0.0), lr=0.02) for e in (12, 36)]
    data['runs'] = runs + dead
    assert '| +1.5: 12 epochs not credited (saliency map dead' in transfer_table(data, Commands())
    hsm = next(l for l in summary_table([], data).splitlines() if l.startswith('| HSM'))
    assert 'equal epochs' not in hsm
    # the protocol's own recipe in a family: its cell is the main table's, not named again in the README
    data['recipe'] = gpu(12)
    data['runs'] = runs + [dict(_run('caa_resnet18', s, 60.0, recipe=gpu(12)), lr=0.04) for s in (1, 2)]
    line = next(l for l in summary_table([], data).splitlines() if l.startswith('| CAA'))
    assert '59.00 (+3.00; gate +3: passes against the mean, below paired (+2.50); 3 seeds)' in line
    assert '12 for both' not in line and '36 for both' in line
    # a family whose methods ran at one length only has no table
    assert schedule_summaries({'runs': [r for r in runs if r['recipe_id'] != gpu(36) or r['role'] == 'baseline']}) \
        == []


def test_a_run_on_an_accelerator_is_its_own_recipe():
    from transfer import TRANSFER_DEFAULTS, recipe_id
    cpu = recipe_id({**TRANSFER_DEFAULTS, 'device': 'cpu'})
    assert cpu == recipe_id(TRANSFER_DEFAULTS) == 'sgd lr0.04/bb0.02 wd0.0001 cosine w1 e12 b32 bf16'
    assert recipe_id({**TRANSFER_DEFAULTS, 'device': 'cuda'}) == cpu + ' cuda'


def test_a_run_is_never_credited_to_a_device_it_did_not_train_on(tmp_path):
    """The recipe says where the run trained (`accelerator_type`); if the engine trained elsewhere, the benchmark
    stops before the run is written, instead of filing it under the wrong recipe."""
    from transfer import run_transfer
    from timm_fgvc.engine.trainer import accelerator_type
    from timm_fgvc.engine.config import TrainConfig
    assert accelerator_type(cpu=True) == 'cpu'
    args = _runner_args(tmp_path)
    (tmp_path / 'w.safetensors').write_bytes(b'not the fixture')
    elsewhere = lambda cfg: {'device': 'cuda:0', 'final': {'eval_top1': 50.0}, 'model_args': {}}  # noqa: E731
    with pytest.raises(RuntimeError, match="trained on cuda:0, but its recipe says 'cpu'"):
        run_transfer(args, elsewhere, TrainConfig, str(tmp_path))
    assert not (tmp_path / 'accuracy_transfer.json').exists()


def test_a_step_1_of_another_length_is_its_own_row(tmp_path):
    """HSM's step 1 on the source classes is part of its recipe: a run with another `--source-step-epochs` must be
    named (`--label`), or it would be pooled into the plain HSM row; missing source weights stop the run before any
    work."""
    from transfer import SOURCE_STEP_EPOCHS, run_transfer
    from timm_fgvc.engine.config import TrainConfig

    def run(models, epochs, label=None):
        args = _runner_args(tmp_path, pretrained_path=str(tmp_path / 'w'), skip_baseline=True,
                            transfer_models=models, source_step_epochs=epochs, label=label)
        return run_transfer(args, lambda cfg: {}, TrainConfig, str(tmp_path))

    with pytest.raises(SystemExit, match='--source-step-epochs make an ablation row'):
        run(['hsm_resnet18'], 4 * SOURCE_STEP_EPOCHS)
    with pytest.raises(SystemExit, match='is not a file'):  # named, the run then needs its source weights
        run(['hsm_resnet18'], 4 * SOURCE_STEP_EPOCHS, label='a longer step 1')
    assert not (tmp_path / 'accuracy_transfer.json').exists()


def test_a_step_1_is_reused_for_the_same_source_weights_and_never_for_other_ones(tmp_path):
    """HSM's step 1 is cached by what defines it; the source weights count by content: a copy of the file elsewhere
    (another path and date) reuses the step, a file changed in place (same path and size) does not."""
    import os
    from transfer import source_step_key

    def key(weights):
        return source_step_key('hsm_resnet18', {}, {'epochs': 12}, 0.02, 0, 3., weights, None)

    first, copy = tmp_path / 'a.safetensors', tmp_path / 'elsewhere' / 'b.safetensors'
    first.write_bytes(b'weights one')
    copy.parent.mkdir()
    copy.write_bytes(b'weights one')
    os.utime(copy, ns=(10 ** 9, 10 ** 9))
    assert key(first) == key(copy)
    stat = first.stat()
    first.write_bytes(b'weights two')  # same size, same path and date
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert key(first) != key(copy)


def test_adding_a_run_keeps_the_results_files_summary_and_notes(tmp_path):
    """`add_run` rewrites the whole results file: the hand-written summary and notes and the protocol's recipe must
    survive it, and a run of the same key replaces the old one."""
    from transfer import TRANSFER_DEFAULTS, add_run, recipe_id
    path = tmp_path / 'accuracy_transfer.json'
    old = _run('s3n_resnet18', 0, 55.0)
    path.write_text(json.dumps({'suite': 'transfer', 'summary': '**Where each method stands.** ± noted',
                                'notes': {'S3N': 'below'}, 'runs': [old, _run('resnet18', 0, 56.0, role='baseline')]}))
    add_run(path, dict(old, top1=57.0))
    add_run(path, _run('s3n_resnet18', 1, 54.0))
    data = json.loads(path.read_text(encoding='utf-8'))
    assert data['summary'] == '**Where each method stands.** ± noted' and data['notes'] == {'S3N': 'below'}
    assert sorted((r['model'], r['seed'], r['top1']) for r in data['runs']) == [
        ('resnet18', 0, 56.0), ('s3n_resnet18', 0, 57.0), ('s3n_resnet18', 1, 54.0)]
    assert data['recipe'] == recipe_id(TRANSFER_DEFAULTS)  # a file without one takes the defaults'
    path.write_text(json.dumps(dict(data, recipe='sgd lr0.1 e99')))  # a job of older defaults never switches it back
    add_run(path, _run('s3n_resnet18', 2, 53.0))
    data = json.loads(path.read_text(encoding='utf-8'))
    assert data['recipe'] == 'sgd lr0.1 e99' and len(data['runs']) == 4


def test_a_row_holds_one_setting_at_distinct_seeds():
    """Runs are pooled by label: a seed run twice (a rerun after a config change, a reused --label) would count
    twice in the mean, the pairing and the 3-seed rule, and runs of another setting would pass for this one."""
    base = [_run('resnet18', s, 55.0, role='baseline') for s in (0, 1)]
    rerun = [_run('s3n_resnet18', 0, 58.6), _run('s3n_resnet18', 0, 58.4, model_args={'k': 2}),
             _run('s3n_resnet18', 1, 58.5)]
    with pytest.raises(ValueError, match=r"'s3n_resnet18' holds more than one run of seed\(s\) \[0\]"):
        transfer_summary({'recipe': 'sgd e12', 'runs': base + rerun})
    with pytest.raises(ValueError, match='different model_args'):
        transfer_summary({'recipe': 'sgd e12', 'runs': base + rerun[1:]})
    with pytest.raises(ValueError, match='different lr'):
        transfer_summary({'recipe': 'sgd e12', 'runs': base + [dict(rerun[0], lr=0.2), dict(rerun[2], lr=0.02)]})
    # settings only the label told apart: HSM's step-1 lr, the source weights, the test set
    for field, a, b in (('source_step', {'lr': 0.02}, {'lr': 0.001}), ('source_weights', {'sha256': 'aa'},
                                                                        {'sha256': 'bb'}), ('eval_samples', 1389, 100)):
        with pytest.raises(ValueError, match=f'different {field}'):
            transfer_summary({'recipe': 'sgd e12', 'runs': base + [dict(rerun[0], **{field: a}),
                                                                  dict(rerun[2], **{field: b})]})
    assert transfer_summary({'recipe': 'sgd e12', 'runs': base + [dict(rerun[0], eval_samples=1389), rerun[2]]})
    crops = [_run('resnet18', s, 57.0, role='reference', label='central crops', model_args={'box': 0.6 + s / 100})
             for s in (0, 1)]  # a reference row may measure its crop per seed
    assert transfer_summary({'recipe': 'sgd e12', 'runs': base + crops})['rows']['central crops']['gain'] == \
        pytest.approx(2.0)
    shots = [dict(_run('hsm_resnet18', 0, t, recipe='sgd e12 k5'), recipe={'shots': 5}) for t in (30.0, 31.0)]
    with pytest.raises(ValueError, match='more than one run of seed'):  # a few-shot cell is checked as well
        few_shot_summaries({'recipe': 'sgd e12', 'runs': base + shots})


def test_a_gain_paired_well_below_the_gate_keeps_a_pass_unsettled():
    row = {'gain': 4.2, 'seeds': [0, 1], 'paired': {'gain': 1.8}}
    assert gate_verdict(row, 3.0) == 'passes on 2 seeds (3 needed within 1 pt of the gate)'
    assert gate_verdict(dict(row, paired={'gain': 4.1}), 3.0) == 'passes'
    assert gate_verdict(dict(row, gain=1.5, paired={'gain': 1.8}), 3.0) == 'below'
    # from 3 seeds the 1 pt rule is settled, but a paired gain across the gate is still named, and not made bold
    three = dict(row, seeds=[0, 1, 2], gain=3.2, paired={'gain': 2.4})
    assert gate_verdict(three, 3.0, bold=True) == 'passes against the mean, below paired (+2.40)'
    assert gate_verdict(dict(three, paired={'gain': 3.3}), 3.0, bold=True) == '**passes**'


def test_few_shot_runs_on_an_accelerator_and_probes_off_the_protocol_stay_out_of_the_schedule_tables():
    gpu = lambda e, k='': f'sgd e{e} b32 bf16{k} cuda'  # noqa: E731
    runs = []
    for e in (12, 36):
        runs += [_run('resnet18', 0, 55.0, role='baseline', recipe=gpu(e)),
                 _run('caa_resnet18', 0, 60.0, recipe=gpu(e)),
                 dict(_run('resnet18', 0, 20.0, role='baseline', recipe=gpu(e, ' k5')), recipe={'shots': 5}),
                 dict(_run('hsm_resnet18', 0, 30.0, recipe=gpu(e, ' k5')), recipe={'shots': 5}),
                 dict(_run('s3n_resnet18', 0, 70.0, label='s3n at 192 px', recipe=gpu(e)), yardstick='r192'),
                 _run('resnet18', 0, 69.0, role='reference', label='r192', recipe=gpu(e))]
    data = {'recipe': gpu(12), 'runs': runs}
    (sch,) = schedule_summaries(data)
    assert set(sch['rows']) == {'resnet18', 'caa_resnet18', 'r192'}  # not the few-shot runs, not the 192 px probe
    (few,) = few_shot_summaries({'recipe': gpu(12), 'runs': [r for r in runs if ' e36 ' not in r['recipe_id']]})
    assert few['recipe'] == gpu(12) and few['rows']['hsm_resnet18']['per_k'][5]['gain'] == pytest.approx(10.0)


def test_a_run_trained_in_parts_records_each_parts_revision_and_the_trainers_resume_warnings(tmp_path, monkeypatch):
    """A killed run resumed later may have run other code in its first part: the run names every part's revision
    (a fresh start begins the list again), warns when they differ, and keeps the engine's resume warnings."""
    import _common
    import torch
    import transfer
    from timm_fgvc.engine.config import TrainConfig
    run_dir, cpu = tmp_path / 'run', torch.device('cpu')
    monkeypatch.setattr(_common, 'REVISION_AT_START', 'aaa1111')
    assert [p['git'] for p in transfer.record_part(run_dir, False, cpu)] == ['aaa1111']
    monkeypatch.setattr(_common, 'REVISION_AT_START', 'bbb2222')
    assert [p['git'] for p in transfer.record_part(run_dir, True, cpu)] == ['aaa1111', 'bbb2222']
    assert [p['git'] for p in transfer.record_part(run_dir, False, cpu)] == ['bbb2222']  # started again
    assert [p['git'] for p in transfer.record_part(tmp_path / 'older', True, cpu)] == [None, 'bbb2222']

    (tmp_path / 'w.safetensors').write_bytes(b'not the fixture')
    warning = 'The random state of process 0 was not restored'
    train = lambda cfg: {'device': 'cpu', 'model_args': cfg.model_args, 'resume_warnings': [warning],  # noqa: E731
                         'final': {'eval_top1': 50.0, 'step': 1}}
    transfer.run_transfer(_runner_args(tmp_path), train, TrainConfig, str(tmp_path))
    (run,) = json.loads((tmp_path / 'accuracy_transfer.json').read_text())['runs']
    assert run['resume_warnings'] == [warning] and [p['git'] for p in run['parts']] == ['bbb2222']


def test_runs_from_other_source_weights_or_data_are_never_filed_as_the_protocols(tmp_path):
    """A run from weights that are not the fixture, or on another CUB tar, gets a recipe of its own (' src<sha>',
    ' data:<tar>'): it neither joins nor replaces the protocol's rows. A baseline-only run refuses method flags."""
    import json
    from transfer import run_transfer
    from timm_fgvc.engine.config import TrainConfig
    (tmp_path / 'w.safetensors').write_bytes(b'not the fixture')

    def train(cfg):
        return {'device': 'cpu', 'model_args': cfg.model_args, 'final': {'eval_top1': 50.0, 'step': 1}}

    run_transfer(_runner_args(tmp_path), train, TrainConfig, str(tmp_path))
    run_transfer(_runner_args(tmp_path, other_data='tiny_cub.tar:1234'), train, TrainConfig, str(tmp_path))
    runs = json.loads((tmp_path / 'accuracy_transfer.json').read_text())['runs']
    protocol = 'sgd lr0.04/bb0.02 wd0.0001 cosine w1 e12 b32 bf16'
    assert len(runs) == 2 and {r['seed'] for r in runs} == {0}  # the second did not replace the first
    source = runs[0]['source_weights']['sha256'][:8]
    assert [r['recipe_id'] for r in runs] == [f'{protocol} src{source}',
                                              f'{protocol} src{source} data:tiny_cub.tar:1234']
    with pytest.raises(SystemExit, match='apply to the methods'):
        run_transfer(_runner_args(tmp_path, label='x', model_args={'a': 1}), train, TrainConfig, str(tmp_path))


def test_an_extraction_is_reused_only_for_the_tar_it_came_from(tmp_path):
    import io
    import tarfile
    from accuracy import prepare_cub_subset

    def make_tar(path, per_class):
        with tarfile.open(path, 'w') as tar:
            for split in ('train', 'test'):
                for cls in ('001.a', '002.b'):
                    for i in range(per_class):
                        info = tarfile.TarInfo(f'cub/{split}/{cls}/{i}.jpg')
                        info.size = 3
                        tar.addfile(info, io.BytesIO(b'jpg'))

    make_tar(tmp_path / 'full.tar', 3)
    make_tar(tmp_path / 'tiny.tar', 1)
    root, classes = prepare_cub_subset(tmp_path / 'full.tar', 2, tmp_path / 'work')
    assert classes == ['001.a', '002.b'] and len(list((root / 'test').glob('*/*.jpg'))) == 6
    assert prepare_cub_subset(tmp_path / 'full.tar', 2, tmp_path / 'work')[0] == root  # the same tar: reused
    with pytest.raises(SystemExit, match='was extracted from .*full.tar.*use another --workdir'):
        prepare_cub_subset(tmp_path / 'tiny.tar', 2, tmp_path / 'work')


def test_a_flag_the_chosen_suite_does_not_read_is_refused(capsys):
    from accuracy import parse_args
    with pytest.raises(SystemExit):
        parse_args(['--suites', 'synthetic', '--resume'])  # the synthetic suite restarts every run
    assert '--resume apply to the transfer suite' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(['--suites', 'transfer', '--crop-pct', '0.9'])  # the protocol's crop is fixed
    assert '--crop-pct apply to the cub / synthetic' in capsys.readouterr().err
    assert parse_args(['--suites', 'transfer', '--resume', '--label', 'x']).resume  # where they apply: accepted


def test_the_report_writes_the_readmes_from_the_committed_results_only(tmp_path, capsys):
    import report
    readme = (BENCH / 'README.md').read_text()
    for args in (['--results-dir', str(tmp_path)], ['--include-quick']):
        with pytest.raises(SystemExit):
            report.main(args)
        assert 'are for --print' in capsys.readouterr().err
    assert (BENCH / 'README.md').read_text() == readme
    assert report.main(['--print', '--results-dir', str(tmp_path)]) == 0  # scratch results: printed only


def test_hsms_wall_time_counts_its_step_1():
    runs = [_run('resnet18', 0, 55.0, role='baseline'),
            dict(_run('hsm_resnet18', 0, 56.0), wall_seconds=480.0, source_step={'wall_seconds': 240.0, 'lr': 0.02})]
    row = transfer_summary({'recipe': 'sgd e12', 'runs': runs})['rows']['hsm_resnet18']
    assert row['wall'] == 480.0 and row['step1_wall'] == 240.0  # the table shows '8 min + 4 min step 1'
