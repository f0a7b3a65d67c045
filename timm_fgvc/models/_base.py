"""The model contract every timm-fgvc method keeps (SPEC §2).

`FGVCModel` is the shared base: it owns the timm backbone, the named classification heads and the timm
surface (`forward_features`, `forward_head`, `get_classifier`, `reset_classifier`, `group_matcher`,
`set_grad_checkpointing`). A method subclass adds its own parts and implements `forward_features`,
`forward_head` and `forward_train`; the training engine only ever talks to this surface.
"""
from __future__ import annotations

import copyreg
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import class_activation_map, maps_in_image
from ._weights import load_backbone_weights

__all__ = ['FGVCOutput', 'TrainingStage', 'FGVCModel', 'BackboneInfo', 'SpatialFeatures', 'create_backbone',
           'backbone_info', 'check_images', 'slot_cross_entropy']


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
    (None = the run's own settings). `frozen_norm_stats`: a BatchNorm layer the stage freezes keeps its running
    statistics (eval mode, the default); False normalises it with batch statistics, which it also tracks, as a
    module frozen by `requires_grad_(False)` alone does in PyTorch.
    """
    name: str
    trainable: Tuple[str, ...] = ('',)
    loss_terms: Optional[Tuple[str, ...]] = None
    epochs: Optional[int] = None
    lr: Optional[float] = None
    backbone_lr: Optional[float] = None
    frozen_norm_stats: bool = True

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
    """Mean cross-entropy of per-region / per-part logits `[B, K, C]` against the image label `[B]` (or soft
    targets `[B, C]`, as Mixup makes), over the slots of `mask` `[B, K]` (all slots without one)."""
    per_slot = F.cross_entropy(logits.float().flatten(0, 1), target.repeat_interleave(logits.shape[1], dim=0),
                               label_smoothing=label_smoothing, reduction='none').view(logits.shape[:2])
    return slot_mean(per_slot, mask)


def class_indices(target: torch.Tensor, method: str, why: str) -> torch.Tensor:
    """`target` as the class indices `[B]` a loss needs (`why`); soft targets (Mixup, CutMix) are an error."""
    if target.ndim != 1 or target.is_floating_point():
        raise ValueError(f"{method}'s loss needs class indices [B] (int64), got a {target.dtype} target of shape "
                         f'{tuple(target.shape)}: {why}, so soft targets (Mixup, CutMix) do not apply.')
    return target


def slot_mean(values: torch.Tensor, mask: Optional[torch.Tensor] = None, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of per-slot `values` `[B, K]` over the slots of `mask` `[B, K]` (all slots without one): of every slot,
    or along `dim` (-1: per sample). A slot the method could not fill repeats another and would count it twice."""
    mask = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp_min(1)


# arguments only some timm families take: transformers an input size and dynamic sizing, CNNs an output stride.
# create_backbone drops one the chosen backbone has no parameter for (output_stride: see `_check_output_stride`)
_OPTIONAL_BACKBONE_ARGS = ('dynamic_img_size', 'img_size', 'output_stride')


@dataclass(frozen=True)
class BackboneInfo:
    """What the adapter found out about a backbone at construction.

    `layout` is the shape of the timm model's own `forward_features`: 'NCHW' (CNNs), 'NHWC' (Swin-style) or
    'tokens' (ViT-style `[B, N, D]`, prefix tokens first); `reduction` the stride of the adapted `[B, D, h, w]`
    map; `channels` its D; `fixed_size` the only input size a backbone without dynamic sizing takes (inputs are
    resized to it) or None.
    """
    name: str
    layout: str
    reduction: int
    channels: int
    fixed_size: Optional[Tuple[int, int]] = None


class SpatialFeatures:
    """Put in front of a timm transformer's class by `create_backbone`: `forward_features` gives `[B, D, h, w]`.

    The model stays that timm model (same modules, state-dict keys and module paths; `isinstance` holds): only
    `forward_features` and `forward_head` change. ViT-style tokens come from timm's own
    `forward_intermediates(..., output_fmt='NCHW', intermediates_only=True)` of the last block (final norm applied,
    prefix tokens dropped); Swin-style NHWC maps from the same call, or permuted where a model has none. Inputs are
    zero-padded on the bottom/right to a multiple of the patch size (what timm's `dynamic_img_pad` does), or
    resized to the backbone's fixed size where it has no dynamic sizing.
    """
    fgvc_info: BackboneInfo

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        info = self.fgvc_info
        if info.fixed_size is not None and tuple(x.shape[-2:]) != info.fixed_size:
            x = F.interpolate(x, size=info.fixed_size, mode='bilinear', align_corners=False)
        x = _pad_to_patches(x, self)
        if info.layout == 'NCHW':  # a CNN that only takes its own input size
            return super().forward_features(x)
        if hasattr(self, 'forward_intermediates'):
            maps = self.forward_intermediates(x, indices=1, norm=True, output_fmt='NCHW', intermediates_only=True)[-1]
            norm, fc_norm = getattr(self, 'norm', None), getattr(self, 'fc_norm', None)
            if isinstance(norm, nn.Identity) and isinstance(fc_norm, nn.LayerNorm):  # pooled-feature norm, per cell
                maps = fc_norm(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return maps
        return super().forward_features(x).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The mean of the spatial map, then the model's classifier (none in a method's backbone)."""
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.get_classifier()(pooled)

    def __reduce_ex__(self, protocol):
        # pickled as the timm class it extends, so loading rebuilds the adapted class from that
        reduced = super().__reduce_ex__(protocol)
        if reduced[0] is not copyreg.__newobj__:
            return reduced
        return (_new_spatial, (type(self).__mro__[2],)) + tuple(reduced[2:])


_SPATIAL_CLASSES: Dict[type, type] = {}


def _spatial_class(model_cls: type) -> type:
    if model_cls not in _SPATIAL_CLASSES:
        _SPATIAL_CLASSES[model_cls] = type(f'Spatial{model_cls.__name__}', (SpatialFeatures, model_cls),
                                           {'__module__': __name__})
    return _SPATIAL_CLASSES[model_cls]


def _new_spatial(model_cls: type) -> nn.Module:
    cls = _spatial_class(model_cls)
    return cls.__new__(cls)


def _pad_to_patches(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Zero-pad `[B, C, H, W]` on the bottom/right so H and W are multiples of the model's patch size."""
    patch = getattr(getattr(model, 'patch_embed', None), 'patch_size', None)
    if patch is None or getattr(model.patch_embed, 'dynamic_img_pad', False):
        return x
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    pad_h, pad_w = -x.shape[-2] % ph, -x.shape[-1] % pw
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _create_timm_model(name: str, pretrained: bool, in_chans: int, kwargs: dict) -> Tuple[nn.Module, dict]:
    """`timm.create_model` without classifier (and without pooling where the model allows it); returns the model
    and the optional arguments it dropped."""
    kwargs = {'dynamic_img_size': True, 'global_pool': '', **kwargs}  # transformers: any input size
    dropped = {}
    while True:
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
            return model, dropped
        except TypeError as e:
            key = next((k for k in _OPTIONAL_BACKBONE_ARGS
                        if k in kwargs and f"unexpected keyword argument '{k}'" in str(e)), None)
            if key is None:
                raise
            dropped[key] = kwargs.pop(key)
        except AssertionError:
            # models whose head needs a pooling (DeiT distilled, CoaT, CrossViT): theirs, unused by the adapter
            if 'global_pool' not in kwargs:
                raise
            dropped['global_pool'] = kwargs.pop('global_pool')
        except RuntimeError as e:
            if 'Unknown model' in str(e):
                raise ValueError(f'Unknown timm backbone {name!r}; see timm.list_models() for valid names.') from e
            raise


def _fixed_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The input size a patch-embedding backbone insists on (strict, no dynamic sizing), else None."""
    patch_embed = getattr(model, 'patch_embed', None)
    if patch_embed is None or not getattr(patch_embed, 'strict_img_size', False) or \
            getattr(model, 'dynamic_img_size', False):
        return None
    return tuple(patch_embed.img_size)


@torch.no_grad()
def _probe(name: str, model: nn.Module, in_chans: int, size: Tuple[int, int]) -> torch.Tensor:
    """One forward_features of a zero batch of one image (eval mode, no grad), with a clear error if it fails."""
    reference = next(model.parameters(), None)
    x = torch.zeros(1, in_chans, *size,
                    device=reference.device if reference is not None else None,
                    dtype=reference.dtype if reference is not None and reference.is_floating_point() else None)
    was_training = model.training
    model.eval()
    try:
        return model.forward_features(x)
    except Exception as e:  # any failure means the adapter cannot use this backbone
        raise ValueError(f'Backbone {name!r} ({type(model).__name__}) failed on a {size[0]}x{size[1]} px input: '
                         f'{type(e).__name__}: {e}') from e
    finally:
        model.train(was_training)


def _adapt(name: str, model: nn.Module, in_chans: int) -> BackboneInfo:
    """Find the layout of the model's features; give transformers a `[B, D, h, w]` forward_features."""
    feature_info = getattr(model, 'feature_info', None) or [{}]
    reduction = feature_info[-1].get('reduction')
    fixed_size = _fixed_input_size(model)
    own_size = tuple((getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3, 224, 224))[-2:])
    sizes = [fixed_size] if fixed_size else [(2 * (reduction or 32),) * 2, own_size]
    for size in sizes:  # a small input first; a backbone that only takes its own size gets inputs resized to it
        try:
            raw = _probe(name, model, in_chans, size)
            break
        except ValueError as e:
            error = e
    else:
        raise error
    fixed_size = fixed_size or (size if size != sizes[0] else None)
    if not torch.is_tensor(raw) or raw.ndim not in (3, 4):
        shape = tuple(raw.shape) if torch.is_tensor(raw) else type(raw).__name__
        raise ValueError(f'Backbone {name!r} ({type(model).__name__}) has no spatial feature map: forward_features '
                         f'gives {shape}, not [B, D, h, w], [B, h, w, D] or patch tokens [B, N, D]. Use a timm CNN '
                         'or transformer.')
    if raw.ndim == 4 and getattr(model, 'output_fmt', 'NCHW') != 'NHWC':
        layout = 'NCHW'
    else:
        layout = 'NHWC' if raw.ndim == 4 else 'tokens'
        if layout == 'tokens' and not hasattr(model, 'forward_intermediates'):
            raise ValueError(f'Backbone {name!r} ({type(model).__name__}) gives patch tokens {tuple(raw.shape)} but '
                             'has no forward_intermediates(output_fmt="NCHW") to lay them out on its patch grid.')
    maps = raw
    if layout != 'NCHW' or fixed_size is not None:
        model.__class__ = _spatial_class(type(model))
        model.fgvc_info = BackboneInfo(name, layout, reduction or 0, 0, fixed_size)
        maps = _probe(name, model, in_chans, size)
    if maps.ndim != 4:
        raise ValueError(f'Backbone {name!r} ({type(model).__name__}) gives {tuple(maps.shape)} from '
                         'forward_intermediates, not a [B, D, h, w] map.')
    if reduction is None:  # no feature_info: the stride the probe shows
        reduction = round(size[0] / maps.shape[-2])
    info = BackboneInfo(name, layout, int(reduction), int(maps.shape[1]), fixed_size)
    model.fgvc_info = info
    return info


def _check_output_stride(name: str, info: BackboneInfo, dropped: dict) -> None:
    """A backbone without an `output_stride` argument (a transformer: its stride is fixed by the patch size and
    the stages) is accepted when its stride already is the requested one (ViT-B/16 at 16), else a clear error."""
    requested = dropped.get('output_stride')
    if requested is not None and requested != info.reduction:
        raise ValueError(f'Backbone {name!r} has no output_stride option: its features have stride {info.reduction} '
                         f'(fixed by its patch size and stages), not {requested}. Drop output_stride for this '
                         'backbone or choose one whose stride is the one you need.')


def create_backbone(
        name: str,
        pretrained: Union[bool, str] = False,
        in_chans: int = 3,
        **kwargs,
) -> nn.Module:
    """A timm model with no pooling and no classifier whose `forward_features` gives `[B, D, h, w]`.

    Works for any timm model with a spatial feature map: CNNs (ResNet, ConvNeXt, EfficientNet, RegNet...) as they
    are; transformers (ViT-style tokens, Swin-style NHWC maps) get `SpatialFeatures` in front of their class, so
    they stay timm models with their own module paths and state-dict keys. Transformers are built with
    `dynamic_img_size=True` (any input size: crops and zooms of any size go back through them) unless
    `dynamic_img_size=False` is passed; `img_size` sets the size their position embeddings are built for.
    Backbones that take neither ignore both. `backbone.fgvc_info` (a `BackboneInfo`) holds the layout, stride and
    channels; a backbone without a spatial map fails here, naming it and what is missing.

    `pretrained=True` loads that backbone's own timm (ImageNet) weights from the Hub; a path loads a plain timm
    model's weights from that local file instead (offline; its classifier is dropped). `output_stride=16` (a
    kwarg) dilates the last stage of a CNN as in timm; a transformer has no such option and is accepted only when
    its stride already is that value (see `_check_output_stride`).
    """
    from_file = isinstance(pretrained, (str, bytes)) or hasattr(pretrained, '__fspath__')
    backbone, dropped = _create_timm_model(name, bool(pretrained) and not from_file, in_chans, kwargs)
    info = _adapt(name, backbone, in_chans)
    _check_output_stride(name, info, dropped)
    if from_file:
        load_backbone_weights(backbone, pretrained)
    return backbone


def backbone_info(backbone: nn.Module) -> BackboneInfo:
    """The `BackboneInfo` `create_backbone` attached (layout, stride and channels of the feature map)."""
    info = getattr(backbone, 'fgvc_info', None)
    if info is None:
        raise ValueError(f'{type(backbone).__name__} was not made by create_backbone; build backbones with it.')
    return info


def _caller_stacklevel() -> int:
    """The `stacklevel` of a warning raised here that points at the first frame outside timm-fgvc and torch: the
    user's line that called the model, however many torch frames lie between."""
    inside = tuple(os.path.join(os.path.dirname(path), '') for path in  # the package folders, with a separator
                   (os.path.dirname(os.path.abspath(__file__)), torch.__file__))
    frame, level = sys._getframe(1), 1  # stacklevel 1: the function that calls this (and warnings.warn)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


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
    # parameter-name prefixes that only `forward_train` + `loss` train (the prediction `forward` does not read them)
    trained_by_forward_train_only: Tuple[str, ...] = ()

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
        self.backbone_args = dict(backbone_args or {})  # create_backbone(backbone_name, **backbone_args) rebuilds it
        self.backbone = create_backbone(backbone, pretrained=pretrained_backbone, in_chans=in_chans,
                                        **(backbone_args or {}))
        # state-dict prefixes of every backbone (pretrained, lower lr, timm's layer groups); see add_backbone
        self.backbone_prefixes: Tuple[str, ...] = ('backbone.',)
        info = backbone_info(self.backbone)
        self.backbone_features = info.channels  # D of the [B, D, h, w] map
        self.feature_reduction = info.reduction  # its stride (with output_stride dilation; a ViT's patch size)
        self.heads = nn.ModuleDict()
        self._head_features: Dict[str, int] = {}
        self.loss_weights: Dict[str, float] = {}  # per loss term ('loss_<name>' -> name), default 1
        self.label_smoothing: Dict[str, float] = {}  # per head name, default 0
        self.grad_checkpointing = False

    def add_backbone(self, name: str, copy_weights: bool = True) -> nn.Module:
        """Another backbone like `self.backbone`, registered under `name` (backbone lr, layer groups, pretrained
        loading); it starts from `self.backbone`'s weights (copied, not read or downloaded again) or, without
        `copy_weights`, from its own initialisation."""
        backbone = create_backbone(self.backbone_name, in_chans=self.in_chans, **self.backbone_args)
        if copy_weights:
            backbone.load_state_dict(self.backbone.state_dict())
        self.backbone_prefixes += (f'{name}.',)
        return backbone

    def named_backbones(self) -> List[Tuple[str, nn.Module]]:
        """Every backbone of the method with its state-dict prefix: `backbone.` and any `add_backbone` made."""
        return [(prefix, self.get_submodule(prefix.rstrip('.'))) for prefix in self.backbone_prefixes]

    @property
    def input_convs(self) -> Tuple[str, ...]:
        """Every layer that reads the image (pretrained_cfg['first_conv'], adapted by timm for `in_chans` != 3):
        each backbone's stem as its own timm cfg names it; a method with another image reader adds it."""
        convs = []
        for prefix, backbone in self.named_backbones():
            stem = (getattr(backbone, 'pretrained_cfg', None) or {}).get('first_conv') or ()
            convs += [prefix + name for name in ((stem,) if isinstance(stem, str) else stem)]
        return tuple(convs)

    def warn_if_map_too_small(self, feature_map: torch.Tensor, what: str) -> None:
        """Warn when the `[B, D, h, w]` map has a side of 1 cell: the method's attention (`what`) is then empty."""
        height, width = feature_map.shape[-2:]
        if min(height, width) < 2:
            warnings.warn(f'{type(self).__name__}: a {height} x {width} feature map, so {what}. Use an input of at '
                          f'least {2 * self.feature_reduction} px a side, or a backbone of smaller stride '
                          "(backbone_args={'output_stride': 16}).", stacklevel=3)

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
        """On every backbone of the method (CAA's per-scale ones, a second backbone of S3N or LFD)."""
        self.grad_checkpointing = enable
        for _, backbone in self.named_backbones():
            backbone.set_grad_checkpointing(enable)

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
        if self.training and self.trained_by_forward_train_only and torch.is_grad_enabled():
            self.warn_prediction_trains_only_part()
        return self.forward_head(self.forward_features(x))

    def warn_prediction_trains_only_part(self) -> None:
        """A training loop on `model(x)` (timm's, Lightning's, one's own) trains only what the prediction reads:
        the parts that build the method's attention or parts get no gradient (warned once per method class)."""
        if torch.compiler.is_compiling():
            return
        untrained = sorted({prefix.rstrip('.') for name, param in self.named_parameters() if param.requires_grad
                            for prefix in self.trained_by_forward_train_only if name.startswith(prefix)})
        if untrained:  # (parts frozen on purpose, e.g. a linear probe of the main head, are not missed)
            warnings.warn(
                f'{type(self).__name__} is training through model(x), which trains only what its prediction reads: '
                f'{", ".join(untrained)} get no gradient. Train it with `out = model.forward_train(x, y); '
                'model.loss(out, y)["loss"].backward()` and an optimizer over `timm_fgvc.parameter_groups(model, '
                'lr, backbone_lr)`, or with train_fgvc.py.', UserWarning, stacklevel=_caller_stacklevel())

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        return FGVCOutput(logits={self.main_head: self.forward(x)}, main=self.main_head)

    # --- training ------------------------------------------------------------------------------
    def loss(self, output: FGVCOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy on every named logit, weighted by `loss_weights` (default 1); `loss` is the sum.

        Logits `[B, K, C]` (one prediction per region or part) get the mean cross-entropy over their K slots,
        counting only the slots of `output.extras['<name>_mask']` (`[B, K]` bool) when the method gives one.
        """
        self.check_logits(output)
        terms = {f'loss_{name}': self.head_loss(name, logits, target, output.extras.get(f'{name}_mask'))
                 for name, logits in output.logits.items()}
        return {'loss': self.weighted_sum(terms), **terms}

    def head_loss(self, name: str, logits: torch.Tensor, target: torch.Tensor,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cross-entropy of head `name` with its `label_smoothing`; `[B, K, C]` logits: the mean over the slots of
        `mask`. A method with its own `loss` scores its classification heads with this."""
        smoothing = self.label_smoothing.get(name, 0.)
        if logits.ndim == 3:
            return slot_cross_entropy(logits, target, mask, smoothing)
        return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)

    def weighted_sum(self, terms: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the `loss_<name>` terms, each times `loss_weights[<name>]` (default 1)."""
        return sum(self.loss_weights.get(k[len('loss_'):], 1.) * v for k, v in terms.items())

    def check_logits(self, output: FGVCOutput) -> None:
        """The evaluated logits must have the model's number of classes (a clear error before any loss)."""
        if output.prediction.shape[-1] != self.num_classes:
            raise ValueError(f'Model has {self.num_classes} classes but logits have {output.prediction.shape[-1]}.')

    def training_stages(self) -> List[TrainingStage]:
        """One stage that trains everything; staged methods override this."""
        return [TrainingStage(name='main')]

    def set_training_stage(self, stage: TrainingStage) -> None:
        """Called by the engine whenever it (re)enters a stage, a resume included; a staged method may skip work the
        stage does not train. Must not change weights: one-off initialisation belongs in `start_training_stage`."""

    def start_training_stage(self, stage: TrainingStage, previous: Optional[TrainingStage]) -> List[nn.Parameter]:
        """Called by the engine once, at the first step of `stage` (also when a run resumes exactly there), with the
        stage this run trained before it (None when the run starts at `stage`): a method's one-off initialisation
        (CAA's next scale from the previous one, HSM's fresh head). Returns the parameters it re-initialised, whose
        optimiser state the engine drops."""
        return []

    # parameter-name prefixes with their own optimiser settings, relative to the new layers' lr (S3N's beta,
    # HSM's saliency score); the engine gives each its own param group: {prefix: {'lr_scale': x, 'weight_decay': 0}}
    param_group_rules: Dict[str, Dict[str, float]] = {}

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """timm's convention: parameter names the optimizer must not decay (with each backbone's own, e.g. a ViT's
        position embedding and class token)."""
        no_decay = [p for p, r in self.param_group_rules.items() if r.get('weight_decay', None) == 0]
        names = {n for n, _ in self.named_parameters() if any(n.startswith(p) for p in no_decay)}
        for prefix, backbone in self.named_backbones():
            if hasattr(backbone, 'no_weight_decay'):
                names |= {prefix + n for n in backbone.no_weight_decay()}
        return names

    def pretrained_parameter_names(self) -> List[str]:
        """Parameters that come from a pretrained backbone (lower learning rate in the paper recipes)."""
        return [n for n, _ in self.named_parameters() if n.startswith(self.backbone_prefixes)]

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """`[B, K, H, W]` maps in input-image coordinates, in [0, 1]; methods override.

        The base gives the class activation map of the predicted class from the main head, on `forward_features`
        when that is the `[B, D, h, w]` map the head reads; any other method must override this.
        """
        try:
            cam = class_activation_map(self.forward_features(x), self.heads[self.main_head])
        except ValueError as e:
            raise NotImplementedError(
                f'{type(self).__name__}.attention_maps: the base class activation map of head {self.main_head!r} '
                f"does not apply ({e}): override attention_maps with the method's attention.") from e
        cam = maps_in_image(cam.unsqueeze(1), x.shape[-2:])
        return (cam, {}) if return_details else cam

