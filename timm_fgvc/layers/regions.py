""" Region proposals, batched fixed-K non-maximum suppression and crop-and-zoom

Shared by the methods that look at image regions:
- LFD (Sec. 3.2): every cell of the attention map proposes a fixed square region centred on it (160 px on a
  448 px image); rank by the map, NMS at IoU 0.25, keep m = 6; crop and zoom each to 224 px.
- CAA (Sec. 4.4): the bounding box of the Otsu mask, cropped and zoomed to the input size for the next scale.
- SSANet: anchors scored by a navigator, NMS, top K = 4 parts, and their scale candidates (Sec. 3.2).

Everything is batched and fixed-shape: NMS returns exactly K regions per image (padded, with a mask, when fewer
survive), boxes are `(x1, y1, x2, y2)` in continuous input-pixel coordinates (pixel i spans [i, i + 1]), and
crops come from one `torchvision.ops.roi_align` call over all B x K boxes.
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ['Regions', 'box_iou', 'anchor_boxes', 'nms_top_k', 'propose_square_regions', 'crop_regions',
           'mask_bounding_box', 'scale_candidates']

Size = Union[int, Tuple[int, int]]


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Regions(NamedTuple):
    """K regions per image, sorted by score; padded slots repeat the image's best box and have mask False."""
    boxes: Tensor  # [B, K, 4] (x1, y1, x2, y2) in input pixels
    scores: Tensor  # [B, K] proposal score; padded slots 0
    mask: Tensor  # [B, K] bool, True for a real region
    indices: Tensor  # [B, K] long, index of the region among the proposals


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, batched: `[..., N, 4]` and `[..., M, 4]` -> `[..., N, M]`."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp_min(0) * (boxes1[..., 3] - boxes1[..., 1]).clamp_min(0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp_min(0) * (boxes2[..., 3] - boxes2[..., 1]).clamp_min(0)
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[..., :, None] + area2[..., None, :] - inter).clamp_min(1e-12)


def anchor_boxes(map_size: Size, image_size: Size, sizes: Sequence[float], aspect_ratios: Sequence[float] = (1.,),
                 device=None, border: str = 'shift') -> Tensor:
    """Anchors centred on every cell of an `h x w` map over the image: `[h * w * A, 4]`, A = sizes x ratios.

    Each cell (row-major, as `map.flatten(-2)`) gets one box per (size, aspect ratio): width size * sqrt(ratio),
    height size / sqrt(ratio) (ratio = w / h), in input pixels; index = cell * A + size_index * R + ratio_index.
    LFD's proposals are one 160 px square per cell; SSANet's (as NTS-Net) several sizes and ratios per cell.
    A box that crosses the image border (`border`):
    - 'shift' (the default): moved inside, same size (so the zoom of its crop stays the same); a box larger than
      the image is then clipped;
    - 'clip': cut at the border;
    - 'pad': left as it is, centred on its cell and partly outside the image; `crop_regions` fills the outside
      with zeros (NTS-Net pads the image with zeros before cropping).
    """
    (h, w), (height, width) = _pair(map_size), _pair(image_size)
    size = torch.as_tensor(sizes, dtype=torch.float32, device=device)[:, None]
    ratio = torch.as_tensor(aspect_ratios, dtype=torch.float32, device=device)[None, :]
    box_w, box_h = (size * ratio.sqrt()).flatten(), (size / ratio.sqrt()).flatten()  # [A]
    cy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * height / h
    cx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * width / w
    cy, cx = torch.meshgrid(cy, cx, indexing='ij')
    x1 = cx.reshape(-1, 1) - box_w / 2  # [h * w, A]
    y1 = cy.reshape(-1, 1) - box_h / 2
    if border not in ('shift', 'clip', 'pad'):
        raise ValueError(f"Unknown border {border!r}; use 'shift', 'clip' or 'pad'.")
    if border == 'pad':
        return torch.stack([x1, y1, x1 + box_w, y1 + box_h], -1).reshape(-1, 4)
    if border == 'shift':
        x1 = torch.minimum(x1, width - box_w).clamp_min(0)
        y1 = torch.minimum(y1, height - box_h).clamp_min(0)
    boxes = torch.stack([x1, y1, x1 + box_w, y1 + box_h], -1).reshape(-1, 4)
    limits = torch.tensor([width, height, width, height], device=device, dtype=torch.float32)
    return torch.minimum(boxes.clamp_min(0), limits)


def nms_top_k(boxes: Tensor, scores: Tensor, k: int, iou_threshold: float,
              valid: Optional[Tensor] = None) -> Regions:
    """Greedy non-maximum suppression keeping the `k` best regions per image, batched and fixed-shape.

    boxes `[B, N, 4]` (or `[N, 4]`, shared by the batch), scores `[B, N]`, valid `[B, N]` bool (optional).
    Each of the k rounds takes every image's best remaining box and removes the boxes whose IoU with it is above
    `iou_threshold` (as `torchvision.ops.nms`, whose first k it equals). The rounds loop over the k output slots,
    never over images; an image with fewer than k surviving boxes (or fewer than k boxes at all) gets padded
    slots (mask False).
    """
    batch, num = scores.shape
    if boxes.ndim == 2:
        boxes = boxes.expand(batch, num, 4)
    remaining = scores.float().masked_fill(~valid, float('-inf')) if valid is not None else scores.float().clone()
    chosen, chosen_scores = [], []
    for _ in range(k):
        best = remaining.argmax(1, keepdim=True)  # [B, 1]
        chosen.append(best)
        chosen_scores.append(remaining.gather(1, best))
        best_box = boxes.gather(1, best[..., None].expand(-1, -1, 4))  # [B, 1, 4]
        suppressed = box_iou(best_box.float(), boxes.float())[:, 0] > iou_threshold
        remaining = remaining.masked_fill(suppressed, float('-inf')).scatter(1, best, float('-inf'))
    indices, top_scores = torch.cat(chosen, 1), torch.cat(chosen_scores, 1)
    mask = torch.isfinite(top_scores)
    indices = torch.where(mask, indices, indices[:, :1])  # pad with the best box (a valid crop)
    top_scores = torch.where(mask, top_scores, torch.zeros_like(top_scores))
    top_boxes = boxes.gather(1, indices[..., None].expand(-1, -1, 4))
    return Regions(boxes=top_boxes, scores=top_scores, mask=mask, indices=indices)


def propose_square_regions(attention: Tensor, image_size: Size, box_size: Size, k: int,
                           iou_threshold: float, border: str = 'pad') -> Regions:
    """LFD Sec. 3.2: each cell of `attention` `[B, h, w]` proposes a `box_size` square centred on it ("each pixel
    in M corresponds to a region"), scored by its attention value; greedy NMS keeps the k most discriminative.
    A border region reaches outside the image by default (`border='pad'`, NTS-Net's) or is moved inside it
    (`'shift'`, LFD's default) or cut (`'clip'`), see `anchor_boxes`."""
    box_h, box_w = _pair(box_size)
    boxes = anchor_boxes(attention.shape[-2:], image_size, [(box_h * box_w) ** 0.5], [box_w / box_h],
                         device=attention.device, border=border)
    return nms_top_k(boxes, attention.flatten(1), k, iou_threshold)


def crop_regions(images: Tensor, boxes: Tensor, output_size: Size, sampling_ratio: int = 1,
                 spatial_scale: float = 1.0) -> Tensor:
    """Crop `boxes` `[B, K, 4]` (input pixels) out of `images` `[B, C, H, W]` and resize each to `output_size`:
    `[B, K, C, oh, ow]`, one `roi_align` over all B x K boxes.

    With `sampling_ratio=1` this is a bilinear resize of the crop (`F.interpolate(..., 'bilinear',
    align_corners=False)`); a larger ratio averages ratio x ratio samples per output pixel (anti-aliasing when a
    box is shrunk). `images` may be a feature map with `spatial_scale` = map cells per input pixel (1 / stride).
    Gradients flow to the images, not to the boxes. A box reaching outside the image reads zeros there (roi_align
    gives 0 beyond half a pixel outside and repeats the edge pixel within it), i.e. zero padding.
    """
    batch, k = boxes.shape[:2]
    out_h, out_w = _pair(output_size)
    batch_index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)
    rois = torch.cat([batch_index[:, None], boxes.reshape(-1, 4)], 1).float()  # pixel boxes stay fp32
    crops = roi_align(images.float(), rois.detach(), (out_h, out_w), spatial_scale=spatial_scale,
                      sampling_ratio=sampling_ratio, aligned=True)
    return crops.to(images.dtype).view(batch, k, images.shape[1], out_h, out_w)


def mask_bounding_box(mask: Tensor, image_size: Optional[Size] = None) -> Tensor:
    """Bounding box of the True cells of masks `[B, h, w]`, `[B, 4]` (x1, y1, x2, y2), in image pixels when
    `image_size` is given (else in cells). An empty mask gives the whole image."""
    h, w = mask.shape[-2:]
    rows, cols = mask.any(-1), mask.any(-2)  # [B, h], [B, w]
    empty = ~rows.any(-1)
    arange_h = torch.arange(h, device=mask.device)
    arange_w = torch.arange(w, device=mask.device)
    y1 = torch.where(rows, arange_h, h).amin(-1)
    y2 = torch.where(rows, arange_h + 1, 0).amax(-1)
    x1 = torch.where(cols, arange_w, w).amin(-1)
    x2 = torch.where(cols, arange_w + 1, 0).amax(-1)
    boxes = torch.stack([x1, y1, x2, y2], -1).float()
    boxes = torch.where(empty[:, None], torch.tensor([0., 0., w, h], device=mask.device), boxes)
    if image_size is not None:
        height, width = _pair(image_size)
        boxes = boxes * torch.tensor([width / w, height / h, width / w, height / h], device=mask.device)
    return boxes


def scale_candidates(boxes: Tensor, centre: Tensor, num_scales: int = 5, alpha: float = 1.2,
                     image_size: Optional[Size] = None) -> Tensor:
    """SSANet's S scale candidates of every box (Sec. 3.2), `[B, K, S, 4]`, ordered from smallest to largest.

    boxes `[B, K, 4]`; centre `[B, 2]` (x, y): the centre of all the selected proposals. Relative to it, each box
    has a far vertex psi and a near vertex eta: the box is expanded by alpha^1 .. alpha^((S-1)/2) keeping psi
    fixed (growing towards the centre) and shrunk by alpha^-1 .. alpha^-((S-1)/2) keeping eta fixed; the middle
    candidate is the box itself. With `image_size`, candidates are clipped to the image.
    """
    if num_scales % 2 != 1:
        raise ValueError(f'num_scales must be odd (the box, then as many expanded as shrunk), got {num_scales}.')
    half = (num_scales - 1) // 2
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack([torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
                           torch.stack([x1, y2], -1), torch.stack([x2, y2], -1)], -2)  # [B, K, 4, 2]
    distance = (corners - centre[:, None, None, :]).square().sum(-1)  # [B, K, 4]
    far = corners.gather(2, distance.argmax(-1)[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]  # psi
    near = corners.gather(2, distance.argmin(-1)[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]  # eta
    exponents = torch.arange(-half, half + 1, device=boxes.device, dtype=boxes.dtype)
    factors = alpha ** exponents  # [S]: shrink ... 1 ... expand
    fixed = torch.where((exponents < 0)[None, None, :, None], near[:, :, None], far[:, :, None])  # [B, K, S, 2]
    opposite = torch.where(fixed == boxes[:, :, None, :2], boxes[:, :, None, 2:], boxes[:, :, None, :2])
    moved = fixed + factors[None, None, :, None] * (opposite - fixed)
    out = torch.cat([torch.minimum(fixed, moved), torch.maximum(fixed, moved)], -1)
    if image_size is not None:
        height, width = _pair(image_size)
        limits = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
        out = torch.minimum(out.clamp_min(0), limits)
    return out
