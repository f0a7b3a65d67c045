"""CAA: attention generated from classifier activations, with multi-scale crop-and-zoom.

Paper: "Generating Attention from Classifier Activations for Fine-grained Recognition", W. Shen, R. Liu
(Fujitsu Research & Development Center), arXiv 2018 (https://arxiv.org/abs/1811.10770).

Pipeline at each scale (one batched pass; the scales follow each other because each zooms into the last):
  image -> backbone -> feature maps f(X) -> n = 16 local classifiers (1x1 convs to L + 1 outputs, the last one
  background) -> max over classifiers: aggregated activations A (Eq. 1) -> attention M = max over A's L
  non-background channels (Sec. 4.3, Fig. 2) -> binary object mask M_b by Otsu's threshold, per image -> local
  loss on A with M_b as a surrogate segmentation mask (Eq. 2-4) and an object-level head on the spatial max-pool of
  M_b f(X) (Eq. 5); loss = local + object (Eq. 6). The bounding box of M_b is cropped and zoomed to the input
  size: the next scale's image (Sec. 4.4).
  Prediction per scale = mean of softmax(object logits) and softmax(spatial mean of A without background); the
  final prediction is the mean over scales (Sec. 4.4.3). Scales train one after another (`training_stages`);
  `scale_schedule='joint'` (outside the paper) trains them together.

Choices where the paper is open (SPEC §6):
- One backbone per scale (the paper trains a model per scale); `share_backbone=True` uses one for all. The paper
  does not say how scale k + 1's backbone starts: by default (`zoom_init='previous'`) it starts from scale k's
  trained backbone when stage k + 1 follows stage k in the same run (`start_training_stage`; a run that starts or
  resumes at a later stage keeps the weights it loaded, `init_scale_from_previous(k)` copies by hand);
  `zoom_init='previous_model'` also starts its local classifiers and object head from scale k's (Sec. 4.4: "our
  models are trained sequentially"; the heads have the same shapes at every scale);
  `zoom_init='independent'` keeps its own initialisation (the pretrained weights, or random).
- Schedule: the paper trains the scales sequentially (Sec. 4.4.2, one stage per scale, the default
  `scale_schedule='sequential'`), so at a fixed number of epochs each scale gets a share of them, or the run takes
  one schedule per scale. `scale_schedule='joint'` (outside the paper) trains every scale in one stage for the whole
  schedule: each step runs scale 0, crops from its current mask, runs scale 1, and so on, and sums every scale's
  loss (Eq. 6 per scale). With a backbone per scale no backbone gets another scale's gradient (the crops carry
  none), so each scale's model trains as it would alone, on its predecessor's current attention instead of its
  converged one; every scale starts from its own initialisation (`zoom_init` has nothing to copy).
- Attention M = max over the non-background channels of the aggregated activations A themselves
  (`attention_from='logits'`, Sec. 4.3 and Fig. 2: "max-pooling A along the channel dimension excluding the last
  background category"). `attention_from='probabilities'` takes the max of softmax(A) over the L + 1 classes
  instead (a reading of Sec. 4.3's "probability activations"), which ranks cells by how little background they
  show: in the transfer protocol its Otsu mask left the bird for the border ring within the first epoch and stayed
  there (bench/README.md, CAA): the background logit, trained up on the border's features, grows faster on the
  bird's larger-norm ones (a test plants this).
- Test time: the paper resizes the short side to 448 and runs the fully convolutional model on the whole image
  (Sec. 4.1: "we do not need to crop images during test time"). `forward` takes any H x W; the pretrained_cfg has
  `crop_pct=1.0` and `test_input_size` = `input_size`, so timm's eval transform resizes the short side to the
  input size and cuts nothing from it; to batch, it still centre-crops the long side to a square. The paper's
  exact protocol (the whole image, any aspect) is batch size 1 with `Resize(448)` and no crop.
- `forward` returns the log of the averaged probability, so softmax of the output is the paper's prediction and
  its argmax the predicted class.
- The object feature is the max over the masked locations (equal to max-pooling M_b f(X) for the non-negative
  maps of ReLU backbones, and also right for backbones whose maps can be negative); an empty M_b (a constant M)
  pools over the whole map and crops nothing.
- Otsu uses a 256-bin histogram of each image's M; the next scale's crop is the bounding box of M_b's cells. The
  paper crops "recursively": scale k + 1's box is nested in scale k's, and its view is that box cut from the input
  image once (one interpolation, not a zoom of a zoom; 5.8% more fine detail at scale 2, measured session 17).
  The box keeps M_b's aspect and is resized to the (square) input size, so an elongated box is stretched along its
  short side: the paper says "cropping and amplifying" and gives no aspect rule.
- The averaged local prediction is softmax of the spatial mean of A's L class channels (A read as logits, as for
  M), not the mean over cells of each cell's softmax with its background renormalised away; the paper says only
  that the local classifiers' predictions are averaged (Sec. 4.4.3).
- Under autocast A and M are in the autocast dtype: the local classifiers (1x1 convs to 16 (L + 1) channels, about
  a third of ResNet-50's FLOPs at L = 200) stay in bf16 with the backbone. A bf16 M moves M_b by about one cell of
  a 14 x 14 map in some images (0.86 cells in 22 of 50 synthetic maps, session 28's review); LFD, whose NMS ranks
  close regions, builds its M in float32.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..layers import crop_regions, mask_bounding_box, min_max_normalize, otsu_mask
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images, class_indices
from ._builder import SWIN_BACKBONE_CFG, build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['CAA', 'LocalClassifiers', 'local_loss']


class LocalClassifiers(nn.Module):
    """n linear classifiers applied at every location, each to L + 1 classes (the last is background), max-pooled
    over classifiers (Eq. 1): `[B, D, h, w] -> [B, L + 1, h, w]` (the aggregated activations A).

    The n classifiers are one 1x1 convolution with n (L + 1) outputs; its `weight` and `bias` sit on this module
    (as an `nn.Linear` head's do), so timm drops them like any classifier when `num_classes` changes.
    """

    def __init__(self, in_features: int, num_classes: int, num_classifiers: int = 16):
        super().__init__()
        self.in_features = in_features
        self.out_features = num_classes
        self.num_classifiers = num_classifiers
        conv = nn.Conv2d(in_features, num_classifiers * (num_classes + 1), kernel_size=1)  # PyTorch's conv init
        self.weight = nn.Parameter(conv.weight.detach())
        self.bias = nn.Parameter(conv.bias.detach())

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = feature_map.shape
        activations = F.conv2d(feature_map, self.weight, self.bias)
        return activations.view(batch, self.num_classifiers, self.out_features + 1, height, width).amax(1)  # Eq. 1


def local_loss(activations: torch.Tensor, object_mask: torch.Tensor, target: torch.Tensor,
               label_smoothing: float = 0.) -> torch.Tensor:
    """Eq. 2-4: per location, cross-entropy to the image's class inside M_b and to background outside, weighted by
    the attended fraction w: `1 / (WH) ((1 - w) l1 + w l0)`, averaged over the batch.

    activations: A `[B, L + 1, h, w]` (background last); object_mask: M_b `[B, h, w]` bool; target `[B]`;
    label_smoothing: as `F.cross_entropy`'s, per location over the L + 1 classes (0 in the paper).
    """
    log_p = F.log_softmax(activations.float(), dim=1)
    mask = object_mask.to(log_p.dtype)
    attended = mask.mean((1, 2))  # w
    target_log_p = log_p.gather(1, target.view(-1, 1, 1, 1).expand(-1, 1, *log_p.shape[-2:])).squeeze(1)
    uniform = -log_p.mean(1)  # each location's smoothing term
    object_ce = (1 - label_smoothing) * -target_log_p + label_smoothing * uniform
    background_ce = (1 - label_smoothing) * -log_p[:, -1] + label_smoothing * uniform
    loss_object = (object_ce * mask).sum((1, 2))  # l1 (Eq. 4)
    loss_background = (background_ce * (1 - mask)).sum((1, 2))  # l0 (Eq. 3)
    cells = mask.shape[-1] * mask.shape[-2]
    return (((1 - attended) * loss_object + attended * loss_background) / cells).mean()  # Eq. 2


class CAA(FGVCModel):
    """Attention from classifier activations: local classifiers, Otsu object masks, object heads, per scale.

    Args:
        backbone: timm model name: a CNN, or a ViT / Swin (read as a spatial map, see `create_backbone`).
        num_classes: L, the fine-grained classes (the local classifiers add a background class).
        num_scales: scales, each zooming into the previous one's attended box (3).
        num_classifiers: n local classifiers per scale (16).
        share_backbone: one backbone for every scale instead of one per scale.
        zoom_init: 'previous' starts scale k + 1's backbone from scale k's trained one (default; the paper is
            silent), 'previous_model' its backbone and heads, 'independent' from its own initialisation.
        attention_from: 'logits' (M from A, Sec. 4.3 / Fig. 2) or 'probabilities' (from softmax(A) over L + 1).
        otsu_bins: histogram bins of Otsu's threshold (256).
        scale_schedule: 'sequential' (one stage per scale, Sec. 4.4.2) or 'joint' (every scale in one stage;
            outside the paper).
    """
    main_head = 'object_0'
    needs_classifier = True

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 1000,
            in_chans: int = 3,
            pretrained_backbone: Union[bool, str] = False,  # True: timm Hub weights; a path: a local file
            drop_rate: float = 0.,
            backbone_args: Optional[dict] = None,
            num_scales: int = 3,
            num_classifiers: int = 16,
            share_backbone: bool = False,
            zoom_init: str = 'previous',
            attention_from: str = 'logits',
            otsu_bins: int = 256,
            scale_schedule: str = 'sequential',
    ):
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        self.num_classifiers = num_classifiers
        if num_scales < 1:
            raise ValueError(f'num_scales must be >= 1, got {num_scales}.')
        self.num_scales = num_scales
        self.share_backbone = share_backbone
        if zoom_init not in ('previous', 'previous_model', 'independent'):
            raise ValueError(f"zoom_init must be 'previous' (scale k + 1 starts from scale k's trained backbone), "
                             f"'previous_model' (its backbone and heads) or 'independent', got {zoom_init!r}.")
        if attention_from not in ('probabilities', 'logits'):
            raise ValueError(f"attention_from must be 'probabilities' or 'logits', got {attention_from!r}.")
        if scale_schedule not in ('sequential', 'joint'):
            raise ValueError(f"scale_schedule must be 'sequential' (one stage per scale, the paper's) or 'joint' "
                             f"(every scale in one stage), got {scale_schedule!r}.")
        self.zoom_init = zoom_init
        self.scale_schedule = scale_schedule
        self.attention_from = attention_from
        self.otsu_bins = otsu_bins
        self.zoom_backbones = nn.ModuleList()
        if not share_backbone:
            for k in range(num_scales - 1):
                self.zoom_backbones.append(self.add_backbone(f'zoom_backbones.{k}', bool(pretrained_backbone)))
        for k in range(num_scales):
            self.add_head(f'object_{k}', self.backbone_features)
            self.add_head(f'local_{k}', self.backbone_features)
        self.num_features = self.head_hidden_size = num_scales * self.backbone_features
        self._train_scales: Optional[int] = None  # set by set_training_stage: scales a stage needs

    def _make_head(self, name: str, in_features: int, num_classes: int) -> nn.Module:
        if name.startswith('local_'):
            return LocalClassifiers(in_features, num_classes, self.num_classifiers)
        return super()._make_head(name, in_features, num_classes)

    def scale_backbone(self, scale: int) -> nn.Module:
        return self.backbone if scale == 0 or self.share_backbone else self.zoom_backbones[scale - 1]

    # --- one scale ---------------------------------------------------------------------------------------------
    def object_mask(self, attention: torch.Tensor) -> torch.Tensor:
        """M_b: the cells of attention M `[B, h, w]` above its Otsu threshold (Sec. 4.3), `[B, h, w]` bool."""
        return otsu_mask(attention, self.otsu_bins)

    def attend(self, scale: int, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone, local classifiers (Eq. 1), attention M, Otsu mask M_b and the object head (Eq. 5)."""
        feature_map = self.scale_backbone(scale).forward_features(x)
        self.warn_if_map_too_small(feature_map, "Otsu's threshold finds no object and the attention M is empty")
        activations = self.heads[f'local_{scale}'](feature_map)  # A, [B, L + 1, h, w]
        scores = activations.float().softmax(1) if self.attention_from == 'probabilities' else activations
        attention = scores[:, :-1].amax(1)  # M: max over the non-background channels (Sec. 4.3)
        object_mask = self.object_mask(attention.detach())  # M_b
        pool_mask = object_mask | ~object_mask.flatten(1).any(1)[:, None, None]  # empty M_b: the whole map
        object_feature = feature_map.masked_fill(~pool_mask[:, None], float('-inf')).amax((2, 3))
        return dict(activations=activations, attention=attention, object_mask=object_mask,
                    object_feature=object_feature,
                    object_logits=self.heads[f'object_{scale}'](F.dropout(object_feature, self.drop_rate,
                                                                           self.training)),
                    local_logits=activations[:, :-1].mean((2, 3)))  # averaged local prediction

    def _forward_scales(self, x: torch.Tensor, num_scales: Optional[int] = None,
                        attend_last: bool = True) -> List[Dict[str, torch.Tensor]]:
        """Every scale in turn; scale k + 1 sees the bounding box of scale k's M_b zoomed to the input size.
        `box` is each scale's view in the original image's pixels (scale 0: the whole image). Without
        `attend_last` the last scale gets its image and box only: no backbone pass of its own."""
        check_images(x, self.in_chans, self.min_input_size)
        height, width = x.shape[-2:]
        batch = x.shape[0]
        box = torch.tensor([0., 0., width, height], device=x.device).expand(batch, 4)
        num_scales = num_scales or self.num_scales
        scales = []
        view = x
        for k in range(num_scales):
            out = self.attend(k, view) if attend_last or k + 1 < num_scales else {}
            out.update(image=view, box=box)
            scales.append(out)
            if k + 1 < num_scales:
                crop = mask_bounding_box(out['object_mask'], image_size=(height, width))  # in this scale's pixels
                scale = (box[:, 2:] - box[:, :2]) / torch.tensor([width, height], device=x.device)
                box = torch.cat([box[:, :2] + crop[:, :2] * scale, box[:, :2] + crop[:, 2:] * scale], 1)
                with torch.no_grad():  # the nested box cut from the input once: one interpolation, not one per scale
                    view = crop_regions(x, box[:, None], (height, width))[:, 0]
        return scales

    def _combine(self, scales: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
        """Log of the mean over scales of the per-scale prediction (mean of object and local softmax), computed in
        float32 and returned in the heads' dtype (float32 under autocast, half for a `.half()` model)."""
        probs = [(s['object_logits'].float().softmax(-1) + s['local_logits'].float().softmax(-1)) / 2
                 for s in scales]
        return torch.stack(probs).mean(0).clamp_min(1e-12).log().to(self.heads['object_0'].weight.dtype)

    # --- timm surface ------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, S, D + L]`: per scale, the object-level feature and the averaged local prediction."""
        scales = self._forward_scales(x)
        return torch.stack([torch.cat([s['object_feature'], s['local_logits']], 1) for s in scales], 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        dim = self.backbone_features
        if pre_logits:
            return x[..., :dim].flatten(1)
        scales = [dict(object_logits=self.heads[f'object_{k}'](x[:, k, :dim]), local_logits=x[:, k, dim:])
                  for k in range(x.shape[1])]
        return self._combine(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C]` log of the probabilities averaged over heads and scales (softmax returns them): no single
        classifier's logits, so `get_classifier()` (scale 0's object head) on pre-logits is not this output."""
        return self._combine(self._forward_scales(x))

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        scales = self._forward_scales(x, self._train_scales if self.training else None)
        logits = {'combined': self._combine(scales)}
        extras = {}
        for k, s in enumerate(scales):
            logits[f'object_{k}'] = s['object_logits']
            logits[f'local_{k}'] = s['local_logits']
            extras.update({f'activations_{k}': s['activations'], f'object_mask_{k}': s['object_mask']})
        extras['scale_boxes'] = torch.stack([s['box'] for s in scales], 1)
        return FGVCOutput(logits=logits, main='combined', attention=self._attention_in_image(scales, x.shape[-2:]),
                          extras=extras)

    def loss(self, output: FGVCOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per scale k: `loss_local_k` (Eq. 2-4) and `loss_object_k` (Eq. 5); `loss` is their sum (Eq. 6 per
        scale; the stages pick one scale's terms), weighted by `loss_weights`; each head takes its `label_smoothing`."""
        self.check_logits(output)
        target = class_indices(target, 'CAA', 'its local classifiers score the true class against the background')
        terms = {}
        for k in range(self.num_scales):
            if f'object_{k}' not in output.logits:
                continue
            terms[f'loss_local_{k}'] = local_loss(output.extras[f'activations_{k}'], output.extras[f'object_mask_{k}'],
                                                  target, self.label_smoothing.get(f'local_{k}', 0.))
            terms[f'loss_object_{k}'] = self.head_loss(f'object_{k}', output.logits[f'object_{k}'], target)  # Eq. 5
        return {'loss': self.weighted_sum(terms), **terms}

    def training_stages(self) -> List[TrainingStage]:
        """One stage per scale, in order (Sec. 4.4.2): its backbone and heads, its two loss terms, 40 epochs; with
        `scale_schedule='joint'` one stage that trains every scale on the sum of their terms for those 40 epochs."""
        if self.scale_schedule == 'joint':
            return [TrainingStage(name='joint_scales', epochs=40)]
        stages = []
        for k in range(self.num_scales):
            backbone = 'backbone.' if k == 0 or self.share_backbone else f'zoom_backbones.{k - 1}.'
            stages.append(TrainingStage(
                name=f'scale_{k}', trainable=(backbone, f'heads.local_{k}.', f'heads.object_{k}.'),
                loss_terms=(f'loss_local_{k}', f'loss_object_{k}'), epochs=40))
        return stages

    def set_training_stage(self, stage: TrainingStage) -> None:
        """A scale's stage runs that scale and the ones it zooms from, not the later ones."""
        scale = int(stage.name.rsplit('_', 1)[1]) if stage.name.startswith('scale_') else None
        self._train_scales = scale + 1 if scale is not None else None

    def start_training_stage(self, stage: TrainingStage, previous: Optional[TrainingStage]) -> List[nn.Parameter]:
        """With `zoom_init='previous'` ('previous_model'), scale k + 1's backbone (and heads) start from scale k's
        trained ones when stage k + 1 follows stage k in this run (the engine calls this at the stage's first step, a
        resume there included); a run that starts at stage k + 1 keeps what it loaded. Returns the copied
        parameters, whose optimiser state the engine drops."""
        scale = int(stage.name.rsplit('_', 1)[1]) if stage.name.startswith('scale_') else None
        if scale and previous is not None and previous.name == f'scale_{scale - 1}' and self.zoom_init != 'independent':
            return self.init_scale_from_previous(scale, heads=self.zoom_init == 'previous_model')
        return []

    def init_scale_from_previous(self, scale: int, heads: bool = False) -> List[nn.Parameter]:
        """Copy scale `scale - 1`'s backbone weights (with `heads`, also its local classifiers and object head)
        into scale `scale`'s, in place (the optimiser keeps its parameters); returns the parameters written. A shared
        backbone is not copied."""
        if not 1 <= scale < self.num_scales:
            return []
        pairs = [] if self.share_backbone else [(self.scale_backbone(scale - 1), self.scale_backbone(scale))]
        if heads:
            pairs += [(self.heads[f'{h}_{scale - 1}'], self.heads[f'{h}_{scale}']) for h in ('local', 'object')]
        with torch.no_grad():
            for source, target in pairs:
                for name, value in source.state_dict().items():
                    target.state_dict()[name].copy_(value)
        return [p for _, target in pairs for p in target.parameters()]

    # --- attention ---------------------------------------------------------------------------------------------
    @torch.no_grad()  # a view carries no gradient: its crop is made from the detached M_b
    def zoomed_views(self, x: torch.Tensor, num_scales: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The image each scale sees, `[B, S, C, H, W]` (scale 0: `x`), and its box in `x`'s pixels, `[B, S, 4]`
        (x1, y1, x2, y2), for the first `num_scales` scales (all by default). Costs S - 1 backbone passes: the
        last scale's own attention is not needed for its view."""
        scales = self._forward_scales(x, num_scales, attend_last=False)
        return torch.stack([s['image'] for s in scales], 1), torch.stack([s['box'] for s in scales], 1)

    @staticmethod
    def _attention_in_image(scales: List[Dict[str, torch.Tensor]], size) -> torch.Tensor:
        """Each scale's M in the original image's coordinates (zero outside its box), `[B, S, H, W]` in [0, 1]."""
        height, width = size
        maps = []
        for s in scales:
            attention = min_max_normalize(s['attention'].detach().float()[:, None])  # [B, 1, h, w]
            box = s['box']
            # affine map from the original image's normalised coordinates into this scale's box
            sx = width / (box[:, 2] - box[:, 0]).clamp_min(1e-6)
            sy = height / (box[:, 3] - box[:, 1]).clamp_min(1e-6)
            tx = (width - box[:, 0] - box[:, 2]) / (box[:, 2] - box[:, 0]).clamp_min(1e-6)
            ty = (height - box[:, 1] - box[:, 3]) / (box[:, 3] - box[:, 1]).clamp_min(1e-6)
            zero = torch.zeros_like(sx)
            theta = torch.stack([torch.stack([sx, zero, tx], -1), torch.stack([zero, sy, ty], -1)], 1)
            grid = F.affine_grid(theta, [attention.shape[0], 1, height, width], align_corners=False)
            inside = (grid.abs() <= 1).all(-1)[:, None]  # zero padding alone would bleed half a cell outside
            sampled = F.grid_sample(attention, grid, mode='bilinear', padding_mode='border', align_corners=False)
            maps.append(sampled * inside)
        return torch.cat(maps, 1)

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """Each scale's attention M in input-image coordinates, `[B, S, H, W]` in [0, 1] (zero outside the box the
        scale zoomed into). Details: `scale_boxes` `[B, S, 4]` (x1, y1, x2, y2 px in the input), each scale's M
        `attention_k` and Otsu mask `object_mask_k` on its own feature grid, and the zoomed images `zoomed_regions`
        `[B, S - 1, C, H, W]`.
        """
        scales = self._forward_scales(x)
        attention = self._attention_in_image(scales, x.shape[-2:])
        if not return_details:
            return attention
        details = {'scale_boxes': torch.stack([s['box'] for s in scales], 1)}
        for k, scale in enumerate(scales):
            details.update({f'attention_{k}': scale['attention'], f'object_mask_{k}': scale['object_mask']})
        if len(scales) > 1:
            details['zoomed_regions'] = torch.stack([s['image'] for s in scales[1:]], 1)
        return attention, details


def _create_caa(variant: str, pretrained: bool = False, **kwargs) -> CAA:
    return build_fgvc_model(CAA, variant, pretrained, **kwargs)


_PAPER = dict(
    classifier=('heads.object_0', 'heads.local_0', 'heads.object_1', 'heads.local_1', 'heads.object_2',
                'heads.local_2'),
    paper_name='Generating Attention from Classifier Activations for Fine-grained Recognition',
    paper_ids='arXiv:1811.10770',
)

default_cfgs = generate_default_cfgs({
    # short side resized to the input size, nothing cut from it (the paper tests without a crop, Sec. 4.1)
    **tagged_cfgs('caa_resnet50', ('cub200', 'aircraft', 'cars'), crop_pct=1.0, test_input_size=448, **_PAPER),
    **tagged_cfgs('caa_resnet18', ('cub200',), crop_pct=1.0, test_input_size=448, **_PAPER),
    'caa_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),
    **tagged_cfgs('caa_swin_tiny', ('cub200',), crop_pct=1.0, test_input_size=448, **_PAPER, **SWIN_BACKBONE_CFG),
})


@register_model
def caa_resnet50(pretrained: bool = False, **kwargs) -> CAA:
    """CAA with ResNet-50 backbones (the paper's), one per scale."""
    model_args = dict(backbone='resnet50')
    return _create_caa('caa_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def caa_resnet18(pretrained: bool = False, **kwargs) -> CAA:
    """CAA with ResNet-18 backbones (small, CPU-friendly)."""
    model_args = dict(backbone='resnet18')
    return _create_caa('caa_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def caa_tiny(pretrained: bool = False, **kwargs) -> CAA:
    """CAA on timm's 0.4 M-parameter `test_resnet`: CPU demo and tests."""
    model_args = dict(backbone='test_resnet')
    return _create_caa('caa_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def caa_swin_tiny(pretrained: bool = False, **kwargs) -> CAA:
    """CAA with Swin-T backbones, one per scale: a 14 x 14 map at 448 px (stride 32, as ResNet-50)."""
    model_args = dict(backbone='swin_tiny_patch4_window7_224', backbone_args=dict(img_size=448))
    return _create_caa('caa_swin_tiny', pretrained, **dict(model_args, **kwargs))
