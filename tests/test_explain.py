"""`timm-fgvc explain`: attention rendered over the inputs, peaks marked where the model put them."""
import numpy as np
import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.cli import main
from timm_fgvc.data.synthetic import render_sample
from timm_fgvc.explain import explain_images, heat_overlay, render_explanation


def test_heat_overlay_marks_only_where_the_map_is_hot():
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    heat = np.zeros((8, 8))
    heat[2, 5] = 1.0
    out = heat_overlay(image, heat)
    assert (out[heat == 0] == 100).all() and out[2, 5, 0] > 150


def test_explanation_sheet_marks_peaks_and_shows_branch_images(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('s3n_resnet18', num_classes=4, backbone='test_resnet')
    images = torch.randn(2, 3, 64, 64)
    explanation = explain_images(model, images)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    sheet = np.asarray(render_explanation(images, explanation, mean, std, label_names=list('abcd')))
    assert sheet.shape == (2 * (64 + 14), 4 * 64, 3)  # input+peaks, attention, two resampled images per row
    b, k = explanation['peak_mask'].nonzero()[0].tolist()
    x, y = explanation['peak_xy'][b, k].round().long().tolist()
    colour = (230, 30, 30) if explanation['discriminative'][b, k] else (30, 90, 230)
    ring = sheet[b * 78 + y - 3:b * 78 + y + 4, max(x - 3, 0):x + 4].reshape(-1, 3)
    assert (ring == colour).all(-1).any()  # the peak's circle is drawn around it


def test_explanation_sheet_boxes_lfd_regions_by_rank():
    torch.manual_seed(0)
    model = timm.create_model('lfd_resnet18', num_classes=4, backbone='test_resnet')
    images = torch.randn(2, 3, 96, 96)
    explanation = explain_images(model, images)
    sheet = np.asarray(render_explanation(images, explanation, (0.5,) * 3, (0.25,) * 3))
    assert sheet.shape == (2 * (96 + 14), (2 + 4) * 96, 3)  # input+boxes, attention, the top-4 zoomed regions
    for b in range(2):
        x1, y1, x2, y2 = explanation['region_boxes'][b, 0].long().tolist()
        top_edge = sheet[b * 110 + y1, x1:min(x2, 95)]
        assert (top_edge == (230, 30, 30)).all(-1).mean() > 0.5  # the top-1 region's box, in red


def test_explanation_sheet_shows_caa_scales():
    torch.manual_seed(0)
    model = timm.create_model('caa_resnet18', num_classes=4, backbone='test_resnet')
    images = torch.randn(1, 3, 96, 96)
    explanation = explain_images(model, images)
    sheet = np.asarray(render_explanation(images, explanation, (0.5,) * 3, (0.25,) * 3))
    assert sheet.shape == (96 + 14, (2 + 2) * 96, 3)  # input+boxes, attention, the inputs of scales 1 and 2
    zoomed = explanation['zoomed_regions'][0, 0]
    expected = np.asarray(render_explanation(zoomed[None], dict(attention=torch.zeros(1, 1, 96, 96),
                                                                logits=explanation['logits']),
                                             (0.5,) * 3, (0.25,) * 3))[:96, :96]
    assert np.array_equal(sheet[:96, 2 * 96:3 * 96], expected)  # column 3 is scale 1's input


def test_cli_writes_a_png(tmp_path):
    for i in range(2):
        render_sample(i, num_classes=4, image_size=64)['image'].save(tmp_path / f'{i}.png')
    out = tmp_path / 'attention.png'
    code = main(['explain', '--model', 's3n_resnet18', '--model-args', '{"backbone": "test_resnet"}',
                 '--num-classes', '4', '--img-size', '64', '--image', str(tmp_path / '0.png'),
                 str(tmp_path / '1.png'), '--out', str(out)])
    assert code == 0 and out.stat().st_size > 1000
    assert main(['explain', '--model', 's3n_resnet18', '--image', str(tmp_path / 'missing.png'),
                 '--out', str(out), '--model-args', '{"backbone": "test_resnet"}']) == 2
