"""bench/transfer.py's compute ratio counts the pixels through every backbone of a method, shared or not, and the
steps of a step 1 on the source classes."""
import sys
from pathlib import Path

import pytest
import timm

import timm_fgvc  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from transfer import backbone_passes, compute_ratio  # noqa: E402


@pytest.mark.parametrize('name, share, expected', [
    ('s3n_tiny', True, 3.0), ('s3n_tiny', False, 3.0),  # O, then D and C at the input size
    ('lfd_tiny', True, 1 + 6 * (56 / 96) ** 2), ('lfd_tiny', False, 1 + 6 * (56 / 96) ** 2)])  # m = 6 zooms
def test_views_count_whether_or_not_they_share_the_backbone(name, share, expected):
    model = timm.create_model(name, num_classes=3, share_backbone=share)
    assert backbone_passes(model, 96) == pytest.approx(expected, rel=1e-6)


def test_staged_scales_are_averaged_by_their_epochs():
    model = timm.create_model('caa_tiny', num_classes=3)  # scale k runs scales 0..k: 1, 2, 3 passes
    assert backbone_passes(model, 96, [1, 1, 2]) == pytest.approx((1 + 2 + 2 * 3) / 4)


def test_jointly_trained_scales_count_every_scale_in_every_step():
    model = timm.create_model('caa_tiny', num_classes=3, scale_schedule='joint')
    assert backbone_passes(model, 96) == pytest.approx(3.0)


def test_a_step_on_the_source_classes_adds_its_steps_to_the_compute():
    model = timm.create_model('hsm_tiny', num_classes=3)  # one backbone pass per step in both steps
    assert backbone_passes(model, 96, [3, 12]) == pytest.approx(1.0)  # per step: step 1 is as costly as step 2
    # at the protocol's 128 px: 420 steps of step 1 on the source classes, 552 on the target, the baseline's 552
    assert compute_ratio(model, 128, [3, 12], 1.0, {'steps': 420}, 552) == pytest.approx(1 + 420 / 552)
    assert compute_ratio(model, 128, [3, 12], 1.0, {'steps': 420}, 12) == pytest.approx(1 + 420 / 12)  # one shot
    assert compute_ratio(model, 128, [3, 12], 1.0) == pytest.approx(1.0)  # no step 1 (--no-source-step)
