"""LFD: Learning to Focus and Discriminate for fine-grained classification.

Paper: "Learning to Focus and Discriminate for Fine-grained Classification", Z. Feng, K. Fu, Q. Zhao
(Sichuan University), 2019.

Pipeline (one batched pass, no loop over images or regions):
  image -> shared backbone -> feature maps Z -> GAP -> image-level feature F^I -> image head (Eq. 1)
  Z, image-head weights W -> max over all C class activation maps (Eq. 2) -> Gaussian smoothing -> attention M
  -> every cell of M proposes a square region centred on it (5 cells: 160 px at 448) -> rank by M, NMS (IoU
  0.25), keep m = 6 -> crop and zoom each by 224 / 160 (one roi_align) -> shared backbone -> region features F^R_r
  -> shared region head -> hybrid feature F = [F^I, F^R_1 .. F^R_l] (l = 4) -> hybrid head (Sec. 3.1).
  Loss: softmax cross-entropy on the image head, every region and the hybrid head (Sec. 3.3). `forward` returns
  the hybrid logits (the image and region heads are used in training only).

Choices where the paper is open (SPEC §6):
- The Gaussian smoothing of M has no stated width: sigma = 1 feature cell (`smoothing_sigma`).
- Region size is tied to the feature stride: "each pixel in M corresponds to a region", and the paper's 160 px
  regions on a 448 px input are 5 cells of ResNet-50's stride 32 (`region_cells=5`); the zoomed side is 224 / 160
  of the region's (`zoom_factor`). So NMS at IoU 0.25 acts in cells as in the paper at any input size: regions
  of neighbouring cells never both survive (5-cell squares 1 cell apart: IoU 0.67), cells 3 apart along an axis
  (IoU 0.25) or 2 apart diagonally (0.22) can.
  The alternative, sizes relative to the input (`region_scale=160 / 448`), breaks this at other sizes: at 96 px
  with stride 32 the regions were 34 px on a 3 x 3 grid of 32 px cells and NMS never suppressed anything.
  Minimum input: the feature map must hold m = 6 regions apart (`regions_apart`: 5-cell squares 3 cells apart).
  Moved inside the image (the default, below) they need 11 cells per side (352 px at stride 32, 176 px with
  `output_stride=16`); the paper's 448 px gives 14. On the 8 x 8 map of 128 px at stride 16 only 2 x 2 fit, and
  NMS leaves slots empty (masked copies of region 1); `region_cells=3` (48 px: the paper's share of the image,
  160 / 448, and of the map, 5 / 14) holds 3 x 3, but trains worse there (transfer protocol, seed 0: 55.29 vs 56.37
  with 5 cells, which keep 2.5 regions per bird): the default stays 5. Smaller inputs run with a warning.
- A region that would cross the image border is moved inside it (`border='shift'`, default: the paper crops the
  regions "from the input image"); `border='pad'` keeps it centred on its cell and zero-pads outside the image
  (NTS-Net, whose m and l LFD follows, pads before cropping). Measured (transfer protocol, resnet18 at 128 px,
  8 x 8 grid): NMS pushes regions 2-4 to the borders, where padded regions are half zeros; with 'shift' the
  region head rises from 34.7 to 49.5 and the hybrid from 55.51 / 55.51 to 56.37 / 56.88 (seeds 0 / 1; seed 2
  55.15).
- M is computed without gradient: the region selection is a discrete choice, and crops do not back-propagate
  into box coordinates (the paper trains only through softmax losses). It is computed in float32 with autocast
  off, so bf16 training ranks the regions as float32 would.
- The region term is the mean cross-entropy over the m regions (regions NMS could not fill are masked); each
  term has weight 1.
"""
import math
import warnings
from typing import Dict, Optional, Union

import torch
from timm.models import generate_default_cfgs, register_model

from ..layers import crop_regions, gaussian_smooth, maps_in_image, max_class_response, propose_square_regions
from ._base import FGVCModel, FGVCOutput, check_images
from ._builder import VIT_BACKBONE_CFG, build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['LFD']


class LFD(FGVCModel):
    """Learning to Focus and Discriminate: image, region and hybrid heads on one shared timm backbone.

    Args:
        backbone: timm model name: a CNN, or a ViT / Swin (read as a spatial map, see `create_backbone`).
        num_classes: classes of every head.
        num_regions: m, regions kept after NMS (6).
        num_hybrid_regions: l, top regions whose features join the hybrid feature (4).
        region_cells: side of a proposed region in feature cells (5: 160 px at stride 32, the paper); the default
            unless `region_scale` is given.
        region_scale: instead, the side relative to the input side (160 / 448 keeps the paper's ratio).
        zoom_factor: side of a zoomed region relative to the region's (224 / 160).
        border: 'shift' (regions moved inside the image, default) or 'pad' (centred on their cell, zeros outside
            the image, NTS-Net's).
        nms_threshold: IoU above which a lower-ranked region is suppressed (0.25).
        smoothing_sigma: Gaussian smoothing of the attention map, in feature cells (1; 0 = none).
        label_smoothing: per-head label smoothing, e.g. `{'hybrid': 0.1}`.
        share_backbone: the paper's one backbone for the image and its regions (Sec. 3.3); False gives the zoomed
            regions a backbone of their own (`region_backbone`, a copy of the image backbone at the start): an
            ablation outside the paper.
    """
    main_head = 'hybrid'
    trained_by_forward_train_only = ('heads.image.', 'heads.region.')  # the attention M's source, the region head
    needs_classifier = True

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 1000,
            in_chans: int = 3,
            pretrained_backbone: Union[bool, str] = False,  # True: timm Hub weights; a path: a local file
            drop_rate: float = 0.,
            backbone_args: Optional[dict] = None,
            num_regions: int = 6,
            num_hybrid_regions: int = 4,
            region_cells: Optional[float] = None,
            region_scale: Optional[float] = None,
            zoom_factor: float = 224 / 160,
            border: str = 'shift',
            nms_threshold: float = 0.25,
            smoothing_sigma: float = 1.,
            label_smoothing: Optional[Dict[str, float]] = None,
            share_backbone: bool = True,
    ):
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        if not 1 <= num_hybrid_regions <= num_regions:
            raise ValueError(f'num_hybrid_regions (l = {num_hybrid_regions}) must be between 1 and num_regions '
                             f'(m = {num_regions}).')
        if region_cells is not None and region_scale is not None:
            raise ValueError('Give region_cells (region side in feature cells) or region_scale (relative to the '
                             'input side), not both.')
        if region_cells is None and region_scale is None:
            region_cells = 5.
        if region_scale is not None and not 0 < region_scale <= 1:
            raise ValueError(f'region_scale must be in (0, 1], got {region_scale}.')
        if region_cells is not None and region_cells <= 0:
            raise ValueError(f'region_cells must be positive, got {region_cells}.')
        if border not in ('pad', 'shift'):
            raise ValueError(f"Unknown border {border!r}; use 'pad' or 'shift'.")
        self.num_regions = num_regions
        self.num_hybrid_regions = num_hybrid_regions
        self.region_cells = region_cells
        self.region_scale = region_scale
        self.zoom_factor = zoom_factor
        self.border = border
        self.nms_threshold = nms_threshold
        self.smoothing_sigma = smoothing_sigma
        self.share_backbone = share_backbone
        self.region_backbone = None if share_backbone else self.add_backbone('region_backbone')
        self.add_head('image', self.backbone_features)
        self.add_head('region', self.backbone_features)  # one head shared by every region (Sec. 3.3)
        self.add_head('hybrid', (1 + num_hybrid_regions) * self.backbone_features)
        self.num_features = self.head_hidden_size = (1 + num_hybrid_regions) * self.backbone_features
        self.label_smoothing.update(label_smoothing or {})

    def regions_apart(self, grid: int, region_cells: float) -> int:
        """How many regions of `region_cells` fit on a `grid`-cell map with no two above the NMS IoU: a square
        lattice whose step is the smallest offset that brings two regions to the threshold (0.6 of a side at IoU
        0.25). Regions centred on their cells ('pad') may be centred on any cell; regions moved inside the image
        ('shift') only as far as the image holds them. The paper's 5-cell regions fit 4 x 4 on its 14 x 14 map;
        on an 8 x 8 map they fit 3 x 3 with 'pad' but 2 x 2 with 'shift', fewer than m = 6."""
        step = region_cells * (1 - self.nms_threshold) / (1 + self.nms_threshold)
        span = grid - 1 if self.border == 'pad' else max(0., grid - region_cells)
        return (math.floor(span / step + 1e-6) + 1) ** 2

    @property
    def min_meaningful_input(self) -> Optional[int]:
        """Smallest input side (px) whose feature map holds the m regions apart (`regions_apart`); None with
        `region_scale`."""
        if self.region_cells is None:
            return None
        grid = 1
        while self.regions_apart(grid, min(grid, self.region_cells)) < self.num_regions:
            grid += 1
        return grid * self.feature_reduction

    def region_size(self, input_size: int) -> int:
        """Side of a proposed region in input pixels: region_cells x the feature stride (160 at stride 32), at most
        the input side; or input_size x region_scale."""
        if self.region_scale is not None:
            return max(1, round(input_size * self.region_scale))
        return max(1, min(input_size, round(self.region_cells * self.feature_reduction)))

    def zoom_size(self, input_size: int) -> int:
        """Side of a zoomed region in pixels (224 for a 160 px region), at least the backbone's minimum input."""
        return max(self.min_input_size, round(self.region_size(input_size) * self.zoom_factor))

    def _check_grid(self, grid: int, input_size: int) -> None:
        cells = self.region_size(input_size) / self.feature_reduction
        fit = self.regions_apart(grid, cells)
        if fit < self.num_regions:
            stride = self.feature_reduction  # suggest the next stride down, as far as timm dilates (8)
            finer = (f"a smaller backbone stride (backbone_args={{'output_stride': {stride // 2}}}), "
                     if stride > 8 else '')
            warnings.warn(
                f'LFD: on the {grid} x {grid} feature map of a {input_size} px input, regions of {cells:g} cells '
                f'({self.region_size(input_size)} px, border={self.border!r}) fit only about {fit} apart at NMS IoU '
                f'{self.nms_threshold:g}, fewer than m = {self.num_regions}: the slots NMS cannot fill repeat '
                f'region 1 (masked in the region loss; the hybrid feature takes them as they are). Use a larger input '
                f'(>= {self.min_meaningful_input or "?"} px), {finer}smaller regions (region_cells) or fewer '
                '(num_regions).', stacklevel=3)

    def attention(self, feature_map: torch.Tensor) -> torch.Tensor:
        """M: max over all class activation maps of the image head (Eq. 2), Gaussian smoothed; `[B, h, w]`, in
        float32 with autocast off (a bf16 M ties and reorders close regions)."""
        with torch.no_grad(), torch.autocast(feature_map.device.type, enabled=False):
            maps = max_class_response(feature_map.float(), self.heads['image'].weight.float())  # Eq. 2
            return gaussian_smooth(maps, self.smoothing_sigma)

    def _focus(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Image-level pass, attention, region proposals and the zoomed regions' features (Sec. 3.1-3.2)."""
        check_images(x, self.in_chans, self.min_input_size)
        batch, side = x.shape[0], min(x.shape[-2:])
        feature_map = self.backbone.forward_features(x)  # Z
        image_feature = feature_map.mean((2, 3))  # F^I (GAP)
        attention = self.attention(feature_map)
        self._check_grid(min(attention.shape[-2:]), side)
        regions = propose_square_regions(attention, x.shape[-2:], self.region_size(side), self.num_regions,
                                         self.nms_threshold, border=self.border)
        zoomed = crop_regions(x, regions.boxes, self.zoom_size(side))  # [B, m, C, z, z]
        region_backbone = self.backbone if self.region_backbone is None else self.region_backbone
        region_maps = region_backbone.forward_features(zoomed.flatten(0, 1))
        region_features = region_maps.mean((2, 3)).view(batch, self.num_regions, -1)  # F^R_r
        hybrid = torch.cat([image_feature, region_features[:, :self.num_hybrid_regions].flatten(1)], 1)  # F
        return dict(image_feature=image_feature, region_features=region_features, hybrid_feature=hybrid,
                    attention_grid=attention, region_boxes=regions.boxes, region_scores=regions.scores,
                    region_mask=regions.mask, zoomed_regions=zoomed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The hybrid feature F = [F^I, F^R_1 .. F^R_l] as `[B, (1 + l) D, 1, 1]` (already pooled, so
        `forward_head` gives the hybrid logits)."""
        return self._focus(x)['hybrid_feature'][..., None, None]

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        out = self._focus(x)
        logits = {
            'image': self.heads['image'](out['image_feature']),  # Eq. 1
            'region': self.heads['region'](out['region_features']),  # [B, m, C], masked by region_mask
            'hybrid': self.pooled_head(out['hybrid_feature']),
        }
        extras = {k: out[k] for k in ('attention_grid', 'region_boxes', 'region_scores', 'region_mask',
                                      'zoomed_regions')}
        return FGVCOutput(logits=logits, main='hybrid', attention=self._image_attention(out, x), extras=extras)

    @staticmethod
    def _image_attention(out: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return maps_in_image(out['attention_grid'][:, None], x.shape[-2:])

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """The attention M (Eq. 2, smoothed) in input-image coordinates, `[B, 1, H, W]` in [0, 1].

        Details: the m regions (`region_boxes` `[B, m, 4]` (x1, y1, x2, y2) px, `region_scores`, `region_mask`),
        the zoomed regions `[B, m, C, z, z]` and M on the feature grid.
        """
        out = self._focus(x)
        attention = self._image_attention(out, x)
        if not return_details:
            return attention
        keys = ('attention_grid', 'region_boxes', 'region_scores', 'region_mask', 'zoomed_regions')
        return attention, {k: out[k] for k in keys}


def _create_lfd(variant: str, pretrained: bool = False, **kwargs) -> LFD:
    return build_fgvc_model(LFD, variant, pretrained, **kwargs)


_PAPER = dict(
    classifier=('heads.hybrid', 'heads.image', 'heads.region'),
    paper_name='Learning to Focus and Discriminate for Fine-grained Classification',
    paper_ids='Learning to Focus and Discriminate for Fine-Grained Classification (Feng, Fu, Zhao, 2019)',
)

default_cfgs = generate_default_cfgs({
    **tagged_cfgs('lfd_resnet50', ('cub200', 'aircraft', 'cars'), **_PAPER),
    **tagged_cfgs('lfd_resnet18', ('cub200',), **_PAPER),
    'lfd_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),  # 12 x 12 cells at stride 8
    **tagged_cfgs('lfd_vit_small', ('cub200',), **_PAPER, **VIT_BACKBONE_CFG),
})


@register_model
def lfd_resnet50(pretrained: bool = False, **kwargs) -> LFD:
    """LFD with a ResNet-50 backbone (the paper's)."""
    model_args = dict(backbone='resnet50')
    return _create_lfd('lfd_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def lfd_resnet18(pretrained: bool = False, **kwargs) -> LFD:
    """LFD with a ResNet-18 backbone (small, CPU-friendly)."""
    model_args = dict(backbone='resnet18')
    return _create_lfd('lfd_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def lfd_tiny(pretrained: bool = False, **kwargs) -> LFD:
    """LFD on timm's 0.4 M-parameter `test_resnet` at output stride 8: CPU demo and tests (a 96 px input gives
    12 x 12 cells, 40 px regions zoomed to 56 px; at stride 32 it would be 3 x 3 cells, below LFD's minimum)."""
    model_args = dict(backbone='test_resnet', backbone_args=dict(output_stride=8))
    return _create_lfd('lfd_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def lfd_vit_small(pretrained: bool = False, **kwargs) -> LFD:
    """LFD with a ViT-S/16 backbone: its 28 x 28 patch tokens at 448 px propose the regions, 10 cells (160 px,
    the paper's region at stride 16) each; the 224 px region zooms go through the same backbone (position
    embeddings resampled)."""
    model_args = dict(backbone='vit_small_patch16_224', backbone_args=dict(img_size=448), region_cells=10)
    return _create_lfd('lfd_vit_small', pretrained, **dict(model_args, **kwargs))
