"""Shared fixtures: the repository root and a train_fgvc.py-style run folder made without training."""
import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test():
    """Each test starts from seed 0 whatever ran before it in its worker (xdist deals tests out differently from run
    to run, and in-process training reseeds the global generators); the state is put back afterwards."""
    import random

    import numpy as np
    import torch
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
    torch.set_rng_state(saved[0])
    random.setstate(saved[1])
    np.random.set_state(saved[2])


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def make_run(tmp_path):
    """`make_run(model, **results_overrides) -> run_dir`: model.safetensors + results.json as the trainer writes.

    The keys mirror `timm_fgvc.engine.trainer.train`'s results; the config is a real `TrainConfig`.
    """
    from timm_fgvc.engine.config import TrainConfig

    def make(model, name='run', label_names=None, eval_top1=61.25, dataset='synthetic', config=None, **overrides):
        run_dir = tmp_path / name
        run_dir.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run_dir / 'model.safetensors'))
        cfg = TrainConfig(**dict(dict(model=model.pretrained_cfg['architecture'], dataset=dataset, img_size=64,
                                      epochs=2), **(config or {}))).to_dict()
        final = {'epoch': 2, 'eval_top1': eval_top1, 'eval_top5': 100.0, 'eval_samples': 20}
        results = {
            'model': cfg['model'], 'dataset': dataset, 'num_classes': model.num_classes,
            'label_names': label_names or [f'class_{i}' for i in range(model.num_classes)],
            'data_config': {'input_size': [3, 64, 64], 'interpolation': 'bilinear', 'mean': [0.5, 0.4, 0.3],
                            'std': [0.2, 0.25, 0.3], 'crop_pct': 0.9, 'crop_mode': 'center'},
            'config': cfg, 'history': [final], 'final': final if eval_top1 is not None else {},
            'per_process_weights_checksum': [1.0], 'num_processes': 1, 'train_seconds': 1.0, 'device': 'cpu',
            'params': sum(p.numel() for p in model.parameters()), 'model_args': dict(cfg['model_args']),
            'init_args': getattr(model, 'init_args', None),
        }
        results.update(overrides)
        (run_dir / 'results.json').write_text(json.dumps(results, indent=2))
        return run_dir

    return make


@pytest.fixture
def short_training():
    """`short_training(model, num_classes, image_size, lr, steps=30, terms=None) -> {term: (first, last)}`:
    full-batch SGD (momentum 0.9) of `forward_train` + `loss` on 8 synthetic images per class, on the sum of
    `terms` (a stage's loss terms; default the model's total); each loss term's mean over the first and over the
    last 5 steps."""
    import torch
    from torchvision.transforms.functional import to_tensor

    from timm_fgvc.data.synthetic import make_synthetic_fgvc

    def run(model, num_classes, image_size, lr, steps=30, terms=None):
        data = make_synthetic_fgvc(num_classes=num_classes, train_per_class=8, test_per_class=1,
                                   image_size=image_size, seed=0)['train']
        images = torch.stack([to_tensor(img) for img in data['image']])
        labels = torch.tensor(data['label'])
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
        history = []
        for _ in range(steps):
            losses = model.loss(model.forward_train(images, labels), labels)
            total = sum(losses[t] for t in terms) if terms else losses['loss']
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
        return {term: (sum(h[term] for h in history[:5]) / 5, sum(h[term] for h in history[-5:]) / 5)
                for term in history[0]}
    return run


def pytest_configure(config):
    """One torch thread per pytest-xdist worker: two workers with two OpenMP threads each on two cores made the
    training tests 20x slower (oversubscribed threads spin-wait); tests that need another count set it."""
    import os
    if os.environ.get('PYTEST_XDIST_WORKER'):
        import torch
        torch.set_num_threads(1)
