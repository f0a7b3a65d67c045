"""bench/throughput.py: each method's backbone bound counts the backbone images the model really processes, in
inference and in training, so an overhead is the method's own work and never a bound that drifted from it."""
import sys
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch

import timm_fgvc  # noqa: F401  (registers the models)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from method_variants import TINY_VARIANTS  # noqa: E402
from throughput import BOUNDS  # noqa: E402


def _backbone_images(model, run) -> Counter:
    """Images per input side that went through any of the model's backbones (a timm ResNet, hooked at its stem)."""
    seen = Counter()
    stems = [module.conv1 for module in model.modules() if type(module).__name__ == 'ResNet']
    hooks = [stem.register_forward_pre_hook(lambda _, args: seen.update({args[0].shape[-1]: args[0].shape[0]}))
             for stem in stems]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize('name', TINY_VARIANTS)
def test_the_bound_counts_the_backbone_images_the_model_processes(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    batch, size = 2, model.default_cfg['input_size'][-1]
    x, y = torch.randn(batch, 3, size, size), torch.tensor([0, 1])
    bound_fn = BOUNDS[name.split('_')[0]][0]
    for training in (False, True):
        model.train(training)
        expected = Counter()
        for p in bound_fn(model, size, training):
            if p.module == 'backbone':
                expected[p.size] += p.batch_factor * batch
        with torch.no_grad():
            seen = _backbone_images(model, (lambda: model.forward_train(x, y)) if training else (lambda: model(x)))
        assert seen == expected, (name, 'training' if training else 'inference')
