"""Region proposals, batched fixed-K NMS, crop-and-zoom and mask boxes (timm_fgvc/layers/regions.py)."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from timm_fgvc.layers import (anchor_boxes, box_iou, crop_regions, mask_bounding_box, nms_top_k,
                              propose_square_regions)


def random_boxes(generator, batch, num, size=100.):
    xy = torch.rand(batch, num, 2, generator=generator) * size * 0.8
    wh = torch.rand(batch, num, 2, generator=generator) * size * 0.4 + 4
    return torch.cat([xy, xy + wh], -1)


@pytest.mark.parametrize('iou_threshold', [0.1, 0.25, 0.5])
def test_nms_top_k_equals_torchvision_nms(iou_threshold):
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(g, 4, 60), torch.rand(4, 60, generator=g)
    valid = torch.rand(4, 60, generator=g) > 0.2
    regions = nms_top_k(boxes, scores, k=6, iou_threshold=iou_threshold, valid=valid)
    for b in range(4):
        subset = valid[b].nonzero()[:, 0]
        expected = subset[nms(boxes[b, subset], scores[b, subset], iou_threshold)][:6]
        n = len(expected)
        assert torch.equal(regions.indices[b, :n], expected)
        assert regions.mask[b, :n].all() and not regions.mask[b, n:].any()
        assert torch.equal(regions.boxes[b, :n], boxes[b, expected])
        assert torch.allclose(regions.scores[b, :n], scores[b, expected])


def test_nms_top_k_pads_when_few_regions_survive():
    box = torch.tensor([10., 10., 50., 50.])
    boxes = torch.stack([box, box + 1, box + 2, torch.tensor([60., 60., 90., 90.])])  # three overlap heavily
    scores = torch.tensor([[0.5, 0.9, 0.7, 0.2]])
    regions = nms_top_k(boxes, scores, k=4, iou_threshold=0.25)
    assert regions.indices[0, :2].tolist() == [1, 3] and regions.mask[0].tolist() == [True, True, False, False]
    assert torch.equal(regions.boxes[0, 2], boxes[1]) and regions.scores[0, 2] == 0  # padded with the best box
    assert box_iou(regions.boxes[0, :2], regions.boxes[0, :2])[0, 1] <= 0.25
    fewer_boxes_than_k = nms_top_k(boxes[:2], scores[:, :2], k=3, iou_threshold=0.95)
    assert fewer_boxes_than_k.indices.shape == (1, 3) and fewer_boxes_than_k.mask[0].tolist() == [True, True, False]


def test_square_proposals_land_on_planted_peaks():
    """LFD Sec. 3.2 on a 448 px image with a 14 x 14 map: the first regions are the 160 px squares on the two
    planted peaks, the next ones overlap them by at most the NMS threshold. Every region is centred on its cell
    ("each pixel in M corresponds to a region"), a border one reaching outside the image (padded)."""
    attention = torch.rand(2, 14, 14) * 0.1
    attention[0, 3, 4], attention[0, 10, 11] = 1.0, 0.9
    attention[1, 0, 13], attention[1, 7, 7] = 1.0, 0.8  # a corner peak: its box stays centred on the corner cell
    regions = propose_square_regions(attention, 448, 160, k=6, iou_threshold=0.25)
    centres = (regions.boxes[..., :2] + regions.boxes[..., 2:]) / 2
    assert torch.allclose(centres[0, 0], torch.tensor([4.5 * 32, 3.5 * 32]))
    assert torch.allclose(centres[0, 1], torch.tensor([11.5 * 32, 10.5 * 32]))
    assert torch.equal(regions.boxes[1, 0], torch.tensor([352., -64., 512., 96.]))  # centre (432, 16)
    assert torch.allclose(centres[1, 1], torch.tensor([7.5 * 32, 7.5 * 32]))
    assert regions.mask.all()
    sizes = regions.boxes[..., 2:] - regions.boxes[..., :2]
    assert torch.all(sizes == 160)
    # every centre is a cell centre (x, y = (i + 0.5) * 32)
    assert torch.allclose(torch.frac(centres / 32), torch.full_like(centres, 0.5))
    iou = box_iou(regions.boxes, regions.boxes)
    assert torch.all(iou.triu(1) <= 0.25 + 1e-6)
    shifted = propose_square_regions(attention, 448, 160, k=6, iou_threshold=0.25, border='shift')
    assert torch.equal(shifted.boxes[1, 0], torch.tensor([288., 0., 448., 160.]))  # the old behaviour, on request


def test_padded_border_region_crops_zeros_outside_and_keeps_its_cell_at_the_centre():
    """A corner region is zero outside the image and has its cell's pixel at the centre of the crop (shifting
    it inside, as before, moved the cell off-centre)."""
    image = torch.rand(1, 3, 64, 64) + 1.  # all values >= 1: any zero in the crop is padding
    boxes = anchor_boxes((4, 4), 64, [32], border='pad')  # 16 px cells, 32 px squares centred on them
    corner = boxes[0]
    assert torch.equal(corner, torch.tensor([-8., -8., 24., 24.]))
    crop = crop_regions(image, corner.view(1, 1, 4), 32)[0, 0]  # 1 px per input pixel
    # 8 px outside the image: zeros, except the pixel next to the border, which repeats the edge (roi_align)
    assert crop[:, :7, :].abs().max() == 0 and crop[:, :, :7].abs().max() == 0
    assert crop[:, 7:, 7:].min() >= 1
    torch.testing.assert_close(crop[:, 8:, 8:], image[0, :, :24, :24])
    with pytest.raises(ValueError, match='border'):
        anchor_boxes((4, 4), 64, [32], border='wrap')


def test_anchor_boxes_sizes_ratios_order_and_borders():
    """NTS-style anchors (SSANet): A = sizes x ratios boxes per cell, centred on it, width / height = ratio."""
    boxes = anchor_boxes((3, 4), (96, 128), sizes=[16, 32], aspect_ratios=[0.5, 1, 2], border='clip')
    assert boxes.shape == (3 * 4 * 6, 4)
    per_cell = boxes.view(3, 4, 2, 3, 4)
    centre = (per_cell[1, 2, ..., :2] + per_cell[1, 2, ..., 2:]) / 2  # cell (row 1, col 2): (80, 48) px
    assert torch.allclose(centre, torch.tensor([80., 48.]).expand(2, 3, 2))
    wh = per_cell[1, 2, ..., 2:] - per_cell[1, 2, ..., :2]
    assert torch.allclose(wh[..., 0] / wh[..., 1], torch.tensor([0.5, 1., 2.]).expand(2, 3))
    assert torch.allclose((wh[..., 0] * wh[..., 1]).sqrt(), torch.tensor([[16.], [32.]]).expand(2, 3))
    clipped = anchor_boxes((2, 2), (100, 100), [60], border='clip')
    assert torch.equal(clipped[0], torch.tensor([0., 0., 55., 55.]))  # centred at (25, 25), clipped at 0
    assert torch.equal(clipped[3], torch.tensor([45., 45., 100., 100.]))
    shifted = anchor_boxes((2, 2), (100, 100), [60])
    assert torch.equal(shifted[0], torch.tensor([0., 0., 60., 60.]))  # shifted inside, size kept
    assert torch.equal(anchor_boxes((1, 1), (50, 50), [80])[0], torch.tensor([0., 0., 50., 50.]))


def test_crop_regions_is_a_bilinear_zoom_of_the_box():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[8., 16., 40., 48.], [0., 0., 64., 64.]], [[20., 4., 60., 36.], [30., 30., 46., 62.]]])
    crops = crop_regions(images, boxes, (48, 48))
    assert crops.shape == (2, 2, 3, 48, 48)
    assert torch.allclose(crops[0, 1], F.interpolate(images[:1], size=(48, 48), mode='bilinear',
                                                     align_corners=False)[0], atol=1e-5)
    for b in range(2):
        for k in range(2):
            x1, y1, x2, y2 = boxes[b, k].long().tolist()
            expected = F.interpolate(images[b:b + 1, :, y1:y2, x1:x2], size=(48, 48), mode='bilinear',
                                     align_corners=False)[0]
            inner = (slice(None), slice(2, -2), slice(2, -2))  # the crop's border also sees outside pixels
            assert torch.allclose(crops[b, k][inner], expected[inner], atol=1e-5)
    identity = crop_regions(images, torch.tensor([[[0., 0., 64., 64.]]] * 2), 64)
    assert torch.allclose(identity[:, 0], images, atol=1e-5)


def test_crop_regions_magnifies_and_backpropagates_into_the_box_only():
    images = torch.zeros(1, 1, 64, 64)
    images[:, :, 20:28, 20:28] = 1.0  # an 8 px square inside the 32 px box below
    images.requires_grad_(True)
    crops = crop_regions(images, torch.tensor([[[8., 8., 40., 40.]]]), 64)  # 2x zoom
    assert (crops > 0.5).sum() == pytest.approx(4 * 64, rel=0.1)  # 16 x 16 px instead of 8 x 8
    crops.sum().backward()
    grad = images.grad[0, 0]
    assert grad[8:40, 8:40].abs().sum() > 0 and grad[:, 42:].abs().sum() == 0 and grad[42:].abs().sum() == 0


def test_crop_regions_under_autocast_and_channels_last():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[[4., 4., 20., 20.]], [[10., 2., 30., 22.]]])
    reference = crop_regions(images, boxes, 24)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        crops = crop_regions(images.to(memory_format=torch.channels_last), boxes, 24)
    assert torch.allclose(crops.float(), reference, atol=2e-2)


def test_mask_bounding_box():
    mask = torch.zeros(3, 8, 10, dtype=torch.bool)
    mask[0, 2:5, 3:7] = True
    mask[1, 7, 0] = True
    boxes = mask_bounding_box(mask)
    assert boxes[0].tolist() == [3, 2, 7, 5] and boxes[1].tolist() == [0, 7, 1, 8]
    assert boxes[2].tolist() == [0, 0, 10, 8]  # empty mask: the whole map
    in_pixels = mask_bounding_box(mask, image_size=(80, 100))
    assert in_pixels[0].tolist() == [30, 20, 70, 50] and in_pixels[2].tolist() == [0, 0, 100, 80]
