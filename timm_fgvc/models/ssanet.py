"""SSANet: Spatial-Scale Aligned Network.

Paper: "Spatial-Scale Aligned Network for Fine-Grained Recognition", L. Gao, H. Xu, C. Sun, J. Liu, Y.-W. Tai
(Tencent, Megvii, Peking University), 2020.

Pipeline (one batched pass, no loop over images or parts):
  image -> backbone -> navigator (NTS-Net style, on the detached feature map) scores anchors of several sizes and
  aspect ratios per cell -> one NMS per anchor size -> P = 14 proposals (2 per size) ranked by score, each cropped,
  zoomed to half the input side, through the backbone and classified by the part head (in training; inference
  crops only the parts) -> the top K = 4 are the parts, part j = rank j (Sec. 3.1) -> part features f_ij ->
  Morphological Alignment Constraint across the batch (MAC, Eq. 1-2) -> Discriminative Scale Mining: S = 5 scale
  candidates per part (expanded about the far vertex, shrunk about the near one), each cropped separately, its
  h x w feature map flattened (Fig. 3), circulant scale alignment, max over cyclic shifts (Eq. 6-7) -> Oriented
  Pooling of each part's feature map: 3 x 3 overlapping sub-patches, row / column max, four orientations, max over
  orientations (Eq. 9-13). Final logits = DSM + OP (parts only, no global feature).
Training has three stages (Sec. 3.4): (1) backbone, navigator, part head and DSM; (2) the OP head alone;
(3) the part network (backbone, navigator, part head) with DSM and OP fixed.

Choices where the paper is open (SPEC §6):
- Not as the paper, stated here (session 28's review): OP reads each navigator part's own map by default, not "the
  proposals with the aligned scale" (Sec. 3, 3.4); which scale candidate DSM aligns depends on the class (the
  arg-max shift of Eq. 7 per class): `op_input='aligned'` reads it for the class DSM predicts. The DSM and OP
  heads learn at lr / (their input cells) by default (`flat_head_lr='fan_in'`, see its argument), where Sec. 4.1
  gives 1e-3 "for all training parameters". Sec. 4.1's stage-2 "3 times lower" lr of the "global fully-connected
  classifier" (SSANet has none: parts only) and Cars' lr step after 30 epochs of the OP stage are not implemented:
  every stage takes the run's schedule.
- Precision: the navigator scores anchors and Eq. 7 aligns scales in float32, also under autocast (bf16 scores
  tie and NMS then picks other parts); so under autocast the logits are float32 (with half weights: the weights'
  dtype), where S3N's, LFD's and HSM's follow autocast.
- The paper does not say how the proposal scorer learns: the navigator is trained as in NTS-Net's released code
  (github.com/yangze0930/NTS-Net, `core/model.py`): it scores the detached backbone map
  (`proposal_net(rpn_feature.detach())`), so only its own ranking (hinge) loss trains it and that loss never
  reaches the backbone; the loss orders the proposals' scores as the part head's confidence in the true class,
  summed over the ordered pairs and averaged over the images (NTS's `ranking_loss`).
- Proposals: NTS-Net classifies (part CE and ranking loss) its top PROPOSAL_NUM = 6 proposals and uses the top
  CAT_NUM = 4 downstream; SSANet names only K = 4 parts ("marginal improvements when the part number is larger
  than 4") and its Eq. 1 sums the part CE over those K. The default `num_proposals=14` is 2 per anchor size for
  the per-size NMS below (NTS's 6 is `proposal_selection='per_level', num_proposals=6`);
  `num_proposals=num_parts` is Eq. 1 read literally. MAC, DSM and OP always use the top `num_parts`.
- Proposal selection (the paper says "NMS ... top-K"): one NMS per anchor size, P / 7 proposals from each, all P
  ranked by the navigator's score, the parts are the top K (`proposal_selection='per_size'`, default; a part
  may overlap a part of another size, as a scale candidate overlaps its part). NTS-Net's NMS over every anchor
  at once (`'global'`) lets the navigator's initial scores fix the part size: the finest level has 6x the anchors
  and 2x the score spread at init, so all P proposals come from it, and the ranking loss, which only orders the
  proposals it is shown, never finds a better size. Measured (transfer protocol, resnet18 at 128 px, 4 x 4 DSM
  maps): with 'global' every proposal stays a 17-22 px anchor through training, the part head scores 14% and the
  model 24.8% (seed 0); with one NMS per anchor level ('per_level') the parts grow to 45-53 px (the 20 px anchors
  rank last) and the model scores 41.8 / 43.0% (seeds 0 / 1). The same trap holds within a level: the anchors of
  one cell overlap with an IoU of 0.4 or more, so the NMS keeps one per cell and the ranking loss never compares a
  cell's sizes. With 12 proposals (4 per level; the parts the top 4) every part is the coarsest level's smallest
  anchor (55 px, never its 69 or 87 px ones, at either seed) and the model scores 44.6 / 41.7% (seeds 0 / 1;
  `bench/probes.py ssanet-parts`). One NMS per anchor size (7 groups; `num_proposals` at least 7) shows the
  ranking loss every size of a cell, which it then compares: with 14 proposals (2 per size) the parts grow to the
  87 and 69 px anchors (seed 0 ranks the proposals by size, 87, 87, 69, 69, 55, ...) and the model scores
  47.2 / 44.1 / 46.1 / 44.3% (seeds 0-3; 45.4 against 43.2 with 12 proposals per level over seeds 0-1; 47.7% at seed 0
  with 112 px parts and roi_align candidates). With 7 (one per size) the 4 parts are 4 different sizes, two of
  them 44-55 px, and the model scores 40.8% (seed 0; 42.4% with 112 px parts).
- Anchors as NTS-Net's at 448 px (sizes 48, 96, 192 on maps of stride 32, 64, 128; scales 2^(1/3), 2^(2/3) and
  also 1 on the coarsest; ratios 0.667, 1, 1.5), scaled with the input size; NMS at IoU 0.25 as NTS-Net.
- MAC (Eq. 2, whose indices are garbled in the paper) as the SPEC reads it: for a pair of samples (xi, tau),
  (1 / K) sum_j log(1 + sum_{m != j} exp(S_jm - S_jj)) with S the cosine similarity of part features.
  Normalisation (`mac_reduction`): Eq. 1 sums the part CE over the B * K parts and MAC over all B * B ordered
  pairs (its limits include xi = tau); our part CE is the mean over the parts, so the default 'paper' divides
  Eq. 1's MAC sum by the same B * K, which keeps the paper's weight of MAC relative to the part CE (lambda * B / K
  times the mean over pairs); 'mean' is the mean over the pairs xi != tau. lambda = 0.5.
- The centre that decides each part's far and near vertex is the mean centre of the K selected parts; the scale
  factor alpha is not given: 1.2. Candidate features (`candidate_features`): 'crops' (default, the paper's Sec.
  4.1 / Fig. 3: each candidate cropped and zoomed like its part, through the backbone, its h x w map flattened;
  `dsm_pool_size=7` is the 7 x 7 map of the paper's 224 px crops; larger maps are average-pooled to it, smaller
  ones repeated, with a warning: set `dsm_pool_size` to the map's side, as `ssanet_tiny` does) or 'roi_align'
  (the fast option the paper suggests in Sec. 4.1: cells of the whole image's feature map; pooled to one vector
  per candidate, the five scales' features are nearly equal, ~0.995 cosine, and the max over shifts degenerates
  to a linear head, so use it with `dsm_pool_size` > 1). The paper's h x w maps make the DSM head
  K * C * S * D * h * w parameters (401 M for ResNet-50, 200 classes: 1.6 GB in fp32; ResNet-18: 100 M).
  One DSM filter bank per part (w_i), part responses summed. A candidate equal to its part (the middle one)
  reuses the part's feature map.
- Eq. 7 is computed from the circulant rows in one matmul by default; the FFT form (SPEC §6, the paper's
  O(K S log S) remark) is `dsm_method='fft'`, equal to it, but ~20x slower at S = 5 because it transforms the
  whole filter bank on every forward (12 ms vs 270 ms at ResNet-50 sizes, batch 2, this CPU).
- OP runs on each part's feature map resized to 7 x 7 when it is not (the 224 px crops of the paper give 7 x 7);
  one OP classifier shared by the parts, part responses summed.
- Stage 3 ("keeping the parameters of DSM and OP fixed, we fine-tune part-net"): the DSM and OP heads are frozen
  but their losses stay on, back-propagated through the frozen heads into the backbone. The final prediction is
  DSM + OP on backbone features; fine-tuning the backbone on the part losses alone moves those features under
  heads that can no longer follow, and freezing the backbone instead leaves stage 3 nothing to train but the
  navigator and part head, which still move the parts under the fixed heads. Measured (ssanet_tiny with
  roi_align candidates, 4 synthetic classes, 64 training images, SGD lr 5e-3, batch 32: 40 steps of stage 1,
  30 of stage 2, then 30 of stage 3): the final logits' cross-entropy on the training images went 8.1 -> 20.4
  with the part losses alone, -> 13.8 with the backbone frozen, -> 5.8 with the DSM and OP losses kept (test
  images 44.5 -> 48.8 / 42.1 / 7.4). Accuracy does not back the choice in so short a run: training images
  0.70 -> 0.59 / 0.63 / 0.44, the 32 test images 0.34 -> 0.34 / 0.44 / 0.25 (noise of about +-0.09), and stage 2
  had already left the OP logits overconfident. The choice rests on the paper's "fixed" (parameters, not losses)
  and on the drift the part losses alone cause, not on a measured accuracy gain; a real run should confirm it.
"""
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..layers import (anchor_boxes, circulant_alignment, circulant_shifts, crop_regions, nms_top_k,
                      oriented_pooling, scale_candidates)
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images, class_indices
from ._builder import SWIN_BACKBONE_CFG, build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['SSANet', 'Navigator', 'CirculantScaleHead', 'anchor_sizes', 'mac_loss', 'ranking_loss']

# NTS-Net's anchors at 448 px: (base size, scales, aspect ratios) per navigator level
_ANCHORS_448 = (
    (48, (2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1, 1.5)),
    (96, (2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1, 1.5)),
    (192, (1, 2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1, 1.5)),
)


def anchor_sizes(image_side: float) -> List[List[float]]:
    """Per navigator level, the anchors' sides in input px: NTS-Net's 448 px sizes scaled to `image_side`."""
    return [[size * s * image_side / 448 for s in scales] for size, scales, _ in _ANCHORS_448]


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
        in `anchor_boxes` order). In float32 with autocast off, also with half weights: bf16 scores tie (about
        one in seven of 240 anchors) and NMS and the ranking then pick other parts than float32 does."""
        scores = []
        with torch.autocast(feature_map.device.type, enabled=False):
            x = feature_map.float()
            for down, score in zip(self.down, self.score):
                x = F.relu(_conv_float32(down, x))
                scores.append(_conv_float32(score, x))
        return scores


def _conv_float32(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` in float32: the module itself when its weights are (its hooks and wrappers run), else its weights
    cast (half weights)."""
    if conv.weight.dtype == torch.float32:
        return conv(x)
    bias = None if conv.bias is None else conv.bias.float()
    return F.conv2d(x, conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


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
        per_part = circulant_alignment(candidates, self.weight, self.method)  # [B, K, C], Eq. 6-7, in float32
        return (per_part.sum(1) + self.bias).to(torch.promote_types(candidates.dtype, self.weight.dtype))


def mac_loss(part_features: torch.Tensor, reduction: str = 'paper') -> torch.Tensor:
    """Morphological Alignment Constraint (Eq. 1-2, as the SPEC reads Eq. 2's garbled indices).

    part_features `[B, K, D]`: part j of sample xi should be more similar (cosine) to part j of sample tau than to
    tau's other parts: L_m(xi, tau) = (1 / K) sum_j log(1 + sum_{m != j} exp(S_jm - S_jj)).
    `reduction='paper'`: Eq. 1's sum over every ordered pair, xi = tau included as its limits say (there S_jj = 1
    and the term pushes a sample's parts apart), divided by B * K, the count of Eq. 1's part CE terms, so that
    next to a part CE averaged over the parts MAC keeps the paper's relative weight. `'mean'`: the mean over the
    pairs xi != tau (B / K times weaker; 0 for a batch of one).
    """
    if reduction not in ('paper', 'mean'):
        raise ValueError(f"reduction must be 'paper' or 'mean', got {reduction!r}.")
    batch, parts = part_features.shape[:2]
    unit = F.normalize(part_features.float(), dim=-1)
    similarity = torch.einsum('xjd,tmd->xtjm', unit, unit)  # S_jm for every pair (xi, tau)
    positive = similarity.diagonal(dim1=-2, dim2=-1)  # S_jj: [B, B, K]
    off_diagonal = ~torch.eye(parts, dtype=torch.bool, device=part_features.device)
    margins = (similarity - positive[..., None]).masked_fill(~off_diagonal, float('-inf'))
    per_part = F.softplus(torch.logsumexp(margins, -1))  # log(1 + sum_m exp(S_jm - S_jj))
    per_pair = per_part.mean(-1)  # Eq. 2: L_m(f_xi, f_tau), [B, B]
    if reduction == 'paper':
        return per_pair.sum() / (batch * parts)  # Eq. 1's sum over xi, tau, over Eq. 1's B * K CE terms
    if batch < 2:
        return part_features.sum() * 0
    pairs = ~torch.eye(batch, dtype=torch.bool, device=part_features.device)
    return per_pair[pairs].mean()


def ranking_loss(scores: torch.Tensor, confidence: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 margin: float = 1.) -> torch.Tensor:
    """NTS-Net's navigator loss (`ranking_loss` of its `core/model.py`): for every pair of proposals where the part
    head is more confident in the true class for a than for b, the navigator must score a above b by `margin`
    (hinge); summed over the pairs and averaged over the images, as NTS-Net. `mask` `[B, P]` drops padded slots.
    """
    should_rank = confidence[:, :, None] > confidence[:, None, :]  # [B, P, P]: a above b
    if mask is not None:
        should_rank = should_rank & mask[:, :, None] & mask[:, None, :]
    hinge = F.relu(margin - (scores[:, :, None] - scores[:, None, :]))
    return (hinge * should_rank).sum() / scores.shape[0]


class SSANet(FGVCModel):
    """Spatial-Scale Aligned Network: anchor parts, MAC, circulant scale alignment (DSM) and oriented pooling.

    Args:
        backbone: timm model name: a CNN, or a ViT / Swin (read as a spatial map, see `create_backbone`).
        num_classes: classes of every head.
        num_parts: K parts (the top K proposals) for MAC, DSM and OP (4, the paper's and NTS-Net's CAT_NUM).
        num_proposals: proposals kept after NMS, classified by the part head and ranked by the navigator loss
            (14: 2 per anchor size; NTS-Net's PROPOSAL_NUM is 6; the paper's Eq. 1 classifies the K parts only:
            `num_proposals=num_parts`).
        num_scales: S scale candidates per part (5, odd).
        scale_factor: alpha between neighbouring candidates (1.2).
        nms_threshold: IoU of the part NMS (0.25).
        proposal_selection: 'per_size' (default: NMS within each of the 7 anchor sizes, P / 7 proposals from
            each, all P ranked by score, so the parts are the top K of them; proposals of different sizes may
            overlap), 'per_level' (NMS within each of the 3 anchor levels) or 'global' (NTS-Net's: NMS over every
            anchor, the top P scores). With 'global' the navigator's initial scores decide the part size for good:
            the finest level has 6x the anchors and 2x the score spread at init, its top scores win, and the ranking
            loss only orders the proposals it is shown, so it never finds that a larger anchor is more informative
            (module docstring: 24.8% vs 42.4% top-1 in the transfer protocol). 'per_level' hides the sizes of one
            cell in turn (a cell's anchors overlap above the NMS threshold, so one NMS per level keeps only the size
            the navigator already prefers); 'per_size' (`num_proposals` at least 7) shows them all (module
            docstring: 45.4% vs 43.2% top-1 at 14 vs 12 proposals).
        mac_weight: lambda of Eq. 1 (0.5).
        mac_reduction: 'paper' (Eq. 1's sum over all sample pairs, over its B * K part CE terms) or 'mean' (mean
            over pairs of distinct samples, B / K times weaker); see `mac_loss`.
        candidate_features: 'crops' (separate crops through the backbone, the paper's; default) or 'roi_align'
            (cells of the shared image feature map; fast, the paper's suggested speed-up).
        dsm_pool_size: cells per side of a candidate's feature map kept for DSM (7: the paper's 7 x 7 map of a
            224 px crop, flattened; 1: one pooled D-vector). The DSM head has K * C * S * D * p^2 parameters.
        part_scale: side of a zoomed part relative to the input side (224 / 448).
        dsm_method: Eq. 7 from the circulant rows ('direct', default) or by FFT ('fft'); same values, and the
            direct form is ~20x faster at S = 5 (the FFT form transforms the filter bank on every forward).
        flat_head_lr: 'fan_in' (default): the DSM and OP heads learn at the new layers' lr divided by the cells
            they flatten (S * p^2 for DSM, 3 * 3^2 for OP); 'same': at the new layers' lr. The paper gives no
            initialisation or normalisation for these heads; a linear head's logit step under SGD grows with its
            input's squared norm, so at the same lr they take steps ~80-250x a pooled head's. Measured (transfer
            protocol, resnet18 at 128 px, 4 x 4 maps, lr 0.02, 'same'): DSM cross-entropy 7.15 after epoch 1 (chance
            3.91), part CE at chance for 2 epochs (the DSM gradient into the backbone is 7x the part CE's); with
            'fan_in' the DSM CE falls from the first epoch (3.68 -> 2.65 in stage 1).
        heads_on_frozen_backbone: the DSM and OP heads read the backbone's features detached, so their losses train
            the heads alone and the backbone learns from the part CE and MAC (False: the DSM and OP losses also
            train the backbone). The paper reads both ways: Sec. 3.4 trains "the DSM module initialized with
            ILSVRC2012 pre-trained model" in stage 1, Sec. 4.1 says "the network weights of the backbone are frozen
            when we train the DSM module and OP module". The DSM loss sums 20 separately cropped candidates (K x S),
            so at the transfer protocol's initialisation it pulls the backbone with 5x the plain backbone's CE
            gradient (6.5x the part CE's); measured, the pull does not hurt (transfer protocol, seed 0: 42.98%
            with the heads on the frozen backbone, 41.83% without, at 6 proposals per level; 45.14% vs 47.16% at the
            default 14 per size), so the default keeps Sec. 3.4's stage 1.
        fixed_parts: an ablation, attention off: K boxes `(x1, y1, x2, y2)` as fractions of the input's width and
            height, the parts of every image in place of the navigator's (which then goes unused; the part head
            classifies these K). None (default): the navigator's parts. Measured (transfer protocol, seeds 0-2):
            the seed-0 model's modal layout for every image scores 45.1% against the navigator's 45.8%, paired
            -0.7 +- 1.4 SE: at 128 px the navigator's placement adds nothing measurable.
        op_input: what OP pools: 'part' (default: each navigator part's own map) or 'aligned' ("the proposals with
            the aligned scale are further input the OP module", Sec. 3 and 3.4: per part the scale candidate that
            Eq. 7's best shift, for the class DSM predicts, puts in the middle filter slot; with crops only).
    """
    main_head = 'dsm'
    trained_by_forward_train_only = ('navigator.', 'heads.part.')  # the navigator and the part head
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
            num_proposals: int = 14,
            num_scales: int = 5,
            scale_factor: float = 1.2,
            nms_threshold: float = 0.25,
            proposal_selection: str = 'per_size',
            mac_weight: float = 0.5,
            mac_reduction: str = 'paper',
            candidate_features: str = 'crops',
            dsm_pool_size: int = 7,
            part_scale: float = 0.5,
            dsm_method: str = 'direct',
            flat_head_lr: str = 'fan_in',
            heads_on_frozen_backbone: bool = False,
            fixed_parts: Optional[Sequence[Sequence[float]]] = None,
            op_input: str = 'part',
    ):
        if flat_head_lr not in ('fan_in', 'same'):
            raise ValueError(f"flat_head_lr must be 'fan_in' or 'same', got {flat_head_lr!r}.")
        if op_input not in ('part', 'aligned'):
            raise ValueError(f"op_input must be 'part' or 'aligned', got {op_input!r}.")
        if op_input == 'aligned' and candidate_features != 'crops':
            raise ValueError("op_input='aligned' reads the aligned candidate's own map: it needs "
                             "candidate_features='crops'.")
        if candidate_features not in ('roi_align', 'crops'):
            raise ValueError(f"candidate_features must be 'roi_align' or 'crops', got {candidate_features!r}.")
        if mac_reduction not in ('paper', 'mean'):
            raise ValueError(f"mac_reduction must be 'paper' or 'mean', got {mac_reduction!r}.")
        if proposal_selection not in ('global', 'per_level', 'per_size'):
            raise ValueError(f"proposal_selection must be 'global', 'per_level' or 'per_size', "
                             f"got {proposal_selection!r}.")
        groups = {'global': 1, 'per_level': len(_ANCHORS_448),
                  'per_size': sum(len(scales) for _, scales, _ in _ANCHORS_448)}[proposal_selection]
        if num_proposals < groups:
            raise ValueError(f"proposal_selection={proposal_selection!r} keeps at least one proposal per group "
                             f"({groups} groups): num_proposals must be at least {groups}, got {num_proposals}.")
        if num_scales % 2 != 1:
            raise ValueError(f'num_scales must be odd, got {num_scales}.')
        if num_proposals < num_parts:
            raise ValueError(f'num_proposals ({num_proposals}) must be at least num_parts ({num_parts}): the parts '
                             'are the top num_parts of the proposals.')
        if fixed_parts is not None:
            fixed_parts = [[float(v) for v in box] for box in fixed_parts]
            if len(fixed_parts) != num_parts or any(
                    len(b) != 4 or not 0 <= b[0] < b[2] <= 1 or not 0 <= b[1] < b[3] <= 1 for b in fixed_parts):
                raise ValueError(f'fixed_parts must be num_parts ({num_parts}) boxes (x1, y1, x2, y2) as fractions '
                                 f'of the input, 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1; got {fixed_parts}.')
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        self.num_parts = num_parts
        self.fixed_parts = fixed_parts
        self.num_proposals = num_proposals
        self.num_scales = num_scales
        self.scale_factor = scale_factor
        self.nms_threshold = nms_threshold
        self.proposal_selection = proposal_selection
        self.mac_weight = mac_weight
        self.mac_reduction = mac_reduction
        self.candidate_features = candidate_features
        self.op_input = op_input
        self.dsm_pool_size = dsm_pool_size
        self.dsm_method = dsm_method
        self.part_scale = part_scale
        self.navigator = Navigator(self.backbone_features, [len(s) * len(r) for _, s, r in _ANCHORS_448])
        dim = self.backbone_features
        self.add_head('dsm', dim * dsm_pool_size ** 2)
        self.add_head('op', _OP_GRID * _OP_PATCH ** 2 * dim)
        self.add_head('part', dim)
        # the DSM and OP heads read flattened maps (S x p^2 and 3 x 3^2 cells of D channels), so one SGD step moves
        # their logits ~cells times as far as a pooled head's: at the new-layer lr they diverge (class-docstring)
        self.flat_head_lr = flat_head_lr
        self.heads_on_frozen_backbone = heads_on_frozen_backbone
        self.param_group_rules = {} if flat_head_lr == 'same' else {
            'heads.dsm.': {'lr_scale': 1. / (num_scales * dsm_pool_size ** 2)},
            'heads.op.': {'lr_scale': 1. / (_OP_GRID * _OP_PATCH ** 2)}}
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
        """Navigator scores of every anchor, NMS (per anchor size by default), the top P proposals (Sec. 3.1), ranked
        by score: the first K are the parts.

        The navigator sees the feature map detached, as NTS-Net's `proposal_net(rpn_feature.detach())`: its
        ranking loss trains the navigator alone and never pulls the backbone. Scores keep their gradient. With
        `fixed_parts`: the K given boxes for every image, no navigator (zero scores).
        """
        if self.fixed_parts is not None:
            batch, (height, width) = feature_map.shape[0], image_size
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            boxes = (torch.tensor(self.fixed_parts) * scale).to(feature_map.device)
            return dict(proposal_boxes=boxes.expand(batch, self.num_parts, 4),
                        proposal_mask=torch.ones(batch, self.num_parts, dtype=torch.bool, device=feature_map.device),
                        proposal_scores=torch.zeros(batch, self.num_parts, device=feature_map.device))
        boxes, scores = [], []
        levels = zip(anchor_sizes(min(image_size)), _ANCHORS_448, self.navigator(feature_map.detach()))
        for sizes, (_, _, ratios), level in levels:
            boxes.append(anchor_boxes(level.shape[-2:], image_size, sizes, ratios, device=feature_map.device))
            scores.append(level.permute(0, 2, 3, 1).flatten(1))  # cell-major, anchor-minor
        if self.proposal_selection == 'global':
            boxes, scores = torch.cat(boxes), torch.cat(scores, 1)
            proposals = nms_top_k(boxes, scores.detach(), self.num_proposals, self.nms_threshold)
            return dict(proposal_boxes=proposals.boxes, proposal_mask=proposals.mask,
                        proposal_scores=scores.gather(1, proposals.indices))
        if self.proposal_selection == 'per_size':  # split each level by anchor size (index: size-major, ratio-minor)
            boxes, scores = _split_by_size(boxes, scores)
        # one NMS per group (anchor level or size), so the ranking loss always sees every group and can compare them
        groups = len(boxes)
        counts = [self.num_proposals // groups + (i < self.num_proposals % groups) for i in range(groups)]
        picked = [nms_top_k(b, s.detach(), n, self.nms_threshold) for b, s, n in zip(boxes, scores, counts)]
        group_boxes = torch.cat([p.boxes for p in picked], 1)
        group_scores = torch.cat([s.gather(1, p.indices) for s, p in zip(scores, picked)], 1)
        mask = torch.cat([p.mask for p in picked], 1)
        rank = group_scores.detach().float().masked_fill(~mask, float('-inf')).argsort(1, descending=True)
        return dict(proposal_boxes=group_boxes.gather(1, rank[..., None].expand(-1, -1, 4)),
                    proposal_mask=mask.gather(1, rank), proposal_scores=group_scores.gather(1, rank))

    def _zoomed_feature_maps(self, x: torch.Tensor, proposals: torch.Tensor, candidates: torch.Tensor):
        """One backbone pass over the zoomed proposals `[B, P, 4]` (P: all the classified proposals in training,
        the K parts otherwise) and, for 'crops', the scale candidates that are not their part (the middle candidate
        is the part itself): `(crops [B, P, C, z, z], maps [B, P, D, h, w], candidate maps [B, K, S, D, h, w] or
        None)`."""
        batch, parts, scales = candidates.shape[:3]
        middle = scales // 2
        boxes, used = proposals, proposals.shape[1]
        if self.candidate_features == 'crops':
            others = torch.cat([candidates[:, :, :middle], candidates[:, :, middle + 1:]], 2)  # [B, K, S - 1, 4]
            boxes = torch.cat([proposals, others.flatten(1, 2)], 1)
        crops = crop_regions(x, boxes, self.part_size(min(x.shape[-2:])))  # [B, N, C, z, z]
        maps = self.backbone.forward_features(crops.flatten(0, 1))
        maps = maps.view(batch, -1, *maps.shape[1:])
        proposal_maps = maps[:, :used]
        if self.candidate_features != 'crops':
            return crops, proposal_maps, None
        others = maps[:, used:].unflatten(1, (parts, scales - 1))
        candidate_maps = torch.cat([others[:, :, :middle], proposal_maps[:, :parts, None], others[:, :, middle:]], 2)
        return crops[:, :used], proposal_maps, candidate_maps

    def _candidate_features(self, x: torch.Tensor, feature_map: torch.Tensor, candidates: torch.Tensor,
                            candidate_maps: Optional[torch.Tensor]) -> torch.Tensor:
        """Features of every scale candidate, its h x w map flattened: `[B, K, S, D * p^2]` (p = dsm_pool_size)."""
        batch, parts, scales = candidates.shape[:3]
        pool = self.dsm_pool_size
        if candidate_maps is None:  # 'roi_align': cells of the image's own feature map
            cells = crop_regions(feature_map, candidates.flatten(1, 2), 2 * pool, sampling_ratio=2,
                                 spatial_scale=feature_map.shape[-1] / x.shape[-1]).flatten(0, 1)
        else:  # the paper's separate crops through the backbone
            cells = candidate_maps.flatten(0, 2)
            if min(cells.shape[-2:]) < pool:
                warnings.warn(
                    f'SSANet candidate maps are {tuple(cells.shape[-2:])} cells, fewer than dsm_pool_size={pool} per '
                    f'side: cells are repeated, which enlarges the DSM input (and its effective learning rate) with no '
                    f'new information. Set dsm_pool_size={min(cells.shape[-2:])} for this input size, or feed larger '
                    'images.', stacklevel=2)
        cells = F.adaptive_avg_pool2d(cells, pool)
        return cells.reshape(batch, parts, scales, -1)

    def _forward_parts(self, x: torch.Tensor, classify_proposals: bool = False) -> Dict[str, torch.Tensor]:
        """The parts and their features. `classify_proposals`: crop all P proposals for the part head and the
        ranking loss (training); otherwise only the K parts, all the prediction reads (P - K fewer crops)."""
        check_images(x, self.in_chans, self.min_input_size)
        batch, image_size = x.shape[0], x.shape[-2:]
        feature_map = self.backbone.forward_features(x)
        out = self.propose(feature_map, image_size)
        boxes = out['proposal_boxes'][:, :self.num_parts]  # part j = rank j
        centre = ((boxes[..., :2] + boxes[..., 2:]) / 2).mean(1)  # the centre of the selected parts
        candidates = scale_candidates(boxes, centre, self.num_scales, self.scale_factor, image_size)
        used = self.num_proposals if classify_proposals else self.num_parts
        zoomed, proposal_maps, candidate_maps = self._zoomed_feature_maps(x, out['proposal_boxes'][:, :used],
                                                                          candidates)
        proposal_features = proposal_maps.mean((-2, -1))  # [B, P, D]
        candidate_features = self._candidate_features(x, feature_map, candidates, candidate_maps)
        part_maps = proposal_maps[:, :self.num_parts]
        if self.op_input == 'aligned':
            part_maps = self._aligned_candidate_maps(candidate_features, candidate_maps)
        part_maps = part_maps.flatten(0, 1)
        if part_maps.shape[-1] != _OP_MAP or part_maps.shape[-2] != _OP_MAP:
            part_maps = F.interpolate(part_maps, size=(_OP_MAP, _OP_MAP), mode='bilinear', align_corners=False)
        oriented = oriented_pooling(part_maps, _OP_PATCH, _OP_GRID).view(batch, self.num_parts, 4, -1)
        out.update(part_boxes=boxes, proposal_features=proposal_features,
                   part_features=proposal_features[:, :self.num_parts],  # f_ij
                   candidates=candidates, candidate_features=candidate_features, oriented=oriented,
                   zoomed_parts=zoomed)
        return out

    def _aligned_candidate_maps(self, candidate_features: torch.Tensor,
                                candidate_maps: torch.Tensor) -> torch.Tensor:
        """Per part, the map of the scale candidate DSM aligns with its middle filter slot (the part's own scale):
        `[B, K, D, h, w]`. The shift of Eq. 7 is the one of the class DSM predicts (its arg-max over the summed
        parts), so training and evaluation choose alike; the choice takes no gradient."""
        with torch.no_grad():
            head = self.heads['dsm']
            shifts = circulant_shifts(candidate_features, head.weight)  # [B, K, C]
            predicted = (circulant_alignment(candidate_features, head.weight, head.method).sum(1)
                         + head.bias).argmax(-1)  # [B]
            batch, parts = shifts.shape[:2]
            shift = shifts.gather(2, predicted[:, None, None].expand(batch, parts, 1))[..., 0]  # [B, K]
            chosen = (self.num_scales // 2 + shift) % self.num_scales
        rows = torch.arange(batch, device=chosen.device)[:, None]
        return candidate_maps[rows, torch.arange(parts, device=chosen.device)[None], chosen]

    def _op_logits(self, oriented: torch.Tensor) -> torch.Tensor:
        """Eq. 13 per part (max over the four orientations), summed over parts: `[B, K, 4, F] -> [B, C]`."""
        return self.heads['op'](oriented).amax(2).sum(1)

    # --- timm surface ------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, K, S * D' + 4 F]`: per part, its scale candidates' features and its four oriented poolings."""
        out = self._forward_parts(x)
        return torch.cat([out['candidate_features'].flatten(2), out['oriented'].flatten(2)], -1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """final = DSM + OP logits from `forward_features`' per-part features; pre-logits are those features
        flattened (two heads make the prediction, so `get_classifier()`, the DSM head, alone does not)."""
        if pre_logits:
            return x.flatten(1)
        batch, parts = x.shape[:2]
        split = self.num_scales * self.heads['dsm'].in_features
        candidates = x[..., :split].reshape(batch, parts, self.num_scales, -1)
        oriented = x[..., split:].reshape(batch, parts, 4, -1)
        return self._final_heads(candidates, oriented)['final']

    def _final_heads(self, candidate_features: torch.Tensor, oriented: torch.Tensor) -> Dict[str, torch.Tensor]:
        """DSM (Eq. 7), OP (Eq. 13) and final = DSM + OP, each on its features after timm's `drop_rate` dropout."""
        candidate_features, oriented = (F.dropout(t, p=self.drop_rate, training=self.training)
                                        for t in (candidate_features, oriented))
        dsm, op = self.heads['dsm'](candidate_features), self._op_logits(oriented)
        return {'dsm': dsm, 'op': op, 'final': dsm + op}

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        """Logits `dsm`, `op`, `final` = DSM + OP `[B, C]` and `part` `[B, P, C]` (one per classified proposal, with
        `extras['part_mask']` `[B, P]`); extras `part_boxes` `[B, K, 4]` (the parts), `proposal_boxes` and
        `proposal_scores` (the P ranked proposals, the first K are the parts), `part_features` `[B, K, D]`."""
        out = self._forward_parts(x, classify_proposals=True)
        candidate_features, oriented = out['candidate_features'], out['oriented']
        if self.heads_on_frozen_backbone:  # Sec. 4.1: the backbone is frozen while DSM and OP train
            candidate_features, oriented = candidate_features.detach(), oriented.detach()
        heads = self._final_heads(candidate_features, oriented)
        logits = {'dsm': heads['dsm'], 'op': heads['op'],
                  'part': self.heads['part'](out['proposal_features']),  # [B, P, C], Eq. 1's FC(f_ij)
                  'final': heads['final']}
        extras = dict(part_boxes=out['part_boxes'], part_mask=out['proposal_mask'],
                      proposal_boxes=out['proposal_boxes'], proposal_scores=out['proposal_scores'],
                      part_features=out['part_features'], candidates=out['candidates'])
        return FGVCOutput(logits=logits, main='final', attention=_box_maps(out['part_boxes'], x.shape[-2:]),
                          extras=extras)

    def loss(self, output: FGVCOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """`loss_part` (Eq. 1's CE, mean over the classified proposals), `loss_mac` (lambda * Eq. 2, normalised by
        `mac_reduction`), `loss_rank` (navigator, NTS-Net), `loss_dsm` and `loss_op` (CE on each module's logits);
        `loss` is their sum (times `loss_weights`), and each stage picks its terms; the CE heads take their
        `label_smoothing` (the ranking loss reads the part head's unsmoothed log-probabilities, as NTS-Net's)."""
        self.check_logits(output)
        target = class_indices(target, 'SSANet', "its navigator ranks parts by the true class's confidence")
        part_logits = output.logits['part'].float()
        mask = output.extras['part_mask']
        confidence = part_logits.log_softmax(-1).gather(-1, target[:, None, None].expand(*part_logits.shape[:2], 1))
        terms = {
            'loss_part': self.head_loss('part', part_logits, target, mask),
            'loss_mac': self.mac_weight * mac_loss(output.extras['part_features'], self.mac_reduction),
            'loss_rank': (part_logits.new_zeros(()) if self.fixed_parts is not None else  # no navigator to rank
                          ranking_loss(output.extras['proposal_scores'].float(), confidence[..., 0].detach(), mask)),
            'loss_dsm': self.head_loss('dsm', output.logits['dsm'], target),
            'loss_op': self.head_loss('op', output.logits['op'], target),
        }
        return {'loss': self.weighted_sum(terms), **terms}

    def training_stages(self) -> List[TrainingStage]:
        """Sec. 3.4: (1) DSM with the backbone, navigator and part head; (2) OP alone; (3) the part network with
        DSM and OP fixed. Epochs are not given per stage (the lr drops after 60 epochs): the run's epochs.

        Stage 3 keeps the DSM and OP losses on, back-propagated through their frozen heads: "fixed" heads, not
        dropped ones, so the backbone stays fitted to the heads that make the final prediction. With the part
        losses alone, a short stage 3 on the synthetic set raised the final logits' loss 2.5x; its accuracies were
        too noisy to decide (module docstring).
        """
        part_net = ('backbone.', 'navigator.', 'heads.part.')
        part_terms = ('loss_part', 'loss_mac', 'loss_rank')
        return [
            TrainingStage('dsm', trainable=part_net + ('heads.dsm.',), loss_terms=part_terms + ('loss_dsm',)),
            TrainingStage('op', trainable=('heads.op.',), loss_terms=('loss_op',)),
            TrainingStage('part_net', trainable=part_net, loss_terms=part_terms + ('loss_dsm', 'loss_op')),
        ]

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """The K parts as box masks in input-image coordinates, `[B, K, H, W]` (1 inside part k's box). Details:
        `region_boxes` `[B, K, 4]` (x1, y1, x2, y2 px, ranked: part j = rank j), `region_scores` (navigator),
        `region_mask`, the scale candidates `[B, K, S, 4]`, the zoomed parts, and all P ranked `proposal_boxes`."""
        out = self._forward_parts(x)
        maps = _box_maps(out['part_boxes'], x.shape[-2:])
        if not return_details:
            return maps
        parts = self.num_parts
        return maps, dict(region_boxes=out['part_boxes'], region_scores=out['proposal_scores'][:, :parts].detach(),
                          region_mask=out['proposal_mask'][:, :parts], scale_candidates=out['candidates'],
                          zoomed_regions=out['zoomed_parts'][:, :parts], proposal_boxes=out['proposal_boxes'])


def _split_by_size(boxes: List[torch.Tensor], scores: List[torch.Tensor]):
    """Per-level anchors `[N, 4]` and scores `[B, N]` (cell-major, then size, then ratio, as `anchor_boxes`) into
    one group per anchor size, ratios and cells kept together."""
    size_boxes, size_scores = [], []
    for level_boxes, level_scores, (_, scales, ratios) in zip(boxes, scores, _ANCHORS_448):
        grid = (-1, len(scales), len(ratios))
        level_boxes, level_scores = level_boxes.unflatten(0, grid), level_scores.unflatten(1, grid)
        for i in range(len(scales)):
            size_boxes.append(level_boxes[:, i].flatten(0, 1))
            size_scores.append(level_scores[:, :, i].flatten(1))
    return size_boxes, size_scores


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
    paper_ids='Spatial-Scale Aligned Network for Fine-Grained Recognition (Gao, Xu, Sun, Liu, Tai, 2020)',
)

default_cfgs = generate_default_cfgs({
    **tagged_cfgs('ssanet_resnet50', ('cub200', 'cars', 'aircraft'), **_PAPER),
    **tagged_cfgs('ssanet_resnet101', ('cub200',), **_PAPER),
    **tagged_cfgs('ssanet_resnet18', ('cub200',), **_PAPER),
    'ssanet_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),
    **tagged_cfgs('ssanet_swin_tiny', ('cub200',), **_PAPER, **SWIN_BACKBONE_CFG),
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
    """SSANet on timm's 0.4 M-parameter `test_resnet`: CPU demo and tests. DSM on the 2 x 2 maps its 48 px part
    crops give at its 96 px input (the paper variants keep 7 x 7)."""
    model_args = dict(backbone='test_resnet', dsm_pool_size=2)
    return _create_ssanet('ssanet_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def ssanet_swin_tiny(pretrained: bool = False, **kwargs) -> SSANet:
    """SSANet with a Swin-T backbone: a 14 x 14 map at 448 px (stride 32, as the ResNets its anchors are
    laid out for)."""
    model_args = dict(backbone='swin_tiny_patch4_window7_224', backbone_args=dict(img_size=448))
    return _create_ssanet('ssanet_swin_tiny', pretrained, **dict(model_args, **kwargs))
