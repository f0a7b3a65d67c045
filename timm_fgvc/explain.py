"""Look at where a model attends: `attention_maps` rendered over the input, with the method's peaks and images.

    timm-fgvc explain --model s3n_resnet50 --checkpoint output/run/model.safetensors --num-classes 200 \\
                      --image bird.jpg --out bird_attention.png

One row per image: the input with every peak marked (red: discriminative set, blue: complementary) or every
region boxed (top-1 to top-4 in red, green, blue, yellow, as LFD's Fig. 2; CAA: each scale's zoom box), the attention (the max over the K
maps) as a heat overlay, and, for methods that resample or crop, the images the branches saw (S3N: the
discriminative and complementary resampled images; LFD: the top zoomed regions; CAA: each later scale's input).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ['denormalize', 'heat_overlay', 'explain_images', 'render_explanation']

_DISCRIMINATIVE, _COMPLEMENTARY, _PEAK = (230, 30, 30), (30, 90, 230), (250, 250, 40)
_RANKS = ((230, 30, 30), (30, 200, 30), (30, 90, 230), (250, 250, 40))  # region top-1 .. top-4
_MAX_REGION_IMAGES = 4


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Model inputs `[B, 3, H, W]` back to uint8 RGB `[B, H, W, 3]`."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a [0, 1] map over an RGB image with a black-red-yellow colour ramp."""
    heat = np.clip(heat, 0, 1)[..., None]
    ramp = np.concatenate([np.clip(heat * 2, 0, 1), np.clip(heat * 2 - 1, 0, 1), np.zeros_like(heat)], -1) * 255
    weight = alpha * heat
    return (image * (1 - weight) + ramp * weight).round().astype(np.uint8)


@torch.no_grad()
def explain_images(model: torch.nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Attention maps, details and predictions of `model` (in eval mode) for a batch of model inputs."""
    model.eval()
    maps, details = model.attention_maps(images, return_details=True)
    logits = model(images)
    return dict(attention=maps, logits=logits, **details)


def render_explanation(images: torch.Tensor, explanation: Dict[str, torch.Tensor], mean: Sequence[float],
                       std: Sequence[float], label_names: Optional[List[str]] = None) -> Image.Image:
    """A PIL image with one row per input: peaks, attention overlay, and the branch images if any."""
    rgb = denormalize(images, mean, std)
    batch, height, width = rgb.shape[:3]
    branches = [explanation[k] for k in ('image_discriminative', 'image_complementary') if k in explanation]
    if 'zoomed_regions' in explanation:  # [B, m, C, z, z] -> the top regions at the input's size
        regions = explanation['zoomed_regions'][:, :_MAX_REGION_IMAGES].float()
        resized = torch.nn.functional.interpolate(regions.flatten(0, 1), size=(height, width), mode='bilinear',
                                                  align_corners=False).view(batch, -1, 3, height, width)
        branches += list(resized.unbind(1))
    columns = 2 + len(branches)
    sheet = Image.new('RGB', (columns * width, batch * (height + 14)), (255, 255, 255))
    heat = explanation['attention'].amax(1).float().cpu().numpy()
    probs = explanation['logits'].float().softmax(-1)
    for b in range(batch):
        top = b * (height + 14)
        marked = Image.fromarray(rgb[b])
        draw = ImageDraw.Draw(marked)
        if 'peak_xy' in explanation:
            for k in explanation['peak_mask'][b].nonzero().flatten().tolist():
                x, y = explanation['peak_xy'][b, k].tolist()
                colour = _PEAK
                if 'discriminative' in explanation:
                    colour = _DISCRIMINATIVE if explanation['discriminative'][b, k] else _COMPLEMENTARY
                r = max(2, width // 40)
                draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)
        if 'scale_boxes' in explanation:  # CAA: the box each later scale zoomed into (scale 0 is the whole image)
            for k, box in list(enumerate(explanation['scale_boxes'][b].tolist()))[1:]:
                draw.rectangle(box, outline=_RANKS[min(k - 1, len(_RANKS) - 1)], width=2)
        if 'region_boxes' in explanation:
            mask = explanation.get('region_mask', torch.ones(explanation['region_boxes'].shape[:2], dtype=torch.bool))
            for k in mask[b].nonzero().flatten().tolist()[::-1]:  # the best region drawn last, on top
                draw.rectangle(explanation['region_boxes'][b, k].tolist(), outline=_RANKS[min(k, len(_RANKS) - 1)],
                               width=2)
        sheet.paste(marked, (0, top))
        sheet.paste(Image.fromarray(heat_overlay(rgb[b], heat[b])), (width, top))
        for i, branch in enumerate(branches):
            sheet.paste(Image.fromarray(denormalize(branch[b:b + 1], mean, std)[0]), ((2 + i) * width, top))
        label = int(probs[b].argmax())
        name = label_names[label] if label_names and label < len(label_names) else str(label)
        ImageDraw.Draw(sheet).text((2, top + height), f'{name} ({probs[b, label]:.2f})', fill=(0, 0, 0))
    return sheet


def explain_files(model: torch.nn.Module, paths: Sequence[str], out: str, img_size: Optional[int] = None,
                  label_names: Optional[List[str]] = None) -> Path:
    """Load images with the model's eval transform, explain them, and save the sheet as a PNG."""
    from timm.data import create_transform, resolve_data_config
    overrides = {'input_size': (3, img_size, img_size)} if img_size else {}
    data_cfg = resolve_data_config(overrides, model=model)
    transform = create_transform(**data_cfg, is_training=False)
    images = []
    for path in paths:
        try:
            images.append(transform(Image.open(path).convert('RGB')))
        except (OSError, ValueError) as e:
            raise ValueError(f'Could not read image {path}: {e}') from e
    batch = torch.stack(images)
    label_names = label_names or (model.pretrained_cfg or {}).get('label_names')
    sheet = render_explanation(batch, explain_images(model, batch), data_cfg['mean'], data_cfg['std'],
                               list(label_names) if label_names else None)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path
