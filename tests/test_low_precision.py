"""Every method with its weights cast to bf16 (and fp16 where this CPU runs it): `.to(torch.bfloat16)` /
`.half()` models must run, and agree with the fp32 model they were cast from (issue 10)."""
import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401
from method_variants import TINY_VARIANTS

METHODS = TINY_VARIANTS


def _cpu_runs(dtype: torch.dtype) -> bool:
    """Whether this CPU build has the kernels a CNN forward needs in `dtype` (fp16 conv is missing on some)."""
    try:
        conv = torch.nn.Conv2d(3, 4, 3).to(dtype)
        F.adaptive_avg_pool2d(conv(torch.randn(1, 3, 8, 8, dtype=dtype)).relu(), 1)
        return True
    except RuntimeError:
        return False


DTYPES = [torch.bfloat16] + ([torch.float16] if _cpu_runs(torch.float16) else [])


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('name', METHODS)
def test_low_precision_weights_run_and_agree_with_fp32(name, dtype):
    torch.manual_seed(0)
    reference = timm.create_model(name, num_classes=5).eval()
    model = timm.create_model(name, num_classes=5).eval()
    model.load_state_dict(reference.state_dict())
    model.to(dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        expected = reference(x)
        logits = model(x.to(dtype))
        maps = model.attention_maps(x.to(dtype))
        output = model.forward_train(x.to(dtype))
        losses = model.loss(output, torch.tensor([0, 1, 2]))
    assert logits.shape == expected.shape and torch.isfinite(logits).all()
    assert logits.dtype == dtype, 'a model cast to a dtype answers in it, as a timm model does'
    logits = logits.float()
    # same weights, rounded: the prediction must be the fp32 one up to the rounding (not merely finite)
    assert F.cosine_similarity(logits.flatten(), expected.flatten(), 0) > 0.98, (logits, expected)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
