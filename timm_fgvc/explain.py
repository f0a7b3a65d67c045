"""Look at where a model attends: `attention_maps` rendered over the input, with the method's peaks and images.

    timm-fgvc explain --checkpoint output/run/model.safetensors --image bird.jpg --out bird_attention.png

A title row names every column; then one row per image, each panel at least 256 px: the input with every peak
marked (red: discriminative set, blue: complementary) or every region boxed (top-1 to top-4 in red, green, blue,
yellow, as LFD's Fig. 2; CAA: each scale's zoom box), the attention (the max over the K maps) as a heat overlay,
and, for methods that resample or crop, the images the branches saw (S3N: the discriminative and complementary
resampled images; LFD, SSANet: the top zoomed regions; CAA: each later scale's input), and last the top-5 class
names with their probabilities. A plain timm CNN (the baseline) shows the class activation map of its top-1 class.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.loading import open_image
from .layers import class_activation_map, maps_in_image

__all__ = ['denormalize', 'heat_overlay', 'explain_images', 'column_titles', 'prediction_lines',
           'render_explanation', 'explain_files']

_DISCRIMINATIVE, _COMPLEMENTARY, _PEAK = (230, 30, 30), (30, 90, 230), (250, 250, 40)
_RANKS = ((230, 30, 30), (30, 200, 30), (30, 90, 230), (250, 250, 40))  # region top-1 .. top-4
_MAX_REGION_IMAGES = 4
PANEL_GAP = 6  # px between panels
MIN_PANEL_SIZE = 256  # px a side: the titles and the top-5 text stay readable


def check_panel_size(panel_size: int) -> None:
    if panel_size < MIN_PANEL_SIZE:
        raise ValueError(f'Panel size {panel_size}: panels are at least {MIN_PANEL_SIZE} px, to stay readable.')


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
    """Attention maps, details and predictions of `model` (in eval mode) for a batch of model inputs; a plain
    timm CNN (the baseline) gives the class activation map of its top-1 class, to set beside a method's."""
    model.eval()
    if not hasattr(model, 'attention_maps'):
        logits, cam = top1_class_activation_map(model, images)
        return dict(attention=cam, class_activation_map=cam, logits=logits)
    maps, details = model.attention_maps(images, return_details=True)
    logits = model(images)
    return dict(attention=maps, logits=logits, **details)


def top1_class_activation_map(model: torch.nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, CAM of each image's top-1 class `[B, 1, H, W]` in [0, 1] over the input) of a plain timm CNN whose
    head is a global pool and a linear classifier (Zhou et al., CVPR 2016; S3N Eq. 1)."""
    features = model.forward_features(images)
    logits = model.forward_head(features)
    try:
        cam = class_activation_map(features, model.get_classifier(), logits)
    except ValueError as e:
        raise ValueError(f'{type(model).__name__} is not a CNN with a linear classifier on pooled features ({e}): '
                         'explain draws timm-fgvc methods and plain timm CNNs.') from e
    return logits, maps_in_image(cam.unsqueeze(1), images.shape[-2:])


def column_titles(explanation: Dict[str, torch.Tensor]) -> List[str]:
    """The title of each image column of a sheet, left to right (the last, text column is 'top-5')."""
    if 'peak_xy' in explanation:
        first = 'input + peaks (red: discr., blue: compl.)' if 'discriminative' in explanation else 'input + peaks'
    elif 'scale_boxes' in explanation:
        first = 'input + zoom box per scale'
    elif 'region_boxes' in explanation:
        first = 'input + top regions (red = 1st)'
    else:
        first = 'input'
    titles = [first, 'class activation map (top-1)' if 'class_activation_map' in explanation
              else 'attention (max over maps)']
    titles += [f'{kind} resampled' for kind in ('discriminative', 'complementary') if f'image_{kind}' in explanation]
    if 'zoomed_regions' in explanation:
        count = min(explanation['zoomed_regions'].shape[1], _MAX_REGION_IMAGES)
        titles += ([f'scale {k + 1} input (zoomed)' for k in range(count)] if 'scale_boxes' in explanation
                   else [f'region {k + 1} zoomed' for k in range(count)])
    return titles


def prediction_lines(probabilities: torch.Tensor, label_names: Optional[List[str]] = None, k: int = 5) -> List[str]:
    """`['1. name  0.83', ...]`: the top-k classes of one image with their probabilities."""
    top = probabilities.float().topk(min(k, probabilities.shape[-1]))
    lines = []
    for rank, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        name = label_names[c] if label_names and c < len(label_names) else f'class {c}'
        lines.append(f'{rank}. {name}  {p:.2f}')
    return lines


def render_explanation(images: torch.Tensor, explanation: Dict[str, torch.Tensor], mean: Sequence[float],
                       std: Sequence[float], label_names: Optional[List[str]] = None,
                       panel_size: int = MIN_PANEL_SIZE) -> Image.Image:
    """A PIL image: a title row, then one row per input with `panel_size` px panels (the input with its peaks,
    regions or zoom boxes, the attention overlay, the branch images if any) and the top-5 with probabilities."""
    check_panel_size(panel_size)
    rgb = denormalize(images, mean, std)
    batch, height, width = rgb.shape[:3]
    sx, sy = panel_size / width, panel_size / height
    branches = [explanation[k] for k in ('image_discriminative', 'image_complementary') if k in explanation]
    if 'zoomed_regions' in explanation:  # [B, m, C, z, z] -> the top regions (CAA: the later scales' inputs)
        regions = explanation['zoomed_regions'][:, :_MAX_REGION_IMAGES].float()
        resized = torch.nn.functional.interpolate(regions.flatten(0, 1), size=(height, width), mode='bilinear',
                                                  align_corners=False).view(batch, -1, 3, height, width)
        branches += list(resized.unbind(1))
    titles = column_titles(explanation)
    font = ImageFont.load_default(size=max(12, panel_size // 18))
    small = ImageFont.load_default(size=max(11, panel_size // 20))
    probs = explanation['logits'].float().softmax(-1)
    texts = [prediction_lines(probs[b], label_names) for b in range(batch)]
    text_width = max(panel_size, 16 + max(int(font.getlength(t)) for lines in texts for t in lines))
    header = font.size * 2 + 12
    pad = PANEL_GAP
    columns = 2 + len(branches)
    sheet = Image.new('RGB', (columns * (panel_size + pad) + text_width, header + batch * (panel_size + pad)),
                      (255, 255, 255))
    draw_sheet = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles + ['top-5 prediction']):
        x = c * (panel_size + pad)
        _draw_wrapped(draw_sheet, (x + 2, 4), title, small, panel_size if c < columns else text_width)
    heat = explanation['attention'].amax(1).float().cpu().numpy()
    line = max(2, panel_size // 96)
    for b in range(batch):
        top = header + b * (panel_size + pad)
        marked = Image.fromarray(rgb[b]).resize((panel_size, panel_size), Image.BILINEAR)
        draw = ImageDraw.Draw(marked)
        if 'peak_xy' in explanation:
            for k in explanation['peak_mask'][b].nonzero().flatten().tolist():
                x, y = explanation['peak_xy'][b, k].tolist()
                colour = _PEAK
                if 'discriminative' in explanation:
                    colour = _DISCRIMINATIVE if explanation['discriminative'][b, k] else _COMPLEMENTARY
                r = max(4, panel_size // 40)
                draw.ellipse((x * sx - r, y * sy - r, x * sx + r, y * sy + r), outline=colour, width=line)
        if 'scale_boxes' in explanation:  # CAA: the box each later scale zoomed into (scale 0 is the whole image)
            for k, box in list(enumerate(explanation['scale_boxes'][b].tolist()))[1:]:
                draw.rectangle(_scaled(box, sx, sy), outline=_RANKS[min(k - 1, len(_RANKS) - 1)], width=line)
        if 'region_boxes' in explanation:
            mask = explanation.get('region_mask', torch.ones(explanation['region_boxes'].shape[:2], dtype=torch.bool))
            for k in mask[b].nonzero().flatten().tolist()[::-1]:  # the best region drawn last, on top
                draw.rectangle(_scaled(explanation['region_boxes'][b, k].tolist(), sx, sy),
                               outline=_RANKS[min(k, len(_RANKS) - 1)], width=line)
        sheet.paste(marked, (0, top))
        overlay = Image.fromarray(heat_overlay(rgb[b], heat[b])).resize((panel_size, panel_size), Image.BILINEAR)
        sheet.paste(overlay, (panel_size + pad, top))
        for i, branch in enumerate(branches):
            image = Image.fromarray(denormalize(branch[b:b + 1], mean, std)[0])
            sheet.paste(image.resize((panel_size, panel_size), Image.BILINEAR), ((2 + i) * (panel_size + pad), top))
        for i, text in enumerate(texts[b]):
            draw_sheet.text((columns * (panel_size + pad) + 8, top + 4 + i * (font.size + 6)), text,
                            fill=(0, 0, 0), font=font)
    return sheet


def _scaled(box: Sequence[float], sx: float, sy: float) -> List[float]:
    x1, y1, x2, y2 = box
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def _draw_wrapped(draw: ImageDraw.ImageDraw, xy, text: str, font, width: int) -> None:
    """Text on up to two lines within `width` px (wrapped at spaces)."""
    words, lines = text.split(), ['']
    for word in words:
        candidate = f'{lines[-1]} {word}'.strip()
        if font.getlength(candidate) <= width - 4 or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    for i, text_line in enumerate(lines[:2]):
        draw.text((xy[0], xy[1] + i * (font.size + 2)), text_line, fill=(0, 0, 0), font=font)


def sheet_path(out: str) -> Path:
    """`out` as the image file to write, checked before any work: a suffix PIL can save (.png, .jpg, .webp...)."""
    path = Path(out)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if str(out).endswith(('/', '\\')) or path.is_dir() or image_format not in Image.SAVE:
        raise ValueError(f'--out {out}: name the image file to write, e.g. attention.png (.png, .jpg or .webp).')
    return path


def explain_files(model, paths: Sequence[str], out: str, img_size: Optional[int] = None,
                  label_names: Optional[List[str]] = None, panel_size: int = MIN_PANEL_SIZE,
                  max_images: int = 16) -> Path:
    """Load images (files, or every file under a folder) with the model's eval transform, explain the first
    `max_images` that can be read, and save the sheet (PNG, JPEG... by the suffix of `out`). Files that cannot
    be read are skipped with a warning naming them.

    `model`: a `LoadedModel` (`timm_fgvc.inference.load_model`: the run's transform and class names) or a model.
    """
    from .inference import LoadedModel, eval_transform
    from .predict import find_files
    out_path = sheet_path(out)
    if not isinstance(model, LoadedModel):
        model = LoadedModel(model=model, name=type(model).__name__,
                            label_names=(getattr(model, 'pretrained_cfg', None) or {}).get('label_names'))
    transform, data_cfg = eval_transform(model, img_size)
    images, skipped = [], []
    for path in find_files(paths):
        if len(images) == max_images:
            warnings.warn(f'explain: the sheet shows the first {max_images} readable images; name the files to '
                          'show, or raise max_images.', stacklevel=2)
            break
        try:
            images.append(transform(open_image(path)))
        except ValueError as e:  # open_image names the file and why
            skipped.append(str(e))
    if skipped:
        warnings.warn(f'explain: skipped {len(skipped)} file(s): ' + ' '.join(skipped[:5]), stacklevel=2)
    if not images:
        raise ValueError(f'None of {", ".join(map(str, paths))} could be read as an image.')
    device = next(model.model.parameters()).device
    batch = torch.stack(images).to(device)
    label_names = label_names or model.label_names
    sheet = render_explanation(batch.cpu(), {k: v.cpu() for k, v in explain_images(model.model, batch).items()},
                               data_cfg['mean'], data_cfg['std'], list(label_names) if label_names else None,
                               panel_size=panel_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path
