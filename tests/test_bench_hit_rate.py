"""bench/accuracy.py hit rates: the baseline's CAM is read like LFD reads its attention (like-with-like, issue 9)."""
import importlib.util
from pathlib import Path

import timm
import torch

import timm_fgvc  # noqa: F401

BENCH = Path(__file__).resolve().parents[1] / 'bench'


def load_accuracy():
    import sys
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location('bench_accuracy', BENCH / 'accuracy.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_cam_gives_top_k_points_by_lfd_proposals_and_nms():
    """The baseline used to give one point (its CAM argmax) while LFD gave its 6 region centres; now it gives its
    6 best cells under the same 5-cell regions and NMS, the first being the CAM argmax."""
    accuracy = load_accuracy()
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=3, output_stride=8).eval()  # 64 px -> 8 x 8 cells of 8 px
    hot = {(1, 1): 3.0, (1, 2): 2.9, (6, 6): 2.0, (1, 6): 1.5}  # (1, 2) is next to the argmax: suppressed
    features = torch.zeros(1, model.num_features, 8, 8)
    for (row, col), value in hot.items():
        features[0, 0, row, col] = value
    model.forward_features = lambda x: features.expand(x.shape[0], -1, -1, -1)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[:, 0] = 1.0
        model.fc.bias.zero_()
    xy, mask, score, kind = accuracy.attention_points(model, torch.zeros(2, 3, 64, 64))
    assert xy.shape == (2, accuracy.TOP_K_POINTS, 2) and mask.all()
    cells = (xy[0] / 8 - 0.5).round().long().tolist()  # (x, y) in cells
    assert cells[0] == [1, 1]  # the CAM argmax first, as before
    assert [2, 1] not in cells  # its neighbour is suppressed (IoU of 5-cell squares 1 cell apart = 0.67)
    assert cells[1:3] == [[6, 6], [6, 1]]  # then the next hot cells, each >= 3 cells from every kept one
    from timm_fgvc.layers import box_iou
    boxes = torch.cat([xy[0] - 20, xy[0] + 20], -1)  # the 5-cell squares of the chosen cells
    assert torch.all(box_iou(boxes, boxes).triu(1) <= accuracy.CAM_NMS_IOU + 1e-6)
    assert torch.all(score[0, :-1] >= score[0, 1:]) and 'CAM' in kind
