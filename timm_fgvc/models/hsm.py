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
- Fusion after the fourth residual block counted from the stem (the paper's footnote for ResNet-152; with
  ResNet-50 that is the first block of `layer2`); `fusion_module` names any other backbone module.
- Step 1 runs on the training data of the run (the paper used ImageNet's validation set: run stage 0 on a
  generic dataset, then `--start-stage 1 --initial-checkpoint ...` on the target). Its head trains with the
  saliency branch, since a new dataset's classifier starts from scratch.
- The few-shot protocol (k images per class, 3 seeds) is the engine's `--shots k --seed s`.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..layers import maps_in_image
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images
from ._builder import build_fgvc_model, fgvc_cfg, tagged_cfgs

__all__ = ['HSM', 'SaliencyBranch', 'SaliencyModulation', 'residual_block_paths']


class SaliencyBranch(nn.Module):
    """AlexNet conv1-4, a 1x1 convolution and ReLU: one non-negative saliency map per image (Sec. 3.2)."""

    def __init__(self, in_chans: int = 3, channels: Tuple[int, int, int, int] = (96, 256, 384, 384)):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.score = nn.Conv2d(c4, 1, 1)  # the saliency score of every cell
        for module in self.modules():  # Xavier initialisation (Sec. 3.4, step 1)
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.score(self.features(x)))  # [B, 1, h, w]


class SaliencyModulation(nn.Module):
    """Wraps the backbone module at the fusion point: its output l becomes l * (s + 1) (Eq. 2).

    The owning model sets `saliency` ([B, 1, h, w], any h, w: resized bilinearly to the block's output) for the
    duration of one forward; without it the block runs unmodulated.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.saliency: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.saliency is None:
            return out
        saliency = F.interpolate(self.saliency, size=out.shape[-2:], mode='bilinear', align_corners=False)
        return out * (saliency.to(out.dtype) + 1)  # Eq. 2


def residual_block_paths(backbone: nn.Module) -> List[str]:
    """Module paths of a timm CNN's residual blocks in forward order (ResNet `layerN.i`, ConvNeXt-style
    `stages.N.blocks.i`, EfficientNet-style `blocks.N.i`)."""
    if all(hasattr(backbone, f'layer{i}') for i in range(1, 5)):
        return [f'layer{i}.{j}' for i in range(1, 5) for j in range(len(getattr(backbone, f'layer{i}')))]
    stages = getattr(backbone, 'stages', None)
    if stages is not None and all(hasattr(s, 'blocks') for s in stages):
        return [f'stages.{i}.blocks.{j}' for i, s in enumerate(stages) for j in range(len(s.blocks))]
    blocks = getattr(backbone, 'blocks', None)
    if isinstance(blocks, nn.Sequential) and all(isinstance(b, nn.Sequential) for b in blocks):
        return [f'blocks.{i}.{j}' for i, b in enumerate(blocks) for j in range(len(b))]
    raise ValueError(f'Cannot list the residual blocks of {type(backbone).__name__}; pass fusion_module='
                     '"<module path in the backbone>" to say where the saliency modulates the features.')


class HSM(FGVCModel):
    """Hallucinated saliency modulation of a timm backbone's features.

    Args:
        backbone: timm CNN name.
        num_classes: classes of the classifier.
        fusion_block: the modulation follows this residual block, counted from the stem (4).
        fusion_module: or the path of the backbone module whose output is modulated (e.g. 'layer2.0').
        approach: 'B' fine-tunes everything in step 2 (default), 'A' keeps the saliency branch frozen.
        saliency_channels: conv1-4 widths of the saliency branch.
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
            fusion_block: int = 4,
            fusion_module: Optional[str] = None,
            approach: str = 'B',
            saliency_channels: Tuple[int, int, int, int] = (96, 256, 384, 384),
    ):
        super().__init__(backbone, num_classes, in_chans, pretrained_backbone, drop_rate, backbone_args)
        if approach not in ('A', 'B'):
            raise ValueError(f"approach must be 'A' (saliency frozen in step 2) or 'B' (all trainable), got "
                             f'{approach!r}.')
        if fusion_module is None:
            paths = residual_block_paths(self.backbone)
            if not 1 <= fusion_block <= len(paths):
                raise ValueError(f'fusion_block must be between 1 and {len(paths)} for {backbone}, got '
                                 f'{fusion_block}.')
            fusion_module = paths[fusion_block - 1]
        parent_path, _, name = fusion_module.rpartition('.')
        try:
            parent = self.backbone.get_submodule(parent_path)
            block = getattr(parent, name)
        except AttributeError as e:
            raise ValueError(f'{backbone} has no module {fusion_module!r} to modulate.') from e
        setattr(parent, name, SaliencyModulation(block))
        self.fusion_module = fusion_module
        self.approach = approach
        self.saliency = SaliencyBranch(in_chans, tuple(saliency_channels))
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

    def _modulated_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        check_images(x, self.in_chans, self.min_input_size)
        saliency = self.saliency_map(x)
        fusion = self.backbone.get_submodule(self.fusion_module)
        fusion.saliency = saliency
        try:
            feature_map = self.backbone.forward_features(x)
        finally:
            fusion.saliency = None
        return dict(saliency=saliency, feature_map=feature_map)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._modulated_features(x)['feature_map']

    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> FGVCOutput:
        out = self._modulated_features(x)
        logits = self.forward_head(out['feature_map'])
        return FGVCOutput(logits={'main': logits}, main='main', attention=self._in_image(out['saliency'], x),
                          extras={'saliency': out['saliency']})

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
        """Step 1: the saliency branch (and the new classifier) with the RGB path frozen, the run's epochs;
        step 2: fine-tuning for the paper's 70 epochs, everything (Approach B) or all but the saliency branch (A)."""
        finetune = ('',) if self.approach == 'B' else ('backbone.', 'heads.')
        return [TrainingStage('saliency', trainable=('saliency.', 'heads.')),
                TrainingStage('finetune', trainable=finetune, epochs=70)]


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
    **tagged_cfgs('hsm_vit_small', ('cub200',), input_size=224, crop_pct=0.875, **_PAPER,
                  first_conv='backbone.patch_embed.proj', interpolation='bicubic',
                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
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
