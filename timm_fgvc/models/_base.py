"""The model contract every timm-fgvc method keeps (SPEC §2).

`FGVCModel` is the shared base: it owns the timm backbone, the named classification heads and the timm
surface (`forward_features`, `forward_head`, `get_classifier`, `reset_classifier`, `group_matcher`,
`set_grad_checkpointing`). A method subclass adds its own parts and implements `forward_features`,
`forward_head` and `forward_train`; the training engine only ever talks to this surface.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.class_response import maps_in_image
from ._weights import load_backbone_weights

__all__ = ['FGVCOutput', 'TrainingStage', 'FGVCModel', 'create_backbone', 'check_images', 'slot_cross_entropy']


@dataclass
class FGVCOutput:
    """What `forward_train` returns: named logits plus everything losses and visualisation need.

    `logits` maps a head name (e.g. `joint`, `original`, `discriminative`, `complementary`) to
    `[B, num_classes]` logits (or `[B, K, num_classes]`: one prediction per region/part, with an optional
    `extras['<name>_mask']` `[B, K]`); `main` names the evaluated prediction; `attention` holds `[B, K, H, W]`
    maps in input-image coordinates (values in [0, 1]); `extras` holds method tensors (peaks, grids,
    resampled images, auxiliary terms) by name.
    """
    logits: Dict[str, torch.Tensor]
    main: str
    attention: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits[self.main]


@dataclass(frozen=True)
class TrainingStage:
    """One stage of a staged recipe (SSANet 3, HSM 2, CAA one per scale).

    `trainable` lists parameter-name prefixes that train in this stage ('' = everything), `loss_terms`
    the loss keys that are summed into `loss` (None = all), and the paper's epochs / learning rates
    (None = the run's own settings).
    """
    name: str
    trainable: Tuple[str, ...] = ('',)
    loss_terms: Optional[Tuple[str, ...]] = None
    epochs: Optional[int] = None
    lr: Optional[float] = None
    backbone_lr: Optional[float] = None

    def is_trainable(self, param_name: str) -> bool:
        return any(param_name.startswith(prefix) for prefix in self.trainable)


def check_images(x: torch.Tensor, in_chans: int, min_size: int = 32) -> None:
    """Raise a clear error for inputs a CNN backbone cannot take (wrong rank, channels or a tiny size)."""
    if not torch.is_tensor(x) or x.ndim != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(
            f'Expected a batch of images shaped [B, {in_chans}, H, W], got {shape}. '
            'Add a batch dimension with x.unsqueeze(0) for a single image.')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'Expected {in_chans}-channel images, got {x.shape[1]} channels (shape {tuple(x.shape)}). '
            'Convert grayscale/RGBA images with PIL `.convert("RGB")`, or build the model with '
            f'in_chans={x.shape[1]}.')
    if min(x.shape[-2:]) < min_size:
        raise ValueError(
            f'Images of {tuple(x.shape[-2:])} px are too small for this model: the backbone needs at least '
            f'{min_size} px per side. Resize inputs (the pretrained_cfg input_size is the recommended size).')


def slot_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                       label_smoothing: float = 0.) -> torch.Tensor:
    """Mean cross-entropy of per-region / per-part logits `[B, K, C]` against the image label `[B]`, over the
    slots of `mask` `[B, K]` (all slots without one)."""
    per_slot = F.cross_entropy(logits.float().flatten(0, 1), target.repeat_interleave(logits.shape[1]),
                               label_smoothing=label_smoothing, reduction='none').view(logits.shape[:2])
    mask = torch.ones_like(per_slot) if mask is None else mask.to(per_slot.dtype)
    return (per_slot * mask).sum() / mask.sum().clamp_min(1)


def create_backbone(
        name: str,
        pretrained: Union[bool, str] = False,
        in_chans: int = 3,
        **kwargs,
) -> nn.Module:
    """A timm CNN with no pooling and no classifier, so `forward_features` gives `[B, D, h, w]`.

    Any timm model name works if its `forward_features` is a spatial map (ResNet, ConvNeXt, EfficientNet,
    RegNet, ...). `pretrained=True` loads that backbone's own timm (ImageNet) weights from the Hub; a path loads
    a plain timm model's weights from that local file instead (offline; its classifier is dropped).
    `output_stride=16` (a kwarg) dilates the last stage as in timm.
    """
    from_file = isinstance(pretrained, (str, bytes)) or hasattr(pretrained, '__fspath__')
    try:
        backbone = timm.create_model(
            name, pretrained=bool(pretrained) and not from_file, num_classes=0, global_pool='', in_chans=in_chans,
            **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f'Unknown timm backbone {name!r}; see timm.list_models() for valid names.') from e
        raise
    reduction = backbone.feature_info[-1]['reduction'] if getattr(backbone, 'feature_info', None) else None
    if reduction is None:
        raise ValueError(f'Backbone {name!r} does not report a spatial feature map; use a timm CNN.')
    if from_file:
        load_backbone_weights(backbone, pretrained)
    return backbone


class FGVCModel(nn.Module):
    """Base of every method: a timm backbone, named heads in `self.heads`, and the timm surface.

    Subclasses set `main_head` (the key of the evaluated logits) and build `self.heads`
    (an `nn.ModuleDict` of name -> classifier). Heads are rebuilt by `_make_head` on `reset_classifier`,
    so a method whose head is not a plain `nn.Linear` overrides that one method.
    """
    main_head: str = 'main'
    min_input_size: int = 32
    # methods whose attention or prediction is built from their classifiers cannot drop them (num_classes=0)
    needs_classifier: bool = False

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 1000,
            in_chans: int = 3,
            pretrained_backbone: Union[bool, str] = False,
            drop_rate: float = 0.,
            backbone_args: Optional[dict] = None,
    ):
        super().__init__()
        self._check_num_classes(num_classes)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained_backbone, in_chans=in_chans,
                                        **(backbone_args or {}))
        # state-dict prefixes of every backbone (pretrained, lower lr, timm's layer groups); CAA adds its zoom ones
        self.backbone_prefixes: Tuple[str, ...] = ('backbone.',)
        self.backbone_features = self.backbone.num_features
        self.feature_reduction = self.backbone.feature_info[-1]['reduction']  # with output_stride dilation
        self.heads = nn.ModuleDict()
        self._head_features: Dict[str, int] = {}
        self.loss_weights: Dict[str, float] = {}  # per head name, default 1
        self.label_smoothing: Dict[str, float] = {}  # per head name, default 0
        self.grad_checkpointing = False

    # --- heads ---------------------------------------------------------------------------------
    def _make_head(self, name: str, in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def add_head(self, name: str, in_features: int) -> None:
        self._head_features[name] = in_features
        self.heads[name] = self._make_head(name, in_features, self.num_classes)

    @property
    def classifier_names(self) -> Tuple[str, ...]:
        """State-dict prefixes of every head (pretrained_cfg['classifier']), the main head first."""
        names = [self.main_head] + [n for n in self.heads if n != self.main_head]
        return tuple(f'heads.{n}' for n in names)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.heads[self.main_head]

    def _check_num_classes(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}.')
        if num_classes == 0 and self.needs_classifier:
            raise ValueError(
                f'{type(self).__name__} builds its attention and prediction from its classifiers, so it needs '
                'num_classes > 0 (got 0). For its features, use forward_head(forward_features(x), pre_logits=True).')

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace every head (not just the main one) with a fresh one for `num_classes`."""
        self._check_num_classes(num_classes)
        self.num_classes = num_classes
        for name in list(self.heads):
            self.heads[name] = self._make_head(name, self._head_features[name], num_classes)

    # --- timm surface --------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        """The backbone's own groups under `backbone.`; the method's new parts fall in the last group."""
        inner = self.backbone.group_matcher(coarse=coarse)
        owner = '(?:' + '|'.join(re.escape(p.rstrip('.')) for p in self.backbone_prefixes) + ')'

        def prefix(pattern: str) -> str:
            alternatives = pattern.lstrip('^').split('|')
            return '^' + '|'.join(owner + r'\.' + a.lstrip('^') for a in alternatives)

        matcher = {}
        for key, value in inner.items():
            if isinstance(value, str):
                matcher[key] = prefix(value)
            else:
                matcher[key] = [(prefix(p), order) for p, order in value]
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)

    def backbone_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, D, h, w]` from the backbone, after checking the input."""
        check_images(x, self.in_chans, self.min_input_size)
        return self.backbone.forward_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone_feature_map(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.pooled_head(x.mean((2, 3)), pre_logits)

    def pooled_head(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The main head on already pooled features `[B, num_features]` (dropout, then the classifier)."""
        pooled = F.dropout(pooled, p=self.drop_rate, training=self.training)
        return pooled if pre_logits else self.heads[self.main_head](pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        return FGVCOutput(logits={self.main_head: self.forward(x)}, main=self.main_head)

    # --- training ------------------------------------------------------------------------------
    def loss(self, output: FGVCOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy on every named logit, weighted by `loss_weights` (default 1); `loss` is the sum.

        Logits `[B, K, C]` (one prediction per region or part) get the mean cross-entropy over their K slots,
        counting only the slots of `output.extras['<name>_mask']` (`[B, K]` bool) when the method gives one.
        """
        self.check_logits(output)
        terms = {}
        for name, logits in output.logits.items():
            smoothing = self.label_smoothing.get(name, 0.)
            if logits.ndim == 3:
                terms[f'loss_{name}'] = slot_cross_entropy(logits, target, output.extras.get(f'{name}_mask'),
                                                           smoothing)
            else:
                terms[f'loss_{name}'] = F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        total = sum(self.loss_weights.get(k[len('loss_'):], 1.) * v for k, v in terms.items())
        return {'loss': total, **terms}

    def check_logits(self, output: FGVCOutput) -> None:
        """The evaluated logits must have the model's number of classes (a clear error before any loss)."""
        if output.prediction.shape[-1] != self.num_classes:
            raise ValueError(f'Model has {self.num_classes} classes but logits have {output.prediction.shape[-1]}.')

    def training_stages(self) -> List[TrainingStage]:
        """One stage that trains everything; staged methods override this."""
        return [TrainingStage(name='main')]

    def set_training_stage(self, stage: TrainingStage) -> None:
        """Called by the engine when a stage starts; a staged method may skip work the stage does not train."""

    # parameter-name prefixes with their own optimiser settings, relative to the new layers' lr (S3N's beta,
    # HSM's saliency score); the engine gives each its own param group: {prefix: {'lr_scale': x, 'weight_decay': 0}}
    param_group_rules: Dict[str, Dict[str, float]] = {}

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """timm's convention: parameter names the optimizer must not decay."""
        return {n for n, _ in self.named_parameters()
                if any(n.startswith(p) and r.get('weight_decay', None) == 0 for p, r in self.param_group_rules.items())}

    def pretrained_parameter_names(self) -> List[str]:
        """Parameters that come from a pretrained backbone (lower learning rate in the paper recipes)."""
        return [n for n, _ in self.named_parameters() if n.startswith(self.backbone_prefixes)]

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """`[B, K, H, W]` maps in input-image coordinates, in [0, 1]; methods override.

        The base gives the class activation map of the predicted class from the main head.
        """
        features = self.forward_features(x)
        head = self.heads[self.main_head]
        logits = head(features.mean((2, 3)))
        weight = head.weight[logits.argmax(-1)]  # [B, D]
        cam = maps_in_image(torch.einsum('bdhw,bd->bhw', features.float(), weight.float()).unsqueeze(1),
                            x.shape[-2:])
        return (cam, {}) if return_details else cam

