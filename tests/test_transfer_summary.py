"""The transfer protocol's summary (SPEC §8): gains against the baseline's mean, and gates a dead part cannot pass."""
import pytest

from timm_fgvc.benchmarks import gate_verdict, transfer_summary


def _run(model, seed, top1, role='method', label=None, recipe='sgd e12', saliency=None):
    run = {'model': model, 'label': label or model, 'role': role, 'seed': seed, 'recipe_id': recipe, 'top1': top1,
           'per_head_top1': {'main': top1}, 'wall_seconds': 60.0, 'command': 'cmd'}
    if saliency is not None:
        run['saliency'] = {'active_cells': saliency}
    return run


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
    assert gate_verdict(rows['hsm live'], 1.5) == 'passes'
    assert gate_verdict(rows['hsm live'], 3.0) == 'below'
    assert rows['s3n_resnet18']['std'] == pytest.approx(2.1213, abs=1e-3)
    assert gate_verdict(rows['s3n_resnet18'], 3.0) == 'below'  # +2.5 over two seeds
    assert gate_verdict(rows['resnet18'], None) == '–'
