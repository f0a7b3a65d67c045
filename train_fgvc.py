#!/usr/bin/env python
"""Train a timm-fgvc method or a plain timm model.

    accelerate launch train_fgvc.py                       # S3N-ResNet18 on the embedded synthetic set
    accelerate launch train_fgvc.py --config hub_configs/s3n_resnet50.cub200.yaml
    accelerate launch train_fgvc.py --model resnet18 --dataset path/to/image_folder   # a baseline

Every field of `timm_fgvc.engine.config.TrainConfig` is a flag; `--help` lists them.
"""
import timm_fgvc  # noqa: F401  (registers the methods with timm)
from timm_fgvc.engine.trainer import main

if __name__ == '__main__':
    main()
