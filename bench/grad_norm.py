#!/usr/bin/env python
"""How hard each model's training loss pulls its backbone, against the plain backbone's cross-entropy.

A method that sums several CE terms on one shared backbone (S3N: O, D, C and joint; LFD: image, regions, hybrid)
takes a larger backbone step than the baseline at the same lr (the transfer issue's question). This measures the
norm of the backbone's gradient at the transfer protocol's initialisation (the source weights, fresh heads) in the
engine's first training stage, on the same real training batches for every model, with the engine's train
transform:

    python bench/grad_norm.py --dataset /path/cub200_s160_first50 --models resnet18 s3n_resnet18 lfd_resnet18

Prints one JSON line per model: the per-batch norms, their mean and the ratio to the first model's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import PROTOCOL, SOURCE_WEIGHTS  # noqa: E402


def backbone_gradient_norm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """L2 norm of the gradient that the engine's first training stage that trains a backbone (HSM: step 2) sends
    into the backbone parameters it trains, with that stage's loss terms and frozen parts (a plain timm model: its
    CE, its classifier excluded)."""
    from timm_fgvc.engine.trainer import TrainStep, apply_stage
    step = TrainStep(model)
    if hasattr(model, 'named_backbones'):
        prefixes = tuple(prefix for prefix, _ in model.named_backbones())
        stages = [s for s in model.training_stages() if any(s.is_trainable(n) for n, _ in model.named_parameters()
                                                            if n.startswith(prefixes))][:1]
        for stage in stages:
            step.frozen_norms, step.loss_terms = apply_stage(model, stage), stage.loss_terms
        params = [p for n, p in model.named_parameters() if n.startswith(prefixes) and p.requires_grad]
    else:
        classifier = set(map(id, model.get_classifier().parameters()))
        params = [p for p in model.parameters() if id(p) not in classifier]
    step.train().zero_grad()
    step(images, labels)['losses']['loss'].backward()
    return torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)).item()


def main(argv=None):
    from torchvision.datasets import ImageFolder
    from timm_fgvc.engine.config import TrainConfig
    from timm_fgvc.engine.trainer import build_model, build_transforms
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', required=True, help='the target image folder (<dataset>/train/<class>/*.jpg)')
    p.add_argument('--models', nargs='+', default=['resnet18', 's3n_resnet18', 'lfd_resnet18'],
                   help='the first is the yardstick')
    p.add_argument('--pretrained-path', default=str(SOURCE_WEIGHTS))
    p.add_argument('--batches', type=int, default=3)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_images = ImageFolder(str(Path(args.dataset) / 'train'))
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))  # the same batches for all
    first = None
    for name in args.models:
        torch.manual_seed(0)
        cfg = TrainConfig(model=name, dataset=args.dataset, pretrained_path=args.pretrained_path,
                          output_stride=PROTOCOL['output_stride'], img_size=PROTOCOL['img_size'],
                          crop_pct=PROTOCOL['crop_pct'])
        model = build_model(cfg, len(train_images.classes)).train()
        train_images.transform = build_transforms(model, cfg)[0]  # the model's own normalisation
        norms = []
        for b in range(args.batches):
            torch.manual_seed(b)  # the same augmentation draws for every model
            batch = [train_images[int(i)] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
            images, labels = torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch])
            norms.append(backbone_gradient_norm(model, images, labels))
        mean = sum(norms) / len(norms)
        first = first or mean
        print(json.dumps({'model': name, 'norms': [round(n, 4) for n in norms], 'mean': round(mean, 4),
                          'ratio': round(mean / first, 2)}), flush=True)


if __name__ == '__main__':
    main()
