"""LFD: Learning to Focus and Discriminate for fine-grained classification.

Paper: "Learning to Focus and Discriminate for Fine-grained Classification", Z. Feng, K. Fu, Q. Zhao
(Sichuan University), 2019.

Pipeline (one batched pass, no loop over images or regions):
  image -> shared backbone -> feature maps Z -> GAP -> image-level feature F^I -> image head (Eq. 1)
  Z, image-head weights W -> max over all C class activation maps (Eq. 2) -> Gaussian smoothing -> attention M
  -> every cell of M proposes a square region centred on it (160 px at 448) -> rank by M, NMS (IoU 0.25), keep
  m = 6 -> crop and zoom each to 224 px (one roi_align) -> shared backbone -> region features F^R_r -> shared
  region head -> hybrid feature F = [F^I, F^R_1 .. F^R_l] (l = 4) -> hybrid head (Sec. 3.1).
  Loss: softmax cross-entropy on the image head, every region and the hybrid head (Sec. 3.3). `forward` returns
  the hybrid logits (the image and region heads are used in training only).

Choices where the paper is open (SPEC §6):
- The Gaussian smoothing of M has no stated width: sigma = 1 feature cell (`smoothing_sigma`).
- Region and zoom sizes scale with the input: 160 / 448 and 224 / 448 of the input side (`region_scale`,
  `zoom_scale`), so the 448 px paper setting is exact and smaller inputs (the CPU variants) keep the geometry.
- A region that crosses the image border is shifted inside (same size and zoom); the paper does not say.
- M is computed without gradient: the region selection is a discrete choice, and crops do not back-propagate
  into box coordinates (the paper trains only through softmax losses).
- The region term is the mean cross-entropy over the m regions (regions NMS could not fill are masked); each
  term has weight 1.
"""
from typing import Dict, Optional, Union

import torch
from timm.models import generate_default_cfgs, register_model

from ..layers import crop_regions, gaussian_smooth, maps_in_image, max_class_response, propose_square_regions
from ._base import FGVCModel, FGVCOutput, check_images
from ._builder import build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['LFD']


class LFD(FGVCModel):
    """Learning to Focus and Discriminate: image, region and hybrid heads on one shared timm backbone.

    Args:
        backbone: timm CNN name (any model whose `forward_features` is a spatial map).
        num_classes: classes of every head.
        num_regions: m, regions kept after NMS (6).
        num_hybrid_regions: l, top regions whose features join the hybrid feature (4).
        region_scale: side of a proposed region relative to the input side (160 / 448).
        zoom_scale: side of a zoomed region relative to the input side (224 / 448).
        nms_threshold: IoU above which a lower-ranked region is suppressed (0.25).
        smoothing_sigma: Gaussian smoothing of the attention map, in feature cells (1; 0 = none).
        label_smoothing: per-head label smoothing, e.g. `{'hybrid': 0.1}`.
    """
    main_head = 'hybrid'
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
            region_scale: float = 160 / 448,
            zoom_scale: float = 224 / 448,
            nms_threshold: float = 0.25,
            smoothing_sigma: float = 1.,
            label_smoothing: Optional[Dict[str, float]] = None,
    ):
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        if not 1 <= num_hybrid_regions <= num_regions:
            raise ValueError(f'num_hybrid_regions (l = {num_hybrid_regions}) must be between 1 and num_regions '
                             f'(m = {num_regions}).')
        if not 0 < region_scale <= 1:
            raise ValueError(f'region_scale must be in (0, 1], got {region_scale}.')
        self.num_regions = num_regions
        self.num_hybrid_regions = num_hybrid_regions
        self.region_scale = region_scale
        self.zoom_scale = zoom_scale
        self.nms_threshold = nms_threshold
        self.smoothing_sigma = smoothing_sigma
        self.add_head('image', self.backbone_features)
        self.add_head('region', self.backbone_features)  # one head shared by every region (Sec. 3.3)
        self.add_head('hybrid', (1 + num_hybrid_regions) * self.backbone_features)
        self.num_features = self.head_hidden_size = (1 + num_hybrid_regions) * self.backbone_features
        self.label_smoothing.update(label_smoothing or {})

    def region_size(self, input_size: int) -> int:
        """Side of a proposed region in input pixels (160 at 448)."""
        return max(1, round(input_size * self.region_scale))

    def zoom_size(self, input_size: int) -> int:
        """Side of a zoomed region in pixels (224 at 448), at least the backbone's minimum input size."""
        return max(self.min_input_size, round(input_size * self.zoom_scale))

    def attention(self, feature_map: torch.Tensor) -> torch.Tensor:
        """M: max over all class activation maps of the image head (Eq. 2), Gaussian smoothed; `[B, h, w]`."""
        with torch.no_grad():
            maps = max_class_response(feature_map.float(), self.heads['image'].weight.float())  # Eq. 2
            return gaussian_smooth(maps, self.smoothing_sigma)

    def _focus(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Image-level pass, attention, region proposals and the zoomed regions' features (Sec. 3.1-3.2)."""
        check_images(x, self.in_chans, self.min_input_size)
        batch, side = x.shape[0], min(x.shape[-2:])
        feature_map = self.backbone.forward_features(x)  # Z
        image_feature = feature_map.mean((2, 3))  # F^I (GAP)
        attention = self.attention(feature_map)
        regions = propose_square_regions(attention, x.shape[-2:], self.region_size(side), self.num_regions,
                                         self.nms_threshold)
        zoomed = crop_regions(x, regions.boxes, self.zoom_size(side))  # [B, m, C, z, z]
        region_maps = self.backbone.forward_features(zoomed.flatten(0, 1))
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
    paper_ids='Feng, Fu, Zhao 2019',
)

default_cfgs = generate_default_cfgs({
    **tagged_cfgs('lfd_resnet50', ('cub200', 'aircraft', 'cars'), **_PAPER),
    **tagged_cfgs('lfd_resnet18', ('cub200',), **_PAPER),
    'lfd_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),
    **tagged_cfgs('lfd_vit_small', ('cub200',), **_PAPER,
                  first_conv='backbone.patch_embed.proj', interpolation='bicubic',
                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
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
    """LFD on timm's 0.4 M-parameter `test_resnet`: CPU demo and tests."""
    model_args = dict(backbone='test_resnet')
    return _create_lfd('lfd_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def lfd_vit_small(pretrained: bool = False, **kwargs) -> LFD:
    """LFD with a ViT-S/16 backbone: its 28 x 28 patch tokens at 448 px propose the regions; the 224 px
    region zooms go through the same backbone (position embeddings resampled)."""
    model_args = dict(backbone='vit_small_patch16_224', backbone_args=dict(img_size=448))
    return _create_lfd('lfd_vit_small', pretrained, **dict(model_args, **kwargs))
