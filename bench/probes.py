#!/usr/bin/env python
"""Eval-only probes of a trained transfer-protocol model (the investigations in bench/README.md's notes).

    python bench/probes.py lfd  RUN_DIR --dataset /path/cub200_s160_first50   # heads, random / centre attention
    python bench/probes.py caa  RUN_DIR --dataset ...                         # head subsets, attention off
    python bench/probes.py caa-where RUN_DIR --dataset ... [--init]           # where CAA's Otsu masks fall
    python bench/probes.py ensemble RUN_DIR RUN_DIR ... --dataset ...         # averaged probabilities of runs
    python bench/probes.py where RUN_DIR --dataset ...                        # where any model's attention falls
    python bench/probes.py s3n-zoom RUN_DIR --dataset ...                     # how much S3N's images magnify
    python bench/probes.py hsm RUN_DIR --dataset ...                          # HSM: learned / no / uniform map
    python bench/probes.py bn-split RUN_DIR --dataset ...                     # LFD / S3N: BN statistics split
    python bench/probes.py ssanet-parts RUN_DIR --dataset ...                 # SSANet: part size and accuracy by rank

RUN_DIR is a run folder of `bench/accuracy.py --suites transfer` (its model.safetensors and results.json); the
test images are the run's eval transform of `<dataset>/test`. Results are printed as JSON, one line per setting.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def load_test_set(loaded, dataset: str, every: int = 1, split: str = 'test'):
    from torchvision.datasets import ImageFolder
    from timm_fgvc.inference import eval_transform
    transform, _ = eval_transform(loaded)
    folder = ImageFolder(str(Path(dataset) / split), transform=transform)
    index = range(0, len(folder), every)
    return torch.stack([folder[i][0] for i in index]), torch.tensor([folder.targets[i] for i in index])


def top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100 * (scores.argmax(1) == labels).float().mean().item(), 2)


def batched(model_fn, images: torch.Tensor, batch: int = 64, bf16: bool = True):
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        return [model_fn(images[i:i + batch]) for i in range(0, len(images), batch)]


def centre_and_ring(h: int, w: int):
    """The central half (4 x 4 of 8 x 8) and the outermost ring of a feature grid."""
    centre = torch.zeros(h, w, dtype=torch.bool)
    centre[h // 4: h - h // 4, w // 4: w - w // 4] = True
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    return centre, ring


def probe_lfd(model, images, labels):
    """Image head, region head (best-ranked region; mean of the m regions' probabilities, of all m slots and of the
    slots NMS filled), hybrid head and the hybrid head's image and region halves, and how many regions NMS kept,
    with the trained attention M, a random M (random regions) and a fixed centre-peaked M."""
    trained = model.attention

    def random_attention(feature_map):
        g = torch.Generator().manual_seed(0)
        return torch.rand(feature_map.shape[0], *feature_map.shape[-2:], generator=g)

    def centre_attention(feature_map):
        h, w = feature_map.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing='ij')
        return (-(yy ** 2 + xx ** 2) / 8).exp().expand(feature_map.shape[0], h, w).clone()

    def heads(x):
        o = model._focus(x)
        d = o['image_feature'].shape[1]
        zeros_regions = torch.zeros_like(o['hybrid_feature'][:, d:])
        region = model.heads['region'](o['region_features']).float()
        kept = o['region_mask'][..., None].float()  # slots NMS filled; the others repeat region 1
        return {'image': model.heads['image'](o['image_feature']).float(),
                'region (top-ranked)': region[:, 0], 'region (mean of m)': region.softmax(-1).mean(1),
                'region (mean of the kept)': (region.softmax(-1) * kept).sum(1) / kept.sum(1),
                'kept': o['region_mask'],
                'hybrid': model.pooled_head(o['hybrid_feature']).float(),
                'hybrid, image half only': model.pooled_head(torch.cat([o['image_feature'], zeros_regions], 1)).float(),
                'hybrid, region half only': model.pooled_head(
                    torch.cat([torch.zeros_like(o['image_feature']), o['hybrid_feature'][:, d:]], 1)).float()}

    for name, attention in [('trained attention', trained), ('random attention', random_attention),
                            ('centre-peaked attention', centre_attention)]:
        model.attention = attention
        outs = batched(heads, images)
        model.attention = trained
        kept = torch.cat([o.pop('kept') for o in outs]).float()
        print(name, json.dumps({k: top1(torch.cat([o[k] for o in outs]), labels) for k in outs[0]}), flush=True)
        print(f'  regions NMS kept per image: mean {kept.sum(1).mean():.2f} of {kept.shape[1]}; share of images '
              f'with slot 1..{kept.shape[1]} filled: {[round(v, 2) for v in kept.mean(0).tolist()]}', flush=True)


def probe_caa(model, images, labels):
    """The paper's combination, head and scale subsets, with the Otsu masks and with attention off (every cell in
    the mask: the object heads pool the whole map and every scale sees the whole image)."""
    every_cell = lambda attention: torch.ones_like(attention, dtype=torch.bool)  # noqa: E731
    for name, mask_fn in [('trained (Otsu masks)', None), ('attention off (mask = every cell)', every_cell)]:
        if mask_fn is not None:
            model.object_mask = mask_fn  # on this instance only
        outs = batched(lambda x: model.forward_train(x).logits, images)
        model.__dict__.pop('object_mask', None)
        logits = {k: torch.cat([o[k].float() for o in outs]) for k in outs[0]}
        probs = {k: v.softmax(-1) for k, v in logits.items() if k != 'combined'}
        scales = sum(k.startswith('object_') for k in logits)
        result = {k: top1(v, labels) for k, v in logits.items()}
        result['object heads, mean over scales'] = top1(sum(probs[f'object_{k}'] for k in range(scales)), labels)
        result['local heads, mean over scales'] = top1(sum(probs[f'local_{k}'] for k in range(scales)), labels)
        print(name, json.dumps(result), flush=True)


def probe_hsm(model, images, labels):
    """Does HSM use its hallucinated saliency, and as what: top-1 with the learned map, with s = 0 (Eq. 2 without
    modulation), with each image's map replaced by its own mean (a uniform gain: the level kept, the spatial
    pattern gone), and with each map's pattern kept at the test set's mean level (the per-image level gone); and the
    learned map's mean over the central half and the border ring of its grid, and its per-image spread (std / mean).
    """
    learned = model.saliency_map
    maps = torch.cat(batched(learned, images))[:, 0].float()  # [N, h, w]
    level = maps.mean()
    settings = {
        'learned map': lambda s: s,
        's = 0 (no modulation)': torch.zeros_like,
        "uniform map at each image's mean": lambda s: s.mean((2, 3), keepdim=True).expand_as(s),
        "learned pattern at the test set's mean level": lambda s: s * (level / s.mean((2, 3), keepdim=True)
                                                                       .clamp_min(1e-12)),
    }
    result = {}
    for name, transform in settings.items():
        model.saliency_map = lambda x, t=transform: t(learned(x))
        try:
            result[name] = top1(torch.cat(batched(model, images)).float(), labels)
        finally:
            del model.saliency_map  # back to the class's method
    centre, ring = centre_and_ring(*maps.shape[-2:])
    result['map centre / ring'] = [round(maps[:, centre].mean().item(), 3), round(maps[:, ring].mean().item(), 3)]
    result['map mean, per-image std / mean'] = [
        round(level.item(), 3), round((maps.flatten(1).std(1) / maps.flatten(1).mean(1).clamp_min(1e-12)).mean()
                                      .item(), 3)]
    print(json.dumps(result), flush=True)


def probe_caa_where(model, images):
    """Per scale: mean attention M and Otsu mask share over the grid's central half vs its border ring, and how
    often M's peak is in the central half (chance: its share of the cells). CUB birds are mostly centred."""
    outs = batched(lambda x: model.attention_maps(x, return_details=True)[1], images)
    result = {}
    for k in range(model.num_scales):
        attention = torch.cat([o[f'attention_{k}'].float() for o in outs])
        mask = torch.cat([o[f'object_mask_{k}'] for o in outs]).float()
        centre, ring = centre_and_ring(*attention.shape[-2:])
        peak = attention.flatten(1).argmax(1)
        result[f'scale {k}'] = {
            'attention centre / ring': [round(attention[:, centre].mean().item(), 4),
                                        round(attention[:, ring].mean().item(), 4)],
            'mask share centre / ring': [round(mask[:, centre].mean().item(), 3),
                                         round(mask[:, ring].mean().item(), 3)],
            'peak in centre': round(centre.flatten()[peak].float().mean().item(), 3),
            'chance': round(centre.float().mean().item(), 3), 'images': len(attention)}
    print(json.dumps(result), flush=True)


def probe_where(model, images):
    """Where a model's attention falls (`attention_maps`, the maps `timm-fgvc explain` draws, max over maps; S3N's
    peaks weighted by their response): its mean over the central half and the border ring of an 8 x 8 grid over
    the image, and how often its focus is in the central half of the image (chance 0.25): S3N's strongest peak,
    SSANet's top-ranked part's centre (a box centre: pulled inward by the box's size), else the map's maximum.
    For a plain timm model: its predicted class's CAM. CUB birds are mostly centred, so attention driven by the
    bird sits in the centre."""
    import torch.nn.functional as F
    size = torch.tensor(images.shape[-2:][::-1], dtype=torch.float32)  # (W, H)

    def argmax_xy(attention):
        w = attention.shape[-1]
        index = attention.flatten(1).argmax(1)
        cells = torch.tensor(attention.shape[-2:][::-1], dtype=torch.float32)
        return torch.stack([index % w + 0.5, index // w + 0.5], -1).float() * size / cells

    def maps(x):
        if not hasattr(model, 'attention_maps'):
            from timm_fgvc.layers import class_activation_map
            features = model.forward_features(x)
            cam = F.relu(class_activation_map(features, model.get_classifier(), model.forward_head(features)))
            return cam, argmax_xy(cam)
        attention, details = model.attention_maps(x, return_details=True)
        attention = attention.float()
        if 'peak_scores' in details:  # S3N: one unit-peak map per class peak, weighted by its response
            scores = details['peak_scores'].float().clamp_min(0) * details['peak_mask']
            attention = attention * (scores / scores.amax(1, keepdim=True).clamp_min(1e-12))[..., None, None]
            focus = details['peak_xy'].float()[torch.arange(len(x)), scores.argmax(1)]
        elif 'proposal_boxes' in details:  # SSANet's maps are flat boxes: its top-ranked part is its focus
            box = details['region_boxes'][:, 0].float()
            focus = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], -1)
        else:
            focus = argmax_xy(attention.amax(1))
        return attention.amax(1), focus

    outs = batched(maps, images)
    attention = F.adaptive_avg_pool2d(torch.cat([o[0] for o in outs])[:, None], 8)[:, 0]
    attention = attention / attention.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    focus = torch.cat([o[1] for o in outs]) / size  # in [0, 1]
    in_centre = ((focus >= 0.25) & (focus < 0.75)).all(-1)
    centre, ring = centre_and_ring(8, 8)
    print(json.dumps({'attention centre / ring': [round(attention[:, centre].mean().item(), 3),
                                                  round(attention[:, ring].mean().item(), 3)],
                      'focus in centre': round(in_centre.float().mean().item(), 3), 'chance': 0.25,
                      'images': len(attention)}), flush=True)


def probe_s3n_zoom(model, images):
    """How much S3N's resampled images magnify the input: the local linear magnification 1 / sqrt|det J| of each
    sampling grid (J: input coordinates per output coordinate, central differences), its median and 90th
    percentile over an image's pixels (averaged over images), and the share of output pixels magnified > 1.2x."""
    # float32: grid differences of ~1 / 64 are below bf16's resolution near +-1
    grids = batched(lambda x: model.attention_maps(x, return_details=True)[1], images, bf16=False)
    result = {}
    for branch in ('discriminative', 'complementary'):
        grid = torch.cat([g[f'grid_{branch}'].float() for g in grids])  # [B, H, W, 2] in [-1, 1]
        H, W = grid.shape[1:3]
        d_dx = (grid[:, 1:-1, 2:] - grid[:, 1:-1, :-2]) * (W - 1) / 4  # per output unit of the same [-1, 1] span
        d_dy = (grid[:, 2:, 1:-1] - grid[:, :-2, 1:-1]) * (H - 1) / 4
        det = (d_dx[..., 0] * d_dy[..., 1] - d_dx[..., 1] * d_dy[..., 0]).abs().flatten(1)
        magnification = det.clamp_min(1e-8).rsqrt()
        q = torch.quantile(magnification, torch.tensor([0.5, 0.9]), dim=1).mean(1)
        result[branch] = {'median / p90 magnification': [round(v, 2) for v in q.tolist()],
                          'share magnified > 1.2x': round((magnification > 1.2).float().mean().item(), 3)}
    print(json.dumps({**result, 'images': len(images)}), flush=True)


def probe_bn_split(model, images, labels, train_images):
    """LFD / S3N run the image and their zoomed (resampled) views through one backbone, so its BatchNorm statistics
    mix both. Heads' top-1 as trained, with the statistics re-estimated on the training images (eval transform)
    for both passes together, and split: the views through a copy of the backbone (same weights, as
    `share_backbone=False` builds it), each copy with the statistics of its own passes."""
    import copy
    view = 'region_backbone' if hasattr(model, 'region_backbone') else 'resampled_backbone'
    if not hasattr(model, view):
        raise SystemExit('bn-split probes an LFD or S3N run (one backbone for the image and its views).')
    if getattr(model, view) is not None:  # the copy below would overwrite its trained view backbone
        raise SystemExit('bn-split probes a shared-backbone run; this one was trained with share_backbone=False.')

    def recalibrate(m):
        norms = [n for n in m.modules() if isinstance(n, torch.nn.modules.batchnorm._BatchNorm)]
        for n in norms:
            n.reset_running_stats()
            n.momentum = None  # the plain average over every batch
            n.train()
        batched(m.forward_train, train_images)
        for n in norms:
            n.eval()
        return m

    def heads(m):
        outs = batched(lambda x: m.forward_train(x).logits, images)
        return {k: top1(torch.cat([o[k].float() if o[k].dim() == 2 else o[k][:, 0].float() for o in outs]), labels)
                for k in outs[0]}  # LFD's region head: its top-ranked region

    split = copy.deepcopy(model)
    setattr(split, view, copy.deepcopy(split.backbone))
    return {'as trained': heads(model), 'shared statistics, re-estimated': heads(recalibrate(copy.deepcopy(model))),
            'split statistics (image / views)': heads(recalibrate(split)), 'train images': len(train_images),
            'images': len(labels)}


def probe_ensemble(models, images, labels):
    """Each model's top-1 and the top-1 of their averaged probabilities: the yardstick for a method that trains
    several backbones (CAA's scales) or several views, against as many baselines of different seeds."""
    probs = [torch.cat([o.float().softmax(-1) for o in batched(m, images)]) for m in models]
    return {'each': [top1(p, labels) for p in probs], 'ensemble': top1(sum(probs), labels), 'images': len(labels)}


def probe_ssanet_parts(model, images, labels):
    """SSANet's ranked proposals (the first K are the parts): per rank, the mean side (square root of the box
    area, input px), the share of each anchor size (its side in input px; the levels' sizes in order, finest
    first), and the part head's top-1 on that proposal; the heads' top-1 from the same pass, and with each image
    read through the next image's proposals (attention off)."""
    from timm_fgvc.models.ssanet import anchor_sizes
    # every anchor's side, as `SSANet.propose` scales them (a box keeps its size when shifted inside the image)
    anchor_sides = torch.tensor([s for level in anchor_sizes(min(images.shape[-2:])) for s in level])
    outputs = batched(model.forward_train, images)
    boxes = torch.cat([o.extras['proposal_boxes'] for o in outputs]).float()
    sides = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).clamp(min=0).sqrt()  # [N, P]
    nearest = (sides[..., None] - anchor_sides).abs().argmin(-1)  # [N, P]
    part = torch.cat([o.logits['part'] for o in outputs]).float()  # [N, P, C]
    ranks = [{'rank': j, 'side_px': round(sides[:, j].mean().item(), 1),
              'sizes': {f'{s:.0f}': round((nearest[:, j] == i).float().mean().item(), 2)
                        for i, s in enumerate(anchor_sides.tolist())},
              'part_top1': top1(part[:, j], labels)} for j in range(sides.shape[1])]

    def heads_top1(outs):
        return {k: top1(torch.cat([o.logits[k] for o in outs]).float(), labels) for k in ('dsm', 'op', 'final')}

    # attention off: each image is read through the next image's ranked proposals (same sizes, another bird's
    # places), so the heads' drop is what the navigator's placement is worth
    propose = model.propose
    model.propose = lambda *args: {k: v.roll(1, 0) for k, v in propose(*args).items()}
    try:
        moved = batched(model.forward_train, images)
    finally:
        del model.propose
    print(json.dumps({'parts': model.num_parts, 'heads': heads_top1(outputs),
                      'heads_with_another_images_parts': heads_top1(moved)}), flush=True)
    for r in ranks:
        print(json.dumps(r), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('probe', choices=['lfd', 'caa', 'caa-where', 'where', 's3n-zoom', 'bn-split', 'ensemble', 'hsm',
                                      'ssanet-parts'])
    p.add_argument('runs', nargs='+', help='a transfer run folder (model.safetensors, results.json); ensemble: '
                                           'several')
    p.add_argument('--dataset', required=True, help='the target image folder (<dataset>/test/<class>/*.jpg)')
    p.add_argument('--every', type=int, default=1, help='every n-th test image (default: all)')
    p.add_argument('--init', action='store_true',
                   help="caa-where: the run's model at initialisation (its pretrained backbone, fresh heads)")
    p.add_argument('--checkpoint', default=None,
                   help="the run's model at one of its checkpoints (a checkpoints/step_N folder) instead of its end")
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from timm_fgvc.inference import load_model
    if args.probe == 'ensemble':
        loaded = [load_model(checkpoint=run) for run in args.runs]
        images, labels = load_test_set(loaded[0], args.dataset, args.every)
        print(json.dumps(probe_ensemble([lm.model.eval() for lm in loaded], images, labels)), flush=True)
        return
    if len(args.runs) != 1:
        p.error(f'{args.probe} probes one run, got {len(args.runs)}')
    args.run = args.runs[0]
    loaded = load_model(checkpoint=args.run)
    model = loaded.model.eval()
    if args.init or args.checkpoint:
        import timm
        from safetensors.torch import load_file
        from timm_fgvc.runs import run_model_args
        results = loaded.run  # results.json, read and checked by load_model
        cfg = results['config']
        torch.manual_seed(cfg['seed'])
        model_args = run_model_args(results)  # with the run's output stride in backbone_args
        model = timm.create_model(cfg['model'], num_classes=loaded.num_classes,
                                  pretrained_backbone=cfg['pretrained_path'], **model_args).eval()
        if args.checkpoint:  # accelerate's checkpoint: the model's state under 'model.'
            state = load_file(str(Path(args.checkpoint) / 'model.safetensors'))
            model.load_state_dict({k.removeprefix('model.'): v for k, v in state.items()})
    images, labels = load_test_set(loaded, args.dataset, args.every)
    if args.probe == 'lfd':
        probe_lfd(model, images, labels)
    elif args.probe == 'caa':
        probe_caa(model, images, labels)
    elif args.probe == 'where':
        probe_where(model, images)
    elif args.probe == 's3n-zoom':
        probe_s3n_zoom(model, images)
    elif args.probe == 'hsm':
        probe_hsm(model, images, labels)
    elif args.probe == 'ssanet-parts':
        probe_ssanet_parts(model, images, labels)
    elif args.probe == 'bn-split':
        train_images, _ = load_test_set(loaded, args.dataset, args.every, split='train')
        print(json.dumps(probe_bn_split(model, images, labels, train_images)), flush=True)
    else:
        probe_caa_where(model, images)


if __name__ == '__main__':
    main()
