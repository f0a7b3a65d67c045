"""HSM: hallucinated saliency maps that modulate the RGB features of a fine-grained classifier.

Paper: "Hallucinating Saliency Maps for Fine-Grained Image Classification for Limited Data Domains",
C. Figueroa-Flores, B. Raducanu, D. Berga, J. van de Weijer, VISAPP 2021 (https://arxiv.org/abs/2007.12562).

Pipeline (one batched pass):
  image -> saliency branch (AlexNet conv1-4, a 1x1 conv and ReLU: one map, Sec. 3.2) -> bilinear to the fusion
  point's size -> s
  image -> backbone up to the fusion point -> l -> l * (s + 1) (Eq. 2, modulation with a skip connection)
  -> rest of the backbone -> pooling -> classifier. `forward` returns the classifier's logits.
Training has two steps (`training_stages`, Sec. 3.4): (1) the saliency branch (Xavier init) learns for
classification with the RGB path frozen; (2) fine-tuning on the target with the saliency branch frozen
(Approach A) or everything trainable (Approach B, the default and the better one in Tables 1-2).

Choices where the paper is open (SPEC §6):
- The saliency branch has the original AlexNet's conv1-4 shapes (96, 256, 384, 384 channels; the paper's last
  layer has 384 maps at 13 x 13 for 227 px), with ReLU and the two max-pools, without local response norm.
- Fusion point (`default_fusion_point`): the input of the first block at output stride >= 8 that has an identity
  shortcut. The paper fuses at stride 8 (AlexNet before pool-2; ResNet-152 after the fourth residual block, its
  footnote: the output of `layer2.0` = the input of `layer2.1`), and the modulated tensor must reach an identity
  shortcut, since a block whose two paths start with conv + BatchNorm normalises a spatially uniform s (the `+1`
  included) away. On ResNet-18 the fourth block (`layer2.1`) feeds such a block (`layer3.0`), so it fuses one
  block earlier (after `layer2.0`). Any timm backbone whose blocks timm's `group_matcher` lists works (RegNet,
  EfficientNet, ConvNeXt, Swin); backbones with one stride throughout (ViT) fuse after the first quarter of their
  blocks. `fusion_block` (after the n-th block) and `fusion_module` (after any module) override it.
- Step 1 trains the saliency branch only ("freeze all the remaining layers", the head included: the paper's head
  is the ImageNet one, trained). Step 1 here may run on the run's own data (the paper used ImageNet's validation
  set: run stage 0 on a generic dataset, then `--start-stage 1 --initial-checkpoint ...` on the target); a new
  dataset's classifier starts random, so `saliency_step_trains_head=True` trains it with the branch there.
  Step 2 re-initialises the classifier (Xavier) when it follows step 1 in the same run (`start_training_stage`).
- The saliency branch can die: the loss first prefers s = 0 (the pretrained model), and once every cell is below
  zero ReLU passes no gradient. Guards: the score's bias starts at 1 (every cell live), the score gets no weight
  decay (`param_group_rules`), and training warns (`DeadSaliencyWarning`) when a batch's map is all zero.
- Step 1's frozen BatchNorm layers normalise with batch statistics (`saliency_step_norm_stats='batch'`), as layers
  frozen with `requires_grad_(False)` alone do in PyTorch (the paper says only "freeze"). With their running
  statistics instead, the pretrained network is only right at s = 0, since (s + 1) rescales the features those
  statistics were measured on: step 1 then learns to switch the modulation off. Measured (transfer protocol's
  step 1: resnet18 source model, CUB 51-200, 140 steps, SGD lr 0.02): running statistics leave 0% live cells,
  batch statistics 93% (mean s 0.22, max 0.47). Over the whole step 1 (420 steps) the map still collapses at that
  lr (3% live) and, kept live by a smaller step-1 lr (1e-3), dies in step 2 at the recipe's 0.02 (0.1% live);
  `saliency_lr_scale=0.05` (the branch at 1e-3 in both steps) keeps it live to the end (94-98% live cells, 3 seeds).
- The few-shot protocol (k images per class, 3 seeds) is the engine's `--shots k --seed s`.
"""
import contextlib
import re
import threading
import warnings
import weakref
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..layers import maps_in_image
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images
from ._builder import VIT_BACKBONE_CFG, build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['HSM', 'DeadSaliencyWarning', 'SaliencyBranch', 'SaliencyModulation', 'residual_block_paths',
           'default_fusion_point']


class DeadSaliencyWarning(UserWarning):
    """The saliency map of a training batch is all zero: the branch gets no gradient any more."""


class SaliencyBranch(nn.Module):
    """AlexNet conv1-4, a 1x1 convolution and ReLU: one non-negative saliency map per image (Sec. 3.2).

    Weights start from Xavier (Sec. 3.4, step 1); the paper does not give the biases. The score's bias starts at
    `score_bias_init` (1: every cell live, s ~ 1) rather than 0, because with a zero bias only some cells start
    above zero and a few optimiser steps that lower s everywhere (the loss first prefers the pretrained model's
    s = 0) push every cell below zero, after which ReLU passes no gradient and the branch is dead for good.
    `padding_mode`: AlexNet's zero padding (default) marks the border cells of the small map; 'reflect' removes
    that cue, so the map can only follow image content (an ablation).
    """

    def __init__(self, in_chans: int = 3, channels: Tuple[int, int, int, int] = (96, 256, 384, 384),
                 score_bias_init: float = 1.0, padding_mode: str = 'zeros'):
        super().__init__()
        c1, c2, c3, c4 = channels
        pad = dict(padding_mode=padding_mode)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 11, stride=4, padding=2, **pad), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2, **pad), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1, **pad), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1, **pad), nn.ReLU(inplace=True),
        )
        self.score = nn.Conv2d(c4, 1, 1)  # the saliency score of every cell
        for module in self.modules():  # Xavier initialisation (Sec. 3.4, step 1)
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.score.bias, score_bias_init)  # live cells at the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.score(self.features(x)))  # [B, 1, h, w]


class SaliencyModulation(nn.Module):
    """Wraps the backbone module at the fusion point: its output l (or, with `side='input'`, its input) becomes
    l * (s + 1) (Eq. 2).

    The owning model gives the map s (`[B, 1, h, w]`, any h, w: resized bilinearly to the features) for one forward
    with `modulating(s)`; outside it the block runs unmodulated. The map is held per thread, so threads sharing the
    model each modulate with their own. With `keep_for_recompute` (gradient checkpointing) it is also kept for
    backward's recomputation of the block, which runs outside the forward: found by the block's input where the
    recomputation passes the same tensor (timm's default, non-reentrant checkpointing of the block as a segment of
    its own), so two forwards before one backward each recompute with their own map; else the last forward's map
    (reentrant checkpointing, a block inside a longer segment: one forward per backward). A kept map stays until
    the next forward.
    Features may be NCHW (CNNs), NHWC (`channels_last_fmt`, e.g. Swin stages) or tokens `[B, N, C]` whose first
    `num_prefix_tokens` (class/register tokens) are left as they are and whose rest is the patch grid (ViT; the
    grid's aspect is the image's, `image_size`).
    """

    def __init__(self, block: nn.Module, side: str = 'output', channels_last_fmt: bool = False,
                 num_prefix_tokens: int = 0):
        super().__init__()
        if side not in ('input', 'output'):
            raise ValueError(f"side must be 'input' or 'output', got {side!r}.")
        self.block = block
        self.side = side
        self.channels_last_fmt = channels_last_fmt
        self.num_prefix_tokens = num_prefix_tokens
        self._clear_maps()

    def _clear_maps(self) -> None:
        self._this_call = threading.local()  # .map: (s, image size, keep for recompute) of this thread's forward
        self._for_recompute: Dict[int, tuple] = {}  # id(block input) -> (weak reference to it, s, image size)
        self._last_kept: Optional[tuple] = None  # (s, image size) of the last forward that kept its map
        self._kept_lock = threading.Lock()  # the kept maps are shared by threads (and DataParallel replicas)

    def __getstate__(self):  # copies and pickles carry no map of a forward in flight (a thread-local cannot be)
        state = dict(super().__getstate__())
        for name in ('_this_call', '_for_recompute', '_last_kept', '_kept_lock'):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._clear_maps()

    @contextlib.contextmanager
    def modulating(self, saliency: torch.Tensor, image_size: Optional[Tuple[int, int]] = None,
                   keep_for_recompute: bool = False):
        """Modulate this thread's forwards inside the block with `saliency`."""
        previous = getattr(self._this_call, 'map', None)
        self._this_call.map = (saliency, image_size, keep_for_recompute)
        try:
            yield
        finally:
            self._this_call.map = previous

    def _map_for(self, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[Tuple[int, int]]]:
        call = getattr(self._this_call, 'map', None)
        if call is not None:
            saliency, image_size, keep = call
            if keep:  # backward recomputes the block outside this call, maybe in another thread
                with self._kept_lock:
                    for key in [k for k, (ref, *_) in self._for_recompute.items() if ref() is None]:
                        del self._for_recompute[key]
                    self._for_recompute[id(x)] = (weakref.ref(x), saliency, image_size)
                    self._last_kept = (saliency, image_size)
            return saliency, image_size
        with self._kept_lock:
            kept = self._for_recompute.get(id(x))
            if kept is not None and kept[0]() is x:
                return kept[1], kept[2]
            return self._last_kept or (None, None)

    def modulate(self, features: torch.Tensor, saliency: torch.Tensor,
                 image_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if features.ndim == 3:  # tokens [B, N, C]: prefix tokens, then the patch grid row by row
            prefix, patches = features[:, :self.num_prefix_tokens], features[:, self.num_prefix_tokens:]
            image_h, image_w = image_size or saliency.shape[-2:]
            grid_h = max(1, round((patches.shape[1] * image_h / image_w) ** 0.5))
            grid_w = patches.shape[1] // grid_h
            if grid_h * grid_w != patches.shape[1]:
                raise ValueError(f'Cannot lay {patches.shape[1]} tokens out as a patch grid for a {image_h}x{image_w}'
                                 ' image; pass fusion_module= a module with a spatial output.')
            resized = _resized(saliency, (grid_h, grid_w), patches.dtype).flatten(2).transpose(1, 2)  # [B, hw, 1]
            return torch.cat([prefix, patches * (resized + 1)], 1)  # Eq. 2
        if self.channels_last_fmt:  # NHWC
            return features * (_resized(saliency, features.shape[1:3], features.dtype).permute(0, 2, 3, 1) + 1)
        return features * (_resized(saliency, features.shape[-2:], features.dtype) + 1)  # Eq. 2

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        saliency, image_size = self._map_for(x)
        if saliency is None:
            return self.block(x, *args, **kwargs)
        if self.side == 'input':
            return self.block(self.modulate(x, saliency, image_size), *args, **kwargs)
        return self.modulate(self.block(x, *args, **kwargs), saliency, image_size)


def _resized(saliency: torch.Tensor, size, dtype: torch.dtype) -> torch.Tensor:
    size = tuple(int(v) for v in size)
    return F.interpolate(saliency, size=size, mode='bilinear', align_corners=False).to(dtype)


def residual_block_paths(backbone: nn.Module) -> List[str]:
    """Module paths of a timm backbone's blocks in forward order, from its own `group_matcher` (ResNet `layerN.i`,
    ConvNeXt `stages.N.blocks.i`, EfficientNet/MobileNet `blocks.N.i`, RegNet `sN.bi`, Swin `layers.N.blocks.i`,
    ViT `blocks.i`); stage downsampling layers and final norms are not blocks."""
    matcher = backbone.group_matcher(coarse=False).get('blocks') if hasattr(backbone, 'group_matcher') else None
    if isinstance(matcher, str):
        patterns = matcher.split('|') if not matcher.startswith('^') else [matcher]
    else:  # [(pattern, None)] for blocks, [(pattern, (fixed ordinal,))] for downsampling layers and norms
        patterns = [pattern for pattern, ordinal in (matcher or ()) if ordinal is None]
    modules = dict(backbone.named_modules())
    paths: List[str] = []
    for name, _ in backbone.named_parameters():
        for pattern in patterns:
            match = re.match(pattern, name)
            if match:
                path = match.group(0).rstrip('.')
                if path in modules and path not in paths:
                    paths.append(path)
                break
    if not paths:
        raise ValueError(f'Cannot list the blocks of {type(backbone).__name__}; pass fusion_module="<module path in '
                         'the backbone>" to say where the saliency modulates the features.')
    order = {name: i for i, name in enumerate(modules)}
    return sorted(paths, key=order.__getitem__)


def has_identity_shortcut(block: nn.Module) -> bool:
    """Whether a timm block adds its input back unchanged (so a modulation of its input reaches its output)."""
    if hasattr(block, 'has_skip'):  # EfficientNet / MobileNet blocks
        return bool(block.has_skip)
    if type(block).__module__.endswith('.resnet') and hasattr(block, 'downsample'):
        return block.downsample is None  # ResNet: a projection shortcut is `downsample`
    for name in ('shortcut', 'downsample'):  # ConvNeXt `shortcut`, RegNet `downsample`: nn.Identity is identity
        if hasattr(block, name):
            return isinstance(getattr(block, name), nn.Identity)
    return hasattr(block, 'mlp') and any(hasattr(block, n) for n in ('attn', 'token_mixer'))  # transformer blocks


def block_reductions(backbone: nn.Module, paths: Sequence[str]) -> List[Optional[int]]:
    """The output stride of each block: that of the first `feature_info` stage that ends at or after it."""
    order = {name: i for i, name in enumerate(dict(backbone.named_modules()))}
    ends = []
    for info in getattr(backbone, 'feature_info', None) or []:
        module = info.get('module', '')
        inside = [i for name, i in order.items() if name == module or name.startswith(module + '.')]
        if inside:
            ends.append((max(inside), info['reduction']))
    return [next((r for end, r in sorted(ends) if end >= order[p]), None) for p in paths]


def default_fusion_point(backbone: nn.Module) -> Tuple[str, str]:
    """The default fusion point `(module path, 'input' | 'output')`: the input of the first block at output stride
    >= 8 whose shortcut is an identity.

    Why: the paper fuses at stride 8 (before AlexNet's pool-2, 27 x 27 for 227 px; after ResNet-152's fourth
    block, 28 x 28 for 224 px, its footnote), and the modulated tensor must reach an identity shortcut: a block
    whose paths both start with conv + BatchNorm (a stage's first block) normalises a spatially uniform s away.
    On ResNet-50/101/152/34 this is the input of `layer2.1`, i.e. the output of `layer2.0`, the fourth block
    counted from the stem; on ResNet-18 (two blocks per stage) the output of its third block, `layer2.0`, because
    its fourth one feeds `layer3.0`. Backbones whose blocks all have one stride (ViT) start after the first quarter
    of their blocks. If no identity-shortcut block follows, the nearest one before is used; without any, the
    output of the first block at stride >= 8 (with a warning).
    """
    paths = residual_block_paths(backbone)
    reductions = block_reductions(backbone, paths)
    known = [r for r in reductions if r is not None]
    if known and len(set(known)) > 1:  # a feature pyramid: the first block at stride >= 8
        start = next((i for i, r in enumerate(reductions) if r is not None and r >= 8), len(paths) - 1)
    else:  # isotropic (ViT) or unknown strides: after the first quarter of the blocks
        start = min(len(paths) - 1, len(paths) // 4)
    identity = [has_identity_shortcut(backbone.get_submodule(p)) for p in paths]
    after = [i for i in range(start, len(paths)) if identity[i]]
    before = [i for i in range(start - 1, -1, -1) if identity[i]]
    if after or before:
        return paths[(after or before)[0]], 'input'
    warnings.warn(f'HSM: no block of {type(backbone).__name__} has an identity shortcut; the saliency modulates the '
                  f'output of {paths[start]!r}, where a normalisation that follows may cancel a uniform modulation. '
                  'Pass fusion_module= to choose another module.')
    return paths[start], 'output'


class HSM(FGVCModel):
    """Hallucinated saliency modulation of a timm backbone's features.

    Args:
        backbone: timm model name: a CNN, or a ViT / Swin (read as a spatial map, see `create_backbone`).
        num_classes: classes of the classifier.
        fusion_block: the modulation follows this block, counted from the stem (None: `default_fusion_point`,
            which is the paper's fourth block on ResNet-34/50/101/152 and the third on ResNet-18).
        fusion_module: or the path of the backbone module whose output is modulated (e.g. 'layer2.0').
        approach: 'B' fine-tunes everything in step 2 (default), 'A' keeps the saliency branch frozen.
        saliency_channels: conv1-4 widths of the saliency branch.
        score_bias_init: the saliency score's starting bias (1: every cell starts live; see `SaliencyBranch`).
        saliency_padding: padding of the saliency branch's convolutions: 'zeros' (AlexNet's) or 'reflect' (no
            border cue; an ablation).
        saliency_step_trains_head: step 1 also trains the classifier. False is the paper ("freeze all the
            remaining layers": its head is the ImageNet one, trained); set True when step 1 runs on a dataset whose
            classifier is new (a frozen random head gives the saliency branch no useful signal).
        saliency_step_norm_stats: what the frozen RGB path's BatchNorm layers normalise with in step 1: 'batch'
            (batch statistics, tracked into their running ones; default) or 'frozen' (their running statistics).
            With 'frozen' the branch dies (see the module docstring); the paper does not say.
        saliency_lr_scale: the saliency branch's lr relative to the new layers' lr, in both steps (1: the paper's
            single lr; a smaller value keeps the map live under a transfer recipe's larger lr).
        dead_saliency_check_every: in training mode, every this many batches check that the saliency map is not all
            zero and warn (`DeadSaliencyWarning`) if it is; 0 turns the check off.
    """
    main_head = 'main'

    def __init__(
            self,
            backbone: str = 'resnet152',
            num_classes: int = 1000,
            in_chans: int = 3,
            pretrained_backbone: Union[bool, str] = False,  # True: timm Hub weights; a path: a local file
            drop_rate: float = 0.,
            backbone_args: Optional[dict] = None,
            fusion_block: Optional[int] = None,
            fusion_module: Optional[str] = None,
            approach: str = 'B',
            saliency_channels: Tuple[int, int, int, int] = (96, 256, 384, 384),
            score_bias_init: float = 1.0,
            saliency_padding: str = 'zeros',
            saliency_step_trains_head: bool = False,
            saliency_step_norm_stats: str = 'batch',
            saliency_lr_scale: float = 1.0,
            dead_saliency_check_every: int = 50,
    ):
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        # the seed of step 2's head re-initialisation: the one the model was built under (the run's), the same on
        # every process even where each later draws from a stream of its own
        self._reinit_seed = torch.initial_seed()
        if approach not in ('A', 'B'):
            raise ValueError(f"approach must be 'A' (saliency frozen in step 2) or 'B' (all trainable), got "
                             f'{approach!r}.')
        if saliency_step_norm_stats not in ('batch', 'frozen'):
            raise ValueError("saliency_step_norm_stats must be 'batch' (step 1's frozen BatchNorm layers use batch "
                             f"statistics) or 'frozen' (their running statistics), got {saliency_step_norm_stats!r}.")
        side = 'output'
        if fusion_module is None and fusion_block is not None:  # after the n-th block counted from the stem
            paths = residual_block_paths(self.backbone)
            if not 1 <= fusion_block <= len(paths):
                raise ValueError(f'fusion_block must be between 1 and {len(paths)} for {backbone}, got '
                                 f'{fusion_block}.')
            fusion_module = paths[fusion_block - 1]
        elif fusion_module is None:
            fusion_module, side = default_fusion_point(self.backbone)
        parent_path, _, name = fusion_module.rpartition('.')
        try:
            parent = self.backbone.get_submodule(parent_path)
            block = getattr(parent, name)
        except AttributeError as e:
            raise ValueError(f'{backbone} has no module {fusion_module!r} to modulate.') from e
        setattr(parent, name, SaliencyModulation(
            block, side, channels_last_fmt=getattr(self.backbone, 'output_fmt', 'NCHW') == 'NHWC',
            num_prefix_tokens=getattr(self.backbone, 'num_prefix_tokens', 0)))
        self.fusion_module = fusion_module
        self.fusion_side = side  # the wrapped module's 'input' or 'output' is modulated
        self.approach = approach
        self.saliency_step_trains_head = saliency_step_trains_head
        self.saliency_step_norm_stats = saliency_step_norm_stats
        # the saliency score is never decayed: weight decay drives it (and with it every cell) towards zero; its rule
        # comes first, since the first matching prefix wins
        self.param_group_rules = {'saliency.score.': {'lr_scale': saliency_lr_scale, 'weight_decay': 0.}}
        if saliency_lr_scale != 1.0:
            self.param_group_rules['saliency.'] = {'lr_scale': saliency_lr_scale}
        self.dead_saliency_check_every = dead_saliency_check_every
        self._train_batches = 0
        if saliency_padding not in ('zeros', 'reflect'):
            raise ValueError(f"saliency_padding must be 'zeros' or 'reflect', got {saliency_padding!r}.")
        self.saliency = SaliencyBranch(in_chans, tuple(saliency_channels), score_bias_init, saliency_padding)
        self.add_head('main', self.backbone_features)
        self.num_features = self.head_hidden_size = self.backbone_features

    def _make_head(self, name: str, in_features: int, num_classes: int) -> nn.Module:
        head = super()._make_head(name, in_features, num_classes)
        if isinstance(head, nn.Linear):  # the top layer starts from Xavier (Sec. 4.1)
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        return head

    def saliency_map(self, x: torch.Tensor) -> torch.Tensor:
        """The hallucinated saliency s `[B, 1, h, w]` (13 x 13 for a 227 px input), non-negative."""
        return self.saliency(x)

    @property
    def input_convs(self) -> Tuple[str, ...]:
        return super().input_convs + ('saliency.features.0',)  # the saliency branch reads the image too

    def _modulated_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        check_images(x, self.in_chans, self.min_input_size)
        saliency = self.saliency_map(x)
        fusion = self.backbone.get_submodule(self.fusion_module)
        # with gradient checkpointing, backward runs the fusion block again and needs the map then too
        with fusion.modulating(saliency, tuple(x.shape[-2:]), self.grad_checkpointing and torch.is_grad_enabled()):
            feature_map = self.backbone.forward_features(x)
        return dict(saliency=saliency, feature_map=feature_map)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._modulated_features(x)['feature_map']

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        out = self._modulated_features(x)
        if self.training:
            self._check_saliency_alive(out['saliency'])
        logits = self.forward_head(out['feature_map'])
        return FGVCOutput(logits={'main': logits}, main='main', attention=self._in_image(out['saliency'], x),
                          extras={'saliency': out['saliency']})

    def _check_saliency_alive(self, saliency: torch.Tensor) -> None:
        """Warn when a training batch's saliency map is all zero: ReLU then passes no gradient, the branch stays
        dead and HSM is its backbone. Checked every `dead_saliency_check_every` batches (one device sync each)."""
        every, self._train_batches = self.dead_saliency_check_every, self._train_batches + 1
        if every <= 0 or (self._train_batches - 1) % every or torch.compiler.is_compiling():
            return
        if not bool((saliency.detach() > 0).any()):
            warnings.warn(DeadSaliencyWarning(
                f'HSM: the saliency map of training batch {self._train_batches} is all zero, so the saliency branch '
                'gets no gradient (HSM is now its backbone). Lower the learning rate of step 1, train it with SGD, or '
                'start it with live cells (score_bias_init > 0).'), stacklevel=2)

    @staticmethod
    def _in_image(saliency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return maps_in_image(saliency.detach().float(), x.shape[-2:])

    def attention_maps(self, x: torch.Tensor, return_details: bool = False):
        """The hallucinated saliency in input-image coordinates, `[B, 1, H, W]` in [0, 1]. Details: the saliency
        at the branch's own resolution (`saliency`)."""
        saliency = self.saliency_map(x)
        attention = self._in_image(saliency, x)
        return (attention, {'saliency': saliency}) if return_details else attention

    def training_stages(self) -> List[TrainingStage]:
        """Step 1: the saliency branch alone (the head too with `saliency_step_trains_head`) with the RGB path
        frozen, the run's epochs; step 2: fine-tuning for the paper's 70 epochs, everything (Approach B) or all but
        the saliency branch (A), from a Xavier-initialised classifier (`start_training_stage`)."""
        saliency = ('saliency.', 'heads.') if self.saliency_step_trains_head else ('saliency.',)
        finetune = ('',) if self.approach == 'B' else ('backbone.', 'heads.')
        return [TrainingStage('saliency', trainable=saliency,
                              frozen_norm_stats=self.saliency_step_norm_stats == 'frozen'),
                TrainingStage('finetune', trainable=finetune, epochs=70)]

    def start_training_stage(self, stage: TrainingStage, previous: Optional[TrainingStage]) -> List[nn.Parameter]:
        """Step 2 starts from a Xavier-initialised top layer (Sec. 3.4) when it follows step 1 in the same run.

        The engine calls this at the first step of a stage, a resume exactly there included, so an interrupted run
        does what an uninterrupted one does. A run that starts at step 2 (`--start-stage 1` from a checkpoint)
        keeps the classifier it loaded. The re-initialisation is in place and draws from a generator seeded with
        the seed the model was built under (the run's), so every process of a distributed run agrees; the engine
        drops the head's optimiser state.
        """
        if stage.name == 'finetune' and previous is not None and previous.name == 'saliency':
            self.reinit_classifier(self._reinit_seed)
            return [p for head in self.heads.values() for p in head.parameters()]
        return []

    def reinit_classifier(self, seed: Optional[int] = None) -> None:
        """Xavier weights and zero biases for every head (in place)."""
        generator = torch.Generator().manual_seed(seed % 2 ** 63) if seed is not None else None
        for head in self.heads.values():
            if isinstance(head, nn.Linear):
                with torch.no_grad():
                    weight = torch.empty(head.weight.shape)
                    nn.init.xavier_uniform_(weight, generator=generator)
                    head.weight.copy_(weight)
                    head.bias.zero_()


def _create_hsm(variant: str, pretrained: bool = False, **kwargs) -> HSM:
    return build_fgvc_model(HSM, variant, pretrained, **kwargs)


_PAPER = dict(
    classifier=('heads.main',),
    paper_name='Hallucinating Saliency Maps for Fine-Grained Image Classification for Limited Data Domains',
    paper_ids='arXiv:2007.12562',
)

default_cfgs = generate_default_cfgs({
    **tagged_cfgs('hsm_resnet152', ('flowers102', 'cars', 'cub200'), input_size=224, crop_pct=0.875, **_PAPER),
    **tagged_cfgs('hsm_resnet18', ('cub200',), input_size=224, crop_pct=0.875, **_PAPER),
    'hsm_tiny': fgvc_cfg(input_size=96, crop_pct=1.0, num_classes=10, **_PAPER),
    **tagged_cfgs('hsm_vit_small', ('cub200',), input_size=224, crop_pct=0.875, **_PAPER, **VIT_BACKBONE_CFG),
})


@register_model
def hsm_resnet152(pretrained: bool = False, **kwargs) -> HSM:
    """HSM with a ResNet-152 backbone (the paper's)."""
    model_args = dict(backbone='resnet152')
    return _create_hsm('hsm_resnet152', pretrained, **dict(model_args, **kwargs))


@register_model
def hsm_resnet18(pretrained: bool = False, **kwargs) -> HSM:
    """HSM with a ResNet-18 backbone (small, CPU-friendly)."""
    model_args = dict(backbone='resnet18')
    return _create_hsm('hsm_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def hsm_tiny(pretrained: bool = False, **kwargs) -> HSM:
    """HSM on timm's 0.4 M-parameter `test_resnet`: CPU demo and tests."""
    model_args = dict(backbone='test_resnet')
    return _create_hsm('hsm_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def hsm_vit_small(pretrained: bool = False, **kwargs) -> HSM:
    """HSM with a ViT-S/16 backbone at 224 px (the saliency modulates its patch tokens)."""
    model_args = dict(backbone='vit_small_patch16_224')
    return _create_hsm('hsm_vit_small', pretrained, **dict(model_args, **kwargs))
