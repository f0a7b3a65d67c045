"""S3N: Selective Sparse Sampling Networks.

Paper: "Selective Sparse Sampling for Fine-grained Image Recognition", Y. Ding, Y. Zhou, Y. Zhu, Q. Ye,
J. Jiao, ICCV 2019
(https://openaccess.thecvf.com/content_ICCV_2019/html/Ding_Selective_Sparse_Sampling_for_Fine-Grained_Image_Recognition_ICCV_2019_paper.html).
Authors' code: https://github.com/Yao-DD/S3N

Pipeline (one batched pass, no loop over images or peaks):
  original image -> shared backbone -> class response maps (Eq. 1) -> entropy-gated response R (Eq. 2-3)
  -> class peak responses (r = 3 local maxima >= mean) -> partition into discriminative / complementary
  sets (Eq. 4) -> sparse attention (Eq. 5) -> sampling maps Q^d, Q^c (Eq. 6) -> saliency sampler
  (Eq. 7-8) -> two resampled images -> shared backbone -> O, D, C heads and a joint head on [F_O, F_D, F_C];
  loss = CE on O, D, C and joint (Eq. 9). `forward` returns the joint logits.

Choices where the paper is open (SPEC §6):
- Eq. 4 at evaluation uses the deterministic rule score >= 0.5 instead of a random draw, so eval repeats.
- Eq. 5 distances are measured in units of the image side, so beta does not depend on the input size; the
  initial beta1, beta2 (sqrt(2) * 0.08, sqrt(2) * 0.2) are the authors' code's Gaussian widths r = 0.08 / 0.2
  written in the paper's form exp(-d^2 / (R beta^2)).
- Q^d and Q^c are computed directly on the sampler's 31x31 grid and each sits on a base level (0.09, the
  authors' code) so that an empty peak set gives the identity grid.
- Peaks are found in float32 with autocast off (Eq. 1-3 and the peak search): a bf16 response map ties
  neighbouring cells; a plateau of equal maxima gives one peak.
- beta1, beta2 train in their own optimiser group (`param_group_rules`): lr = `beta_lr_scale` x the new layers'
  lr, no weight decay. This follows the authors' code, not the paper: Sec. 4 gives every new parameter lr 0.01,
  and at that lr (with weight decay) one SGD step moved beta1 by ~60%. The authors train their width r
  (beta = sqrt(2) r) at 1e-4 x the base lr 1e-3 = 1e-5 x the new layers' 1e-2; SGD on beta = sqrt(2) r with twice
  that lr moves the Gaussian as SGD on r does, hence 2e-5. At that lr the widths stay near their start: Eq. 5's
  beta are in practice fixed.
  Both are logged: `extras['beta1'/'beta2']` and the `beta1`/`beta2` entries of `loss()` (not summed into `loss`).
- `recipe='authors'` (`s3n_resnet50_authors`) follows the authors' released code and CUB config
  (`demo/cub_s3n.yml`) where it differs from the paper: a 20-epoch warm-up stage in which every peak feeds both
  sampling maps (`training_stages()`: 'warmup_all_peaks' then 'main'; Table 4's "All"), label smoothing on the
  O and C heads (their `multi_smooth_loss`, 0.85 on the true class), the evaluation rule "max peak -> D,
  min peak -> C", a conv3x3 (stride 2) + BN + ReLU buffer before the D and C heads (trained at the backbone's
  lr, as their `finetune` groups do), and initial widths r = 0.09 / 0.3. Each piece is also its own argument.
- Options from the authors' code: `partition='all'` (all peaks feed both maps throughout: Table 4's "All"),
  per-head label smoothing via `label_smoothing`, `peak_map_size=31` (the class response maps resized to the
  sampling grid, bilinear with aligned corners, before the gate and the peak search; a peak then sits at its
  cell of that grid, so a peak on the map's border cell moves to the image's edge), and
  `separate_resampled_passes` (D and C through the backbone in two calls, as the authors' forward makes them, so
  that in training BatchNorm normalises each resampled batch by its own statistics; the default stacks them in
  one call, the same in evaluation). Neither is part of `recipe='authors'`, whose rows in bench/ predate them.
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..layers import (SaliencySampler, class_response_maps, entropy_gated_response, find_peaks,
                      peaks_to_image_coords)
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images
from ._builder import VIT_BACKBONE_CFG, build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['S3N', 'BranchBuffer', 'sparse_attention', 'sparse_attention_factors', 'sampling_map',
           'selective_partition']

WARMUP_STAGE = 'warmup_all_peaks'

# What each recipe sets when the matching argument is left at None (see the module docstring).
RECIPES = {
    'paper': dict(warmup_epochs=0, eval_rule='threshold', branch_buffer=False, smooth_ratio=None,
                  beta_init=(math.sqrt(2) * 0.08, math.sqrt(2) * 0.2)),
    'authors': dict(warmup_epochs=20, eval_rule='extremes', branch_buffer=True, smooth_ratio=0.85,
                    beta_init=(math.sqrt(2) * 0.09, math.sqrt(2) * 0.3)),
}


def selective_partition(scores: torch.Tensor, valid: torch.Tensor, training: bool,
                        mode: str = 'probability', eval_threshold: float = 0.5,
                        eval_rule: str = 'threshold') -> Tuple[torch.Tensor, torch.Tensor]:
    """Split peaks into discriminative T_d and complementary T_c sets, as `[B, K]` bool masks.

    `probability` (the paper): peak -> T_d if R >= zeta, zeta ~ U(0, 1) in training (Eq. 4). At evaluation the
    paper gives no rule; `eval_rule='threshold'`: R >= `eval_threshold` (the expected Eq. 4 split);
    `'extremes'` (the authors' code): only the highest peak -> T_d and only the lowest -> T_c (one peak: both).
    `all`: every peak feeds both sets, in training and evaluation (Table 4's "All").
    """
    if mode == 'all':
        return valid, valid
    if mode != 'probability':
        raise ValueError(f"Unknown partition mode {mode!r}; use 'probability' or 'all'.")
    if training:
        zeta = torch.rand_like(scores)
        discriminative = scores >= zeta  # Eq. 4
    elif eval_rule == 'threshold':
        discriminative = scores >= eval_threshold
    elif eval_rule == 'extremes':
        slots = torch.arange(scores.shape[1], device=scores.device)
        any_peak = valid.any(1, keepdim=True)
        highest = scores.float().masked_fill(~valid, float('-inf')).argmax(1, keepdim=True)
        lowest = scores.float().masked_fill(~valid, float('inf')).argmin(1, keepdim=True)
        return (slots == highest) & any_peak, (slots == lowest) & any_peak
    else:
        raise ValueError(f"Unknown eval_rule {eval_rule!r}; use 'threshold' (R >= eval_threshold) or 'extremes' "
                         "(max peak -> D, min peak -> C).")
    discriminative = discriminative & valid
    return discriminative, valid & ~discriminative


# exp(-30) ~ 1e-13: far below the base level of Eq. 6; keeps the products of the two axes out of float32
# denormals, which are slow on CPUs.
_MIN_EXPONENT = -30.


def sparse_attention_factors(
        centers: torch.Tensor,
        scores: torch.Tensor,
        discriminative: torch.Tensor,
        complementary: torch.Tensor,
        beta1: torch.Tensor,
        beta2: torch.Tensor,
        size: Tuple[int, int],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 5 as separable factors: `(amplitude [B, K], along_y [B, K, H], along_x [B, K, W])`.

    The Gaussian of Eq. 5 is isotropic, so exp(-d^2 / s) = exp(-dx^2 / s) * exp(-dy^2 / s): the map of peak k is
    `amplitude[k] * along_y[k, :, None] * along_x[k, None, :]`, with H + W exponentials per peak instead of H * W.
    Unused peak slots have amplitude 0.
    """
    height, width = size
    ys = (torch.arange(height, device=centers.device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=centers.device, dtype=torch.float32) + 0.5) / width
    centers = centers.float()
    score = scores.float().clamp_min(1e-6)
    width2 = score * torch.where(discriminative, beta1.float() ** 2, beta2.float() ** 2)  # R * beta^2
    amplitude = torch.where(discriminative, score, 1. / score) * (discriminative | complementary)
    along_x = torch.exp((-(xs - centers[..., 0, None]) ** 2 / width2[..., None]).clamp_min(_MIN_EXPONENT))
    along_y = torch.exp((-(ys - centers[..., 1, None]) ** 2 / width2[..., None]).clamp_min(_MIN_EXPONENT))
    return amplitude, along_y, along_x


def sparse_attention(
        centers: torch.Tensor,
        scores: torch.Tensor,
        discriminative: torch.Tensor,
        complementary: torch.Tensor,
        beta1: torch.Tensor,
        beta2: torch.Tensor,
        size: Tuple[int, int],
) -> torch.Tensor:
    """Eq. 5: a Gaussian per peak, `[B, K, H, W]` on an H x W grid over the image (zero for unused peaks).

    centers: `[B, K, 2]` peak centres (x, y) in [0, 1] image units; scores: `[B, K]` peak values R in (0, 1].
    Discriminative peaks get amplitude R and squared width R * beta1^2; complementary ones amplitude 1 / R and
    squared width R * beta2^2 (distances in image-side units).
    """
    return attention_from_factors(*sparse_attention_factors(
        centers, scores, discriminative, complementary, beta1, beta2, size))  # Eq. 5


def attention_from_factors(amplitude: torch.Tensor, along_y: torch.Tensor, along_x: torch.Tensor) -> torch.Tensor:
    """The per-peak maps `[B, K, H, W]` of Eq. 5 from its separable factors (`sparse_attention_factors`)."""
    return amplitude[..., None, None] * along_y[..., :, None] * along_x[..., None, :]


def sampling_map(amplitude: torch.Tensor, along_y: torch.Tensor, along_x: torch.Tensor, members: torch.Tensor,
                 base_level: float) -> torch.Tensor:
    """Eq. 6: base level + the sum of the sparse attention of the peaks in `members` (`[B, K]`), `[B, H, W]`.

    One batched matmul over the separable factors (`[B, H, K] @ [B, K, W]`); no `[B, K, H, W]` tensor is built.
    """
    weights = (amplitude * members)[..., None] * along_y  # [B, K, H]
    return base_level + weights.transpose(1, 2) @ along_x  # Eq. 6


class BranchBuffer(nn.Sequential):
    """The authors' `sampler_buffer`: conv3x3 (stride 2) + BN + ReLU on a resampled branch's feature map, before
    its head and the joint head (not in the paper)."""

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class S3N(FGVCModel):
    """Selective Sparse Sampling Network: O, D, C branches through one shared timm backbone.

    Args:
        backbone: timm model name: a CNN, or a ViT / Swin (read as a spatial map, see `create_backbone`).
        num_classes: classes of every head.
        top_k, entropy_threshold: Eq. 2-3 (5 and delta = 0.2).
        peak_window: local-maximum window r (3).
        max_peaks: fixed number of peak slots per image (padded, with a mask).
        beta_init: initial (beta1, beta2) of Eq. 5, in image-side units (None: the recipe's).
        beta_lr_scale: lr of beta1, beta2 relative to the new layers' lr (own optimiser group, no weight decay).
        base_level: constant added to each sampling map (Eq. 6) so empty sets give the identity.
        grid_size, sampler_padding, sampler_fwhm: saliency sampler of Eq. 7-8.
        partition: 'probability' (Eq. 4) or 'all'.
        eval_threshold: the 'threshold' evaluation rule's R.
        recipe: 'paper' (default) or 'authors' (their code's settings, see the module docstring); it fills the
            arguments below that are left at None.
        warmup_epochs: epochs of a first training stage in which all peaks feed both maps (0: no warm-up).
        main_epochs: epochs of the stage after the warm-up (the authors' 60 in all).
        eval_rule: 'threshold' or 'extremes' (max peak -> D, min peak -> C), see `selective_partition`.
        branch_buffer: conv3x3 (stride 2) + BN + ReLU before the D and C heads.
        smooth_ratio: target probability of the true class on the O and C heads (the authors' 0.85), i.e. label
            smoothing (1 - ratio) C / (C - 1); None: none.
        label_smoothing: per-head label smoothing, e.g. `{'joint': 0.1}` (over the recipe's).
        share_backbone: the paper's one backbone for every input (Sec. 3.4); False gives the two resampled
            images a backbone of their own (`resampled_backbone`, a copy of the first at the start): an
            ablation outside the paper.
        peak_map_size: find peaks on the class response maps resized to this size (the authors' 31); None: on the
            feature map's own grid (Eq. 1-3).
        separate_resampled_passes: D and C through the backbone in two calls (the authors' code) instead of one
            stacked call; differs only in training, where BatchNorm's batch statistics are then per branch.
    """
    main_head = 'joint'
    # the class peaks' source and the D and C heads: only forward_train trains them
    trained_by_forward_train_only = ('heads.original.', 'heads.discriminative.', 'heads.complementary.')
    needs_classifier = True
    branches = ('original', 'discriminative', 'complementary')

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 1000,
            in_chans: int = 3,
            pretrained_backbone: Union[bool, str] = False,  # True: timm Hub weights; a path: a local file
            drop_rate: float = 0.,
            backbone_args: Optional[dict] = None,
            top_k: int = 5,
            entropy_threshold: float = 0.2,
            peak_window: int = 3,
            max_peaks: int = 16,
            beta_init: Optional[Tuple[float, float]] = None,
            beta_lr_scale: float = 2e-5,
            base_level: float = 0.09,
            grid_size: int = 31,
            sampler_padding: int = 30,
            sampler_fwhm: float = 13.,
            partition: str = 'probability',
            eval_threshold: float = 0.5,
            recipe: str = 'paper',
            warmup_epochs: Optional[int] = None,
            main_epochs: int = 40,
            eval_rule: Optional[str] = None,
            branch_buffer: Optional[bool] = None,
            smooth_ratio: Optional[float] = None,
            label_smoothing: Optional[Dict[str, float]] = None,
            share_backbone: bool = True,
            peak_map_size: Optional[int] = None,
            separate_resampled_passes: bool = False,
    ):
        if recipe not in RECIPES:
            raise ValueError(f'Unknown S3N recipe {recipe!r}; use one of {sorted(RECIPES)}.')
        given = dict(warmup_epochs=warmup_epochs, eval_rule=eval_rule, branch_buffer=branch_buffer,
                     smooth_ratio=smooth_ratio, beta_init=beta_init)
        settings = {k: RECIPES[recipe][k] if v is None else v for k, v in given.items()}
        if settings['eval_rule'] not in ('threshold', 'extremes'):
            raise ValueError(f"Unknown eval_rule {settings['eval_rule']!r}; use 'threshold' or 'extremes'.")
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        self.top_k = top_k
        self.entropy_threshold = entropy_threshold
        self.peak_window = peak_window
        self.max_peaks = max_peaks
        self.base_level = base_level
        self.grid_size = grid_size
        self.partition = partition
        self.eval_threshold = eval_threshold
        self.recipe = recipe
        self.eval_rule = settings['eval_rule']
        self.warmup_epochs = int(settings['warmup_epochs'])
        self.main_epochs = main_epochs
        self.warming_up = self.warmup_epochs > 0  # a fresh model starts in the first stage; the engine sets it
        self.smooth_ratio = settings['smooth_ratio']
        beta1, beta2 = settings['beta_init']
        self.beta1 = nn.Parameter(torch.tensor(float(beta1)))
        self.beta2 = nn.Parameter(torch.tensor(float(beta2)))
        self.param_group_rules = {'beta': {'lr_scale': beta_lr_scale, 'weight_decay': 0.}}
        self.share_backbone = share_backbone
        self.resampled_backbone = None if share_backbone else self.add_backbone('resampled_backbone')
        self.separate_resampled_passes = separate_resampled_passes
        self.peak_map_size = peak_map_size
        self.sampler = SaliencySampler(grid_size=grid_size, padding=sampler_padding, fwhm=sampler_fwhm)
        for name in self.branches:
            self.add_head(name, self.backbone_features)
        self.add_head('joint', 3 * self.backbone_features)
        self.num_features = self.head_hidden_size = 3 * self.backbone_features
        self.branch_buffers = nn.ModuleDict(
            {name: BranchBuffer(self.backbone_features) for name in self.branches[1:]}
        ) if settings['branch_buffer'] else None
        if self.branch_buffers is not None:  # the authors' `finetune` groups give the buffers the backbone's lr
            self.param_group_rules['branch_buffers.'] = {'lr_scale': 0.1}
        self._user_label_smoothing = dict(label_smoothing or {})
        self._set_label_smoothing()

    def _set_label_smoothing(self) -> None:
        """The recipe's smoothing on the O and C heads (the authors' `multi_smooth_loss` puts `smooth_ratio` on the
        true class and the rest evenly on the other C - 1), then the user's per-head values."""
        self.label_smoothing.clear()
        if self.smooth_ratio is not None and self.num_classes > 1:
            epsilon = (1 - self.smooth_ratio) * self.num_classes / (self.num_classes - 1)
            self.label_smoothing.update(original=epsilon, complementary=epsilon)
        self.label_smoothing.update(self._user_label_smoothing)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self._set_label_smoothing()

    # --- training stages ---------------------------------------------------------------------------
    def training_stages(self) -> List[TrainingStage]:
        """One stage (the paper), or the authors' warm-up with all peaks in both branches, then the main stage."""
        if not self.warmup_epochs:
            return [TrainingStage(name='main')]
        return [TrainingStage(name=WARMUP_STAGE, epochs=self.warmup_epochs),
                TrainingStage(name='main', epochs=self.main_epochs)]

    def set_training_stage(self, stage: TrainingStage) -> None:
        self.warming_up = stage.name == WARMUP_STAGE

    def partition_mode(self) -> str:
        """'all' while training in the warm-up stage, else the `partition` argument."""
        return 'all' if self.training and self.warming_up else self.partition

    def select_peaks(self, feature_map: torch.Tensor, logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Class peak responses of the entropy-gated response map (Sec. 3.1-3.2), without gradient, in float32
        (autocast off: a bf16 map ties neighbouring cells)."""
        self.warn_if_map_too_small(feature_map, 'no class peak is found and both resampled images are the input')
        with torch.no_grad(), torch.autocast(feature_map.device.type, enabled=False):
            maps = class_response_maps(feature_map.float(), self.heads['original'].weight.float())  # Eq. 1
            if self.peak_map_size is not None:  # the authors' code resizes the maps to the sampling grid
                maps = F.interpolate(maps, size=self.peak_map_size, mode='bilinear', align_corners=True)
            response, use_top1, entropy = entropy_gated_response(
                maps, logits.float(), top_k=self.top_k, delta=self.entropy_threshold)  # Eq. 2-3, min-max normalised
            peaks = find_peaks(response, window=self.peak_window, max_peaks=self.max_peaks)
        centers = peaks_to_image_coords(peaks, response.shape[-2:], (1, 1))  # (x, y) in [0, 1]
        return dict(response=response, use_top1=use_top1, entropy=entropy, peak_centers=centers,
                    peak_scores=peaks.scores.float(), peak_mask=peaks.mask,
                    peaks_found=peaks.found)  # above max_peaks: the lowest peaks (T_c's most often) were cut

    def sampling_maps(self, peaks: Dict[str, torch.Tensor], size: Tuple[int, int],
                      return_attention: bool = True) -> Dict[str, torch.Tensor]:
        """Partition (Eq. 4), sparse attention (Eq. 5) and the two sampling maps (Eq. 6) on an H x W grid.

        The per-peak attention `[B, K, H, W]` is only built with `return_attention` (for visualisation); the
        sampling maps come from its separable factors either way.
        """
        discriminative, complementary = selective_partition(
            peaks['peak_scores'], peaks['peak_mask'], self.training, self.partition_mode(), self.eval_threshold,
            self.eval_rule)
        amplitude, along_y, along_x = sparse_attention_factors(
            peaks['peak_centers'], peaks['peak_scores'], discriminative, complementary,
            self.beta1, self.beta2, size)  # Eq. 5, a peak in both sets in its T_d form
        # Eq. 5's T_c form for Q^c: a peak in both sets ('all', the authors' warm-up, one peak under 'extremes')
        # adds R e^(..beta1) to Q^d and (1 / R) e^(..beta2) to Q^c, as the authors' generate_map does
        c_form = sparse_attention_factors(peaks['peak_centers'], peaks['peak_scores'],
                                          torch.zeros_like(complementary), complementary, self.beta1, self.beta2, size)
        out = dict(
            discriminative=discriminative, complementary=complementary,
            q_discriminative=sampling_map(amplitude, along_y, along_x, discriminative, self.base_level),  # Eq. 6
            q_complementary=sampling_map(*c_form, complementary, self.base_level),  # Eq. 6
        )
        if return_attention:
            out['attention'] = attention_from_factors(amplitude, along_y, along_x)  # Eq. 5
        return out

    def _attend_and_resample(self, x: torch.Tensor, size: Tuple[int, int], resample: bool = True,
                             return_attention: bool = False) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """O-branch pass, peaks and sampling maps on a `size` grid; with `resample`, both resampled images
        from one sampler call (returned stacked `[2B, C, H, W]`, D first, and split into the dict)."""
        check_images(x, self.in_chans, self.min_input_size)
        feat_original = self.backbone.forward_features(x)
        logits_original = self.heads['original'](feat_original.mean((2, 3)))
        peaks = self.select_peaks(feat_original, logits_original)
        out = dict(**peaks, **self.sampling_maps(peaks, size, return_attention), feat_original=feat_original,
                   logits_original=logits_original)
        if not resample:
            return out, None
        batch = x.shape[0]
        saliency = torch.cat([out['q_discriminative'], out['q_complementary']])
        resampled, grids = self.sampler(torch.cat([x, x]), saliency)  # Eq. 7-8, both branches in one call
        out.update(image_discriminative=resampled[:batch], image_complementary=resampled[batch:],
                   grid_discriminative=grids[:batch], grid_complementary=grids[batch:])
        return out, resampled

    def _forward_branches(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, resampled = self._attend_and_resample(x, (self.grid_size, self.grid_size))
        backbone = self.backbone if self.resampled_backbone is None else self.resampled_backbone
        batch = x.shape[0]
        if self.separate_resampled_passes:  # the authors' two calls: BatchNorm's batch statistics per branch
            features = dict(discriminative=backbone.forward_features(resampled[:batch]),
                            complementary=backbone.forward_features(resampled[batch:]))
        else:
            feat_resampled = backbone.forward_features(resampled)
            features = dict(discriminative=feat_resampled[:batch], complementary=feat_resampled[batch:])
        if self.branch_buffers is not None:
            features = {name: self.branch_buffers[name](f) for name, f in features.items()}
        return dict(out, **{f'feat_{name}': f for name, f in features.items()})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3D, h, w]`: the O, D and C feature maps stacked along channels (F_J before pooling). With the
        branch buffer the D and C maps are half the size of O's, so F_J comes pooled, `[B, 3D, 1, 1]`."""
        out = self._forward_branches(x)
        maps = [out['feat_original'], out['feat_discriminative'], out['feat_complementary']]
        if self.branch_buffers is not None:
            maps = [m.mean((2, 3), keepdim=True) for m in maps]
        return torch.cat(maps, 1)

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        out = self._forward_branches(x)
        pooled = {name: out[f'feat_{name}'].mean((2, 3)) for name in self.branches}
        logits = {
            'original': out['logits_original'],
            'discriminative': self.heads['discriminative'](pooled['discriminative']),
            'complementary': self.heads['complementary'](pooled['complementary']),
            'joint': self.pooled_head(torch.cat([pooled[n] for n in self.branches], 1)),  # on F_J
        }
        extras = {k: v for k, v in out.items() if not k.startswith(('feat_', 'logits_'))}
        extras.update(beta1=self.beta1.detach().clone(), beta2=self.beta2.detach().clone())  # values of this pass
        with torch.no_grad():  # Eq. 5 at image resolution, for visualisation and hit rates; no loss uses it
            attention = sparse_attention(out['peak_centers'], out['peak_scores'], out['discriminative'],
                                         out['complementary'], self.beta1, self.beta2, x.shape[-2:])
        return FGVCOutput(logits=logits, main='joint', attention=_normalize_attention(attention), extras=extras)

    def loss(self, output: FGVCOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Eq. 9 (cross-entropy on O, D, C and joint; `loss` is their sum), plus beta1, beta2 for the training log
        (not part of `loss`)."""
        losses = super().loss(output, target)
        losses.update(beta1=self.beta1.detach().float().clone(), beta2=self.beta2.detach().float().clone())
        return losses

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """The sparse attention of Eq. 5 in input-image coordinates: `[B, max_peaks, H, W]`, each in [0, 1].

        Unused peak slots are all-zero maps. Details: peak centres (x, y in pixels), scores, masks, which set
        each peak went to, the sampling maps, the sampling grids and the two resampled images.
        """
        height, width = x.shape[-2:]
        out, _ = self._attend_and_resample(x, (height, width), resample=return_details, return_attention=True)
        attention = _normalize_attention(out['attention'])
        if not return_details:
            return attention
        scale = torch.tensor([width, height], device=x.device, dtype=torch.float32)
        keys = ('peak_scores', 'peak_mask', 'discriminative', 'complementary', 'response', 'q_discriminative',
                'q_complementary', 'grid_discriminative', 'grid_complementary', 'image_discriminative',
                'image_complementary')
        details = dict(peak_xy=out['peak_centers'] * scale, **{k: out[k] for k in keys})
        return attention, details


def _normalize_attention(attention: torch.Tensor) -> torch.Tensor:
    """Scale each peak's map to peak value 1 (maps of unused slots stay zero)."""
    peak = attention.flatten(-2).amax(-1)[..., None, None]
    return attention / peak.clamp_min(1e-12)


def _create_s3n(variant: str, pretrained: bool = False, **kwargs) -> S3N:
    return build_fgvc_model(S3N, variant, pretrained, **kwargs)


_PAPER = dict(
    classifier=('heads.joint', 'heads.original', 'heads.discriminative', 'heads.complementary'),
    paper_name='Selective Sparse Sampling for Fine-grained Image Recognition',
    paper_ids='ICCV 2019',
    origin_url='https://github.com/Yao-DD/S3N',
)

default_cfgs = generate_default_cfgs({
    **tagged_cfgs('s3n_resnet50', ('cub200', 'aircraft', 'cars'), **_PAPER),
    **tagged_cfgs('s3n_resnet101', ('cub200',), **_PAPER),
    **tagged_cfgs('s3n_resnet18', ('cub200',), **_PAPER),
    # the authors' test transform: resize to 600, centre crop 448
    **tagged_cfgs('s3n_resnet50_authors', ('cub200',), **dict(_PAPER, crop_pct=448 / 600)),
    's3n_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),
    **tagged_cfgs('s3n_vit_small', ('cub200',), **_PAPER, **VIT_BACKBONE_CFG),
})


@register_model
def s3n_resnet50(pretrained: bool = False, **kwargs) -> S3N:
    """S3N with a ResNet-50 backbone (the paper's)."""
    model_args = dict(backbone='resnet50')
    return _create_s3n('s3n_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def s3n_resnet50_authors(pretrained: bool = False, **kwargs) -> S3N:
    """S3N-ResNet-50 with the authors' released recipe (`recipe='authors'`): 20-epoch all-peaks warm-up, label
    smoothing on O and C, eval rule max peak -> D / min peak -> C, conv3x3+BN+ReLU branch buffers."""
    model_args = dict(backbone='resnet50', recipe='authors')
    return _create_s3n('s3n_resnet50_authors', pretrained, **dict(model_args, **kwargs))


@register_model
def s3n_resnet101(pretrained: bool = False, **kwargs) -> S3N:
    """S3N with a ResNet-101 backbone."""
    model_args = dict(backbone='resnet101')
    return _create_s3n('s3n_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def s3n_resnet18(pretrained: bool = False, **kwargs) -> S3N:
    """S3N with a ResNet-18 backbone (small, CPU-friendly)."""
    model_args = dict(backbone='resnet18')
    return _create_s3n('s3n_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def s3n_tiny(pretrained: bool = False, **kwargs) -> S3N:
    """S3N on timm's 0.4 M-parameter `test_resnet`: the CPU demo (the default `train_fgvc.py` run) and tests."""
    model_args = dict(backbone='test_resnet')
    return _create_s3n('s3n_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def s3n_vit_small(pretrained: bool = False, **kwargs) -> S3N:
    """S3N with a ViT-S/16 backbone: its 28 x 28 patch tokens at 448 px are the map the class responses are
    read from (position embeddings built for 448 px, resampled for other input sizes)."""
    model_args = dict(backbone='vit_small_patch16_224', backbone_args=dict(img_size=448))
    return _create_s3n('s3n_vit_small', pretrained, **dict(model_args, **kwargs))
