"""`timm-fgvc explain`: attention rendered over the inputs, peaks marked where the model put them, readable sheets."""
import numpy as np
import pytest
import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.cli import main
from timm_fgvc.data.synthetic import render_sample
from timm_fgvc.explain import (PANEL_GAP, column_titles, explain_images, heat_overlay, prediction_lines,
                               render_explanation)

PANEL = 256
STEP = PANEL + PANEL_GAP


def row_top(sheet: np.ndarray, rows: int) -> int:
    """The height of the title row (everything above the image rows)."""
    return sheet.shape[0] - rows * STEP


def test_heat_overlay_marks_only_where_the_map_is_hot():
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    heat = np.zeros((8, 8))
    heat[2, 5] = 1.0
    out = heat_overlay(image, heat)
    assert (out[heat == 0] == 100).all() and out[2, 5, 0] > 150


def test_prediction_lines_name_the_top5_with_probabilities():
    probs = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15, 0.0])
    lines = prediction_lines(probs, label_names=list('abcdef'))
    assert lines == ['1. b  0.50', '2. d  0.20', '3. e  0.15', '4. c  0.10', '5. a  0.05']
    assert prediction_lines(probs[:2] / probs[:2].sum())[0] == '1. class 1  0.91'  # no names: the index


def test_explanation_sheet_marks_peaks_titles_columns_and_draws_large_panels():
    torch.manual_seed(0)
    model = timm.create_model('s3n_resnet18', num_classes=4, backbone='test_resnet')
    images = torch.randn(2, 3, 64, 64)
    explanation = explain_images(model, images)
    assert column_titles(explanation) == ['input + peaks (red: discr., blue: compl.)', 'attention (max over maps)',
                                          'discriminative resampled', 'complementary resampled']
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    sheet = np.asarray(render_explanation(images, explanation, mean, std, label_names=list('abcd')))
    top = row_top(sheet, 2)
    assert sheet.shape[1] >= 4 * STEP + PANEL and top > 0  # 4 panels of 256 px, then the top-5 text column
    for c in range(5):  # every column has a title: dark pixels in the title row above it
        assert (sheet[:top, c * STEP:c * STEP + PANEL].min(-1) < 100).any(), c
    text = sheet[top:top + PANEL, 4 * STEP:]
    assert (text.min(-1) < 100).sum() > 200  # the top-5 lines are written
    b, k = explanation['peak_mask'].nonzero()[0].tolist()
    x, y = (explanation['peak_xy'][b, k] * PANEL / 64).round().long().tolist()
    colour = (230, 30, 30) if explanation['discriminative'][b, k] else (30, 90, 230)
    r = PANEL // 40
    ring = sheet[top + b * STEP + max(y - r - 2, 0):top + b * STEP + y + r + 3, max(x - r - 2, 0):x + r + 3]
    assert (ring.reshape(-1, 3) == colour).all(-1).any()  # the peak's circle is drawn around it, scaled


def test_explanation_sheet_boxes_lfd_regions_by_rank():
    torch.manual_seed(0)
    model = timm.create_model('lfd_resnet18', num_classes=4, backbone='test_resnet')
    images = torch.randn(2, 3, 96, 96)
    explanation = explain_images(model, images)
    assert column_titles(explanation)[2:] == [f'region {k} zoomed' for k in range(1, 5)]
    sheet = np.asarray(render_explanation(images, explanation, (0.5,) * 3, (0.25,) * 3))
    top = row_top(sheet, 2)
    scale = PANEL / 96
    for b in range(2):
        x1, y1, x2, y2 = (explanation['region_boxes'][b, 0] * scale).round().long().tolist()
        y1 = min(max(y1, 1), PANEL - 2)
        edge = sheet[top + b * STEP + y1 - 1:top + b * STEP + y1 + 2, max(x1, 0):min(x2, PANEL - 1)]
        assert (edge == (230, 30, 30)).all(-1).any(0).mean() > 0.5  # the top-1 region's box, in red


def test_explanation_sheet_shows_caa_scales():
    torch.manual_seed(0)
    model = timm.create_model('caa_resnet18', num_classes=4, backbone='test_resnet')
    images = torch.randn(1, 3, 96, 96)
    explanation = explain_images(model, images)
    assert column_titles(explanation)[2:] == ['scale 1 input (zoomed)', 'scale 2 input (zoomed)']
    sheet = np.asarray(render_explanation(images, explanation, (0.5,) * 3, (0.25,) * 3))
    zoomed = explanation['zoomed_regions'][0, 0]
    expected = np.asarray(render_explanation(zoomed[None], dict(attention=torch.zeros(1, 1, 96, 96),
                                                                logits=explanation['logits']),
                                             (0.5,) * 3, (0.25,) * 3))
    top, top_expected = row_top(sheet, 1), row_top(expected, 1)
    assert np.array_equal(sheet[top:top + PANEL, 2 * STEP:2 * STEP + PANEL],
                          expected[top_expected:top_expected + PANEL, :PANEL])  # column 3 is scale 1's input


def test_cli_writes_a_png_with_the_runs_class_names(tmp_path, make_run):
    for i in range(2):
        render_sample(i, num_classes=4, image_size=64)['image'].save(tmp_path / f'{i}.png')
    model = timm.create_model('s3n_resnet18', num_classes=4, backbone='test_resnet')
    run = make_run(model, label_names=['alpha', 'beta', 'gamma', 'delta'],
                   config=dict(model_args={'backbone': 'test_resnet'}))
    out = tmp_path / 'attention.png'
    code = main(['explain', '--checkpoint', str(run / 'model.safetensors'), '--img-size', '64',
                 '--image', str(tmp_path / '0.png'), str(tmp_path / '1.png'), '--out', str(out)])
    assert code == 0 and out.stat().st_size > 1000
    from PIL import Image
    assert Image.open(out).height >= 2 * PANEL
    # the sheet is the one drawn here from the run's weights, eval transform and class names (not 'class 2')
    from timm_fgvc.inference import eval_transform, load_model
    loaded = load_model(checkpoint=run, device='cpu')
    transform, data_cfg = eval_transform(loaded, 64)
    batch = torch.stack([transform(Image.open(tmp_path / f'{i}.png').convert('RGB')) for i in range(2)])
    with torch.no_grad():
        explanation = explain_images(loaded.model, batch)
    named, unnamed = (np.asarray(render_explanation(batch, explanation, data_cfg['mean'], data_cfg['std'], names))
                      for names in (['alpha', 'beta', 'gamma', 'delta'], None))
    assert np.array_equal(np.asarray(Image.open(out).convert('RGB')), named[..., :3])
    assert not np.array_equal(named, unnamed)
    assert main(['explain', '--model', 's3n_resnet18', '--image', str(tmp_path / 'missing.png'),
                 '--out', str(out), '--model-args', '{"backbone": "test_resnet"}']) == 2
    # a folder: its images, a file that is not one skipped with a warning; a wrong --out refused before any work
    photos = tmp_path / 'photos'
    photos.mkdir()
    for name in ('0.png', '1.png'):
        (photos / name).write_bytes((tmp_path / name).read_bytes())
    (photos / 'notes.txt').write_text('not an image')
    folder_out = tmp_path / 'folder.jpg'
    with pytest.warns(UserWarning, match=r'skipped 1 file\(s\).*notes\.txt'):
        code = main(['explain', '--checkpoint', str(run), '--img-size', '64', '--image', str(photos),
                     '--out', str(folder_out)])
    assert code == 0 and Image.open(folder_out).format == 'JPEG'
    assert Image.open(folder_out).height == Image.open(out).height  # the same two images
    for wrong in ('attention.pngg', 'sheets/'):
        assert main(['explain', '--checkpoint', str(tmp_path / 'no_run'), '--image', str(tmp_path / '0.png'),
                     '--out', str(tmp_path / wrong)]) == 2  # refused before the missing checkpoint is looked up


def test_a_plain_timm_cnn_shows_the_class_activation_map_of_its_top1_class(tmp_path, make_run):
    """The baseline's sheet, to set beside a method's: with class c's weights picking one feature channel and its
    bias making c the top-1, the map is that channel's map over the input; a model without a CAM is refused."""
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        channels = model.forward_features(x)
        spread = channels.flatten(2).amax(-1) - channels.flatten(2).amin(-1)
        first, second = spread.amin(0).topk(2).indices.tolist()  # channels whose maps vary in both images
        for top1, channel in ((2, first), (1, second)):
            model.fc.weight.zero_()
            model.fc.weight[top1, channel] = 1.0
            model.fc.bias.copy_(torch.eye(4)[top1] * 1e3)
            explanation = explain_images(model, x)
            assert explanation['logits'].argmax(-1).tolist() == [top1, top1]
            expected = torch.nn.functional.interpolate(channels[:, channel:channel + 1], size=(64, 64), mode='bilinear',
                                                       align_corners=False)
            lo, hi = expected.amin((2, 3), keepdim=True), expected.amax((2, 3), keepdim=True)
            torch.testing.assert_close(explanation['attention'], (expected - lo) / (hi - lo), atol=1e-5, rtol=1e-4)
    assert column_titles(explanation)[1] == 'class activation map (top-1)'

    render_sample(0, num_classes=4, image_size=64)['image'].save(tmp_path / '0.png')
    run = make_run(timm.create_model('test_resnet', num_classes=4), config=dict(model='test_resnet'))
    code = main(['explain', '--checkpoint', str(run), '--image', str(tmp_path / '0.png'),
                 '--out', str(tmp_path / 'a.png')])
    assert code == 0 and (tmp_path / 'a.png').stat().st_size > 1000
    vit = timm.create_model('test_vit', num_classes=4).eval()
    with pytest.raises(ValueError, match='class activation map'):
        explain_images(vit, torch.randn(1, 3, *vit.pretrained_cfg['input_size'][1:]))
