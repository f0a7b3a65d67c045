"""SSANet: Spatial-Scale Aligned Network.

Paper: "Spatial-Scale Aligned Network for Fine-Grained Recognition", L. Gao, H. Xu, C. Sun, J. Liu, Y.-W. Tai
(Tencent), 2020.

Pipeline (one batched pass, no loop over images or parts):
  image -> backbone -> navigator (NTS-Net style) scores anchors of several sizes and aspect ratios per cell ->
  NMS -> top K = 4 parts, part j = rank j (Sec. 3.1) -> each part cropped and zoomed to half the input side ->
  backbone -> part features f_ij -> shared part head (CE) + Morphological Alignment Constraint across the batch
  (MAC, Eq. 1-2) -> Discriminative Scale Mining: S = 5 scale candidates per part (expanded about the far vertex,
  shrunk about the near one), their features, circulant scale alignment, max over cyclic shifts (Eq. 6-7)
  -> Oriented Pooling of each part's feature map: 3 x 3 overlapping sub-patches, row / column max, four
  orientations, max over orientations (Eq. 9-13). Final logits = DSM + OP (parts only, no global feature).
Training has three stages (Sec. 3.4): (1) backbone, navigator, part head and DSM; (2) the OP head alone;
(3) the part network (backbone, navigator, part head) with DSM and OP fixed.

Choices where the paper is open (SPEC §6):
- The paper does not say how the proposal scorer learns: the navigator is trained as in NTS-Net, with a ranking
  (hinge) loss that orders the selected parts' scores as the part head's confidence in the true class.
- Anchors as NTS-Net's at 448 px (sizes 48, 96, 192 on maps of stride 32, 64, 128; scales 2^(1/3), 2^(2/3) and
  also 1 on the coarsest; ratios 0.667, 1, 1.5), scaled with the input size; NMS at IoU 0.25 as NTS-Net.
- MAC (Eq. 2, whose indices are garbled in the paper) as the SPEC reads it: for every ordered pair of samples,
  (1 / K) sum_j log(1 + sum_{m != j} exp(S_jm - S_jj)) with S the cosine similarity of part features;
  averaged over the pairs (not summed), weight lambda = 0.5.
- The centre that decides each part's far and near vertex is the mean centre of the K selected parts; the scale
  factor alpha is not given: 1.2. Candidate features: roi_align on the image's feature map (`candidate_features=
  'roi_align'`, the fast option the paper suggests) or the paper's separate crops (`'crops'`), each pooled to a
  D-vector (the paper flattens h x w maps; `dsm_pool_size` > 1 keeps that many cells, at that many times the
  parameters). One DSM filter bank per part (w_i), part responses summed.
- Eq. 7 is computed from the circulant rows in one matmul by default; the FFT form (SPEC §6, the paper's
  O(K S log S) remark) is `dsm_method='fft'`, equal to it, but ~20x slower at S = 5 because it transforms the
  whole filter bank on every forward (12 ms vs 270 ms at ResNet-50 sizes, batch 2, this CPU).
- OP runs on each part's feature map resized to 7 x 7 when it is not (the 224 px crops of the paper give 7 x 7);
  one OP classifier shared by the parts, part responses summed.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..layers import (anchor_boxes, circulant_alignment, crop_regions, nms_top_k, oriented_pooling,
                      scale_candidates)
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images, slot_cross_entropy
from ._builder import build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['SSANet', 'Navigator', 'CirculantScaleHead', 'mac_loss', 'ranking_loss']

# NTS-Net's anchors at 448 px: (base size, scales, aspect ratios) per navigator level
_ANCHORS_448 = (
    (48, (2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1, 1.5)),
    (96, (2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1, 1.5)),
    (192, (1, 2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1, 1.5)),
)
_OP_PATCH, _OP_GRID = 3, 3
_OP_MAP = (_OP_GRID - 1) * 2 + _OP_PATCH  # 7: the part map OP expects


class Navigator(nn.Module):
    """NTS-Net's proposal network: three levels (stride 1, 2, 4 on the feature map), one score per anchor."""

    def __init__(self, in_features: int, anchors_per_level: Sequence[int], hidden: int = 128):
        super().__init__()
        self.down = nn.ModuleList([
            nn.Conv2d(in_features, hidden, 3, padding=1),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
        ])
        self.score = nn.ModuleList([nn.Conv2d(hidden, n, 1) for n in anchors_per_level])

    def forward(self, feature_map: torch.Tensor) -> List[torch.Tensor]:
        """Per level, the anchor scores `[B, A, h, w]` (A anchors per cell; `propose` flattens them cell-major,
        in `anchor_boxes` order)."""
        scores, x = [], feature_map
        for down, score in zip(self.down, self.score):
            x = F.relu(down(x))
            scores.append(score(x))
        return scores


class CirculantScaleHead(nn.Module):
    """DSM classifier (Eq. 6-7): per part i a filter bank w_i `[C, S, D']`; a part's logit for class c is the
    best cyclic alignment of its S candidates with the S filter slots; parts are summed."""

    def __init__(self, num_parts: int, num_scales: int, in_features: int, num_classes: int, method: str = 'direct'):
        super().__init__()
        self.method = method  # 'direct' circulant rows or 'fft' (same values; direct is faster at S = 5)
        self.in_features = in_features
        self.out_features = num_classes
        self.weight = nn.Parameter(torch.empty(num_parts, num_classes, num_scales, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.weight, std=(num_scales * in_features) ** -0.5 / num_parts ** 0.5)

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        """candidates `[B, K, S, D']` -> logits `[B, C]`."""
        per_part = circulant_alignment(candidates, self.weight, self.method)  # [B, K, C], Eq. 6-7
        return per_part.sum(1) + self.bias


def mac_loss(part_features: torch.Tensor) -> torch.Tensor:
    """Morphological Alignment Constraint (Eq. 2, as the SPEC reads it), over every ordered pair of samples.

    part_features `[B, K, D]`: part j of sample xi should be more similar (cosine) to part j of sample tau than to
    tau's other parts: mean over pairs xi != tau of (1 / K) sum_j log(1 + sum_{m != j} exp(S_jm - S_jj)).
    """
    batch, parts = part_features.shape[:2]
    if batch < 2:
        return part_features.sum() * 0
    unit = F.normalize(part_features.float(), dim=-1)
    similarity = torch.einsum('xjd,tmd->xtjm', unit, unit)  # S_jm for every pair (xi, tau)
    positive = similarity.diagonal(dim1=-2, dim2=-1)  # S_jj: [B, B, K]
    off_diagonal = ~torch.eye(parts, dtype=torch.bool, device=part_features.device)
    margins = (similarity - positive[..., None]).masked_fill(~off_diagonal, float('-inf'))
    per_part = F.softplus(torch.logsumexp(margins, -1))  # log(1 + sum_m exp(S_jm - S_jj))
    pairs = ~torch.eye(batch, dtype=torch.bool, device=part_features.device)
    return per_part.mean(-1)[pairs].mean()


def ranking_loss(scores: torch.Tensor, confidence: torch.Tensor, margin: float = 1.) -> torch.Tensor:
    """NTS-Net's navigator loss: for every pair of selected parts where the part head is more confident in the
    true class for part a than for part b, the navigator must score a above b by `margin` (hinge)."""
    should_rank = confidence[:, :, None] > confidence[:, None, :]  # [B, K, K]: a above b
    hinge = F.relu(margin - (scores[:, :, None] - scores[:, None, :]))
    return (hinge * should_rank).sum() / should_rank.sum().clamp_min(1)


class SSANet(FGVCModel):
    """Spatial-Scale Aligned Network: anchor parts, MAC, circulant scale alignment (DSM) and oriented pooling.

    Args:
        backbone: timm CNN name.
        num_classes: classes of every head.
        num_parts: K parts kept after NMS (4).
        num_scales: S scale candidates per part (5, odd).
        scale_factor: alpha between neighbouring candidates (1.2).
        nms_threshold: IoU of the part NMS (0.25).
        mac_weight: lambda of Eq. 1 (0.5).
        candidate_features: 'roi_align' (shared feature map, fast) or 'crops' (separate crops, as the paper).
        dsm_pool_size: cells per side kept from a candidate's features for DSM (1: a pooled D-vector).
        part_scale: side of a zoomed part relative to the input side (224 / 448).
        dsm_method: Eq. 7 from the circulant rows ('direct', default) or by FFT ('fft'); same values, and the
            direct form is ~20x faster at S = 5 (the FFT form transforms the filter bank on every forward).
    """
    main_head = 'dsm'
    needs_classifier = True

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 1000,
            in_chans: int = 3,
            pretrained_backbone: Union[bool, str] = False,  # True: timm Hub weights; a path: a local file
            drop_rate: float = 0.,
            backbone_args: Optional[dict] = None,
            num_parts: int = 4,
            num_scales: int = 5,
            scale_factor: float = 1.2,
            nms_threshold: float = 0.25,
            mac_weight: float = 0.5,
            candidate_features: str = 'roi_align',
            dsm_pool_size: int = 1,
            part_scale: float = 0.5,
            dsm_method: str = 'direct',
    ):
        if candidate_features not in ('roi_align', 'crops'):
            raise ValueError(f"candidate_features must be 'roi_align' or 'crops', got {candidate_features!r}.")
        if num_scales % 2 != 1:
            raise ValueError(f'num_scales must be odd, got {num_scales}.')
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        self.num_parts = num_parts
        self.num_scales = num_scales
        self.scale_factor = scale_factor
        self.nms_threshold = nms_threshold
        self.mac_weight = mac_weight
        self.candidate_features = candidate_features
        self.dsm_pool_size = dsm_pool_size
        self.dsm_method = dsm_method
        self.part_scale = part_scale
        self.navigator = Navigator(self.backbone_features, [len(s) * len(r) for _, s, r in _ANCHORS_448])
        dim = self.backbone_features
        self.add_head('dsm', dim * dsm_pool_size ** 2)
        self.add_head('op', _OP_GRID * _OP_PATCH ** 2 * dim)
        self.add_head('part', dim)
        self.num_features = self.head_hidden_size = num_parts * (num_scales * dim * dsm_pool_size ** 2
                                                                  + 4 * _OP_GRID * _OP_PATCH ** 2 * dim)

    def _make_head(self, name: str, in_features: int, num_classes: int) -> nn.Module:
        if name == 'dsm':
            return CirculantScaleHead(self.num_parts, self.num_scales, in_features, num_classes, self.dsm_method)
        head = super()._make_head(name, in_features, num_classes)
        if name == 'op' and isinstance(head, nn.Linear):
            # the K parts' responses are summed: start each at 1 / sqrt(K) of a plain linear layer's scale
            nn.init.normal_(head.weight, std=(in_features * self.num_parts) ** -0.5)
            nn.init.zeros_(head.bias)
        return head

    def part_size(self, input_size: int) -> int:
        return max(self.min_input_size, round(input_size * self.part_scale))

    # --- parts ------------------------------------------------------------------------------------------------
    def propose(self, feature_map: torch.Tensor, image_size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """Navigator scores of every anchor, NMS, the top K parts (Sec. 3.1); scores keep their gradient."""
        height, width = image_size
        side = min(height, width)
        boxes, scores = [], []
        for (size, scales, ratios), level in zip(_ANCHORS_448, self.navigator(feature_map)):
            sizes = [size * s * side / 448 for s in scales]
            boxes.append(anchor_boxes(level.shape[-2:], image_size, sizes, ratios, device=feature_map.device))
            scores.append(level.permute(0, 2, 3, 1).flatten(1))  # cell-major, anchor-minor
        boxes, scores = torch.cat(boxes), torch.cat(scores, 1)
        parts = nms_top_k(boxes, scores.detach(), self.num_parts, self.nms_threshold)
        return dict(part_boxes=parts.boxes, part_mask=parts.mask, part_scores=scores.gather(1, parts.indices))

    def _candidate_features(self, x: torch.Tensor, feature_map: torch.Tensor,
                            candidates: torch.Tensor) -> torch.Tensor:
        """Features of every scale candidate `[B, K, S, D * p^2]` (p = dsm_pool_size)."""
        batch, parts, scales = candidates.shape[:3]
        pool = self.dsm_pool_size
        if self.candidate_features == 'roi_align':  # cells of the image's own feature map
            cells = crop_regions(feature_map, candidates.flatten(1, 2), 2 * pool, sampling_ratio=2,
                                 spatial_scale=feature_map.shape[-1] / x.shape[-1]).flatten(0, 1)
        else:  # the paper's separate crops through the backbone
            crops = crop_regions(x, candidates.flatten(1, 2), self.part_size(min(x.shape[-2:])))
            cells = self.backbone.forward_features(crops.flatten(0, 1))
        cells = F.adaptive_avg_pool2d(cells, pool)
        return cells.reshape(batch, parts, scales, -1)

    def _forward_parts(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        check_images(x, self.in_chans, self.min_input_size)
        batch, image_size = x.shape[0], x.shape[-2:]
        feature_map = self.backbone.forward_features(x)
        out = self.propose(feature_map, image_size)
        boxes = out['part_boxes']
        zoomed = crop_regions(x, boxes, self.part_size(min(image_size)))  # [B, K, C, z, z]
        part_maps = self.backbone.forward_features(zoomed.flatten(0, 1))
        part_features = part_maps.mean((2, 3)).view(batch, self.num_parts, -1)  # f_ij
        centre = ((boxes[..., :2] + boxes[..., 2:]) / 2).mean(1)  # the centre of the selected parts
        candidates = scale_candidates(boxes, centre, self.num_scales, self.scale_factor, image_size)
        candidate_features = self._candidate_features(x, feature_map, candidates)
        if part_maps.shape[-1] != _OP_MAP or part_maps.shape[-2] != _OP_MAP:
            part_maps = F.interpolate(part_maps, size=(_OP_MAP, _OP_MAP), mode='bilinear', align_corners=False)
        oriented = oriented_pooling(part_maps, _OP_PATCH, _OP_GRID).view(batch, self.num_parts, 4, -1)
        out.update(part_features=part_features, candidates=candidates, candidate_features=candidate_features,
                   oriented=oriented, zoomed_parts=zoomed)
        return out

    def _op_logits(self, oriented: torch.Tensor) -> torch.Tensor:
        """Eq. 13 per part (max over the four orientations), summed over parts: `[B, K, 4, F] -> [B, C]`."""
        return self.heads['op'](oriented).amax(2).sum(1)

    # --- timm surface ------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, K, S * D' + 4 F]`: per part, its scale candidates' features and its four oriented poolings."""
        out = self._forward_parts(x)
        return torch.cat([out['candidate_features'].flatten(2), out['oriented'].flatten(2)], -1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return x.flatten(1)
        batch, parts = x.shape[:2]
        split = self.num_scales * self.heads['dsm'].in_features
        candidates = x[..., :split].reshape(batch, parts, self.num_scales, -1)
        oriented = x[..., split:].reshape(batch, parts, 4, -1)
        return self.heads['dsm'](candidates) + self._op_logits(oriented)  # final = DSM + OP

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        out = self._forward_parts(x)
        logits = {
            'dsm': self.heads['dsm'](out['candidate_features']),  # Eq. 7
            'op': self._op_logits(out['oriented']),  # Eq. 13
            'part': self.heads['part'](out['part_features']),  # [B, K, C], Eq. 1's FC(f_ij)
        }
        logits['final'] = logits['dsm'] + logits['op']
        extras = {k: out[k] for k in ('part_boxes', 'part_mask', 'part_scores', 'part_features', 'candidates')}
        return FGVCOutput(logits=logits, main='final', attention=_box_maps(out['part_boxes'], x.shape[-2:]),
                          extras=extras)

    def loss(self, output: FGVCOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """`loss_part` (Eq. 1's CE per part), `loss_mac` (lambda * Eq. 2), `loss_rank` (navigator), `loss_dsm` and
        `loss_op` (CE on each module's logits); `loss` is their sum, and each stage picks its terms."""
        self.check_logits(output)
        part_logits = output.logits['part'].float()
        confidence = part_logits.log_softmax(-1).gather(-1, target[:, None, None].expand(-1, self.num_parts, 1))
        terms = {
            'loss_part': slot_cross_entropy(part_logits, target, output.extras['part_mask']),
            'loss_mac': self.mac_weight * mac_loss(output.extras['part_features']),
            'loss_rank': ranking_loss(output.extras['part_scores'].float(), confidence[..., 0].detach()),
            'loss_dsm': F.cross_entropy(output.logits['dsm'].float(), target),
            'loss_op': F.cross_entropy(output.logits['op'].float(), target),
        }
        return {'loss': sum(terms.values()), **terms}

    def training_stages(self) -> List[TrainingStage]:
        """Sec. 3.4: (1) DSM with the backbone, navigator and part head; (2) OP alone; (3) the part network with
        DSM and OP fixed. Epochs are not given per stage (the lr drops after 60 epochs): the run's epochs."""
        part_net = ('backbone.', 'navigator.', 'heads.part.')
        part_terms = ('loss_part', 'loss_mac', 'loss_rank')
        return [
            TrainingStage('dsm', trainable=part_net + ('heads.dsm.',), loss_terms=part_terms + ('loss_dsm',)),
            TrainingStage('op', trainable=('heads.op.',), loss_terms=('loss_op',)),
            TrainingStage('part_net', trainable=part_net, loss_terms=part_terms),
        ]

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """The K parts as box masks in input-image coordinates, `[B, K, H, W]` (1 inside part k's box). Details:
        `region_boxes` `[B, K, 4]` (x1, y1, x2, y2 px, ranked: part j = rank j), `region_scores` (navigator),
        `region_mask`, the scale candidates `[B, K, S, 4]` and the zoomed parts."""
        out = self._forward_parts(x)
        maps = _box_maps(out['part_boxes'], x.shape[-2:])
        if not return_details:
            return maps
        return maps, dict(region_boxes=out['part_boxes'], region_scores=out['part_scores'].detach(),
                          region_mask=out['part_mask'], scale_candidates=out['candidates'],
                          zoomed_regions=out['zoomed_parts'])


def _box_maps(boxes: torch.Tensor, size) -> torch.Tensor:
    """1 inside each box, 0 outside: `[B, K, H, W]` from `[B, K, 4]` pixel boxes."""
    height, width = size
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    b = boxes.detach().float()
    inside_y = (ys >= b[..., 1, None]) & (ys < b[..., 3, None])  # [B, K, H]
    inside_x = (xs >= b[..., 0, None]) & (xs < b[..., 2, None])  # [B, K, W]
    return (inside_y[..., :, None] & inside_x[..., None, :]).float()


def _create_ssanet(variant: str, pretrained: bool = False, **kwargs) -> SSANet:
    return build_fgvc_model(SSANet, variant, pretrained, **kwargs)


_PAPER = dict(
    classifier=('heads.dsm', 'heads.op', 'heads.part'),
    paper_name='Spatial-Scale Aligned Network for Fine-Grained Recognition',
    paper_ids='Gao, Xu, Sun, Liu, Tai 2020',
)

default_cfgs = generate_default_cfgs({
    **tagged_cfgs('ssanet_resnet50', ('cub200', 'cars', 'aircraft'), **_PAPER),
    **tagged_cfgs('ssanet_resnet101', ('cub200',), **_PAPER),
    **tagged_cfgs('ssanet_resnet18', ('cub200',), **_PAPER),
    'ssanet_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),
    **tagged_cfgs('ssanet_swin_tiny', ('cub200',), **_PAPER,
                  first_conv='backbone.patch_embed.proj', interpolation='bicubic'),
})


@register_model
def ssanet_resnet50(pretrained: bool = False, **kwargs) -> SSANet:
    """SSANet with a ResNet-50 backbone (the paper's)."""
    model_args = dict(backbone='resnet50')
    return _create_ssanet('ssanet_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def ssanet_resnet101(pretrained: bool = False, **kwargs) -> SSANet:
    """SSANet with a ResNet-101 backbone."""
    model_args = dict(backbone='resnet101')
    return _create_ssanet('ssanet_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def ssanet_resnet18(pretrained: bool = False, **kwargs) -> SSANet:
    """SSANet with a ResNet-18 backbone (small, CPU-friendly)."""
    model_args = dict(backbone='resnet18')
    return _create_ssanet('ssanet_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def ssanet_tiny(pretrained: bool = False, **kwargs) -> SSANet:
    """SSANet on timm's 0.4 M-parameter `test_resnet`: CPU demo and tests."""
    model_args = dict(backbone='test_resnet')
    return _create_ssanet('ssanet_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def ssanet_swin_tiny(pretrained: bool = False, **kwargs) -> SSANet:
    """SSANet with a Swin-T backbone: a 14 x 14 map at 448 px (stride 32, as the ResNets its anchors are
    laid out for)."""
    model_args = dict(backbone='swin_tiny_patch4_window7_224', backbone_args=dict(img_size=448))
    return _create_ssanet('ssanet_swin_tiny', pretrained, **dict(model_args, **kwargs))
