"""`curves.png`: a run's training curves from its per-epoch history (train loss per term, eval top-1 per head, lr)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Union

__all__ = ['plot_curves']


def _series(history: Sequence[dict], prefix: str) -> dict:
    """{key: (steps, values)} for every history key starting with `prefix` (epochs without it are left out)."""
    keys = sorted({k for h in history for k in h if k.startswith(prefix)})
    out = {}
    for key in keys:
        points = [(h['step'], h[key]) for h in history if key in h and h[key] is not None]
        if points:
            out[key] = ([p[0] for p in points], [p[1] for p in points])
    return out


def plot_curves(history: List[dict], path: Union[str, Path], title: Optional[str] = None) -> Optional[Path]:
    """Draw three panels against the optimizer step and save them as a PNG; stage changes are dashed lines.

    Returns the path, or None (with a warning) when matplotlib is not installed or the history is empty.
    """
    if not history:
        return None
    try:
        import matplotlib
        matplotlib.use('Agg', force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn('matplotlib is not installed: no curves.png (pip install matplotlib).')
        return None
    path = Path(path)
    panels = [
        ('train loss', {k[len('train_'):]: v for k, v in _series(history, 'train_loss').items()}, False),
        ('eval top-1 (%)', {('main' if k == 'eval_top1' else k[len('eval_top1_'):]): v
                            for k, v in _series(history, 'eval_top1').items()}, False),
        ('learning rate', {('new layers' if k == 'lr' else 'backbone'): v
                           for k, v in _series(history, 'lr').items()}, True),
    ]
    stage_changes = [b['step'] for a, b in zip(history, history[1:]) if a.get('stage') != b.get('stage')]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    try:
        for axis, (label, series, log_scale) in zip(axes, panels):
            for name, (steps, values) in series.items():
                bold = name in ('loss', 'main', 'new layers')
                axis.plot(steps, values, marker='o', markersize=3, linewidth=2.2 if bold else 1.2, label=name)
            for step in stage_changes:
                axis.axvline(step, color='grey', linestyle='--', linewidth=0.8)
            if log_scale and series and all(v > 0 for _, values in series.values() for v in values):
                axis.set_yscale('log')
            axis.set_title(label)
            axis.set_xlabel('step')
            axis.grid(alpha=0.3)
            if series:
                axis.legend(fontsize=8)
        if title:
            figure.suptitle(title)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path
