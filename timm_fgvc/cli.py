"""`timm-fgvc`: export, push, model cards and measurements (SPEC §5).

    timm-fgvc export --run output/s3n_resnet50.cub200 --out export/s3n_resnet50.cub200 \\
                     --hub-config hub_configs/s3n_resnet50.cub200.yaml
    timm-fgvc push --folder export/s3n_resnet50.cub200 --repo-id timm-fgvc/s3n_resnet50.cub200
    timm-fgvc record --run output/s3n_resnet50.cub200 --hub-config hub_configs/s3n_resnet50.cub200.yaml
    timm-fgvc cards            # regenerate MODEL_CARDS.md from hub_configs/
    timm-fgvc cards --check    # exit 1 when MODEL_CARDS.md is stale (CI)
    timm-fgvc explain --model s3n_resnet18 --checkpoint output/run/model.safetensors --num-classes 10 \\
                      --image a.jpg b.jpg --out attention.png

Also `python -m timm_fgvc.cli ...`. Exit status: 0 ok, 1 stale model cards, 2 an error (message on stderr).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-fgvc', description='timm-fgvc tools: export, push, cards, record, explain.')
    sub = parser.add_subparsers(dest='action', required=True, metavar='{export,push,cards,record,explain}')

    p = sub.add_parser('export', help='write a Hub-ready folder (config.json, model.safetensors, README.md) '
                                      'from a train_fgvc.py run')
    p.add_argument('--run', required=True, help='the run folder (results.json + model.safetensors)')
    p.add_argument('--out', required=True, help='the folder to write')
    p.add_argument('--hub-config', help='hub_configs/<model>.yaml of the model (repo id, paper, recipe)')
    p.add_argument('--repo-id', help='repo named in the card\'s usage snippet (default: the hub config\'s hub_id)')

    p = sub.add_parser('push', help='upload an exported folder to the Hub (needs a token: HF_TOKEN or hf auth login)')
    p.add_argument('--folder', required=True)
    p.add_argument('--repo-id', required=True)
    p.add_argument('--private', action='store_true')
    p.add_argument('--token', help='a Hub token (default: HF_TOKEN / the saved login)')
    p.add_argument('--commit-message', default='Upload timm-fgvc model (config.json, model.safetensors, model card)')

    p = sub.add_parser('cards', help='regenerate MODEL_CARDS.md from hub_configs/ (or check it with --check)')
    p.add_argument('--check', action='store_true', help='exit 1 with a diff when MODEL_CARDS.md is stale')
    p.add_argument('--root', default='.', help='the repository root holding hub_configs/ and MODEL_CARDS.md')

    p = sub.add_parser('record', help='write a run\'s measured top-1 into a hub config\'s `measured:` section')
    p.add_argument('--run', required=True, help='the run folder (results.json)')
    p.add_argument('--hub-config', required=True)
    p.add_argument('--command', help='the command that produced the run (default: rebuilt from its results.json)')
    p.add_argument('--same-dataset', action='store_true',
                   help='confirm that the run\'s local dataset folder is the hub config\'s dataset (official split)')

    p = sub.add_parser('explain', help='render where a model attends (attention_maps) over some images to a PNG')
    p.add_argument('--model', required=True, help="a registered name, 'hf-hub:<repo>' or 'local-dir:<folder>'")
    p.add_argument('--checkpoint', help='model.safetensors of a run (with a registered --model)')
    p.add_argument('--num-classes', type=int, help='classes of the checkpoint (with --checkpoint)')
    p.add_argument('--model-args', default='{}', help='JSON object of extra model arguments')
    p.add_argument('--image', nargs='+', required=True, help='image files')
    p.add_argument('--img-size', type=int, help='input size (default: the model\'s pretrained_cfg)')
    p.add_argument('--out', required=True, help='the PNG to write')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == 'export':
            from .hub import export_run
            folder = export_run(args.run, args.out, hub_config=args.hub_config, repo_id=args.repo_id)
            print(f'Exported {args.run} -> {folder} ({", ".join(sorted(p.name for p in folder.iterdir()))})')
        elif args.action == 'push':
            from .hub import push
            info = push(args.folder, args.repo_id, token=args.token, private=args.private,
                        commit_message=args.commit_message)
            url = getattr(info, 'commit_url', info)
            print(f'Pushed {args.folder} -> https://huggingface.co/{args.repo_id} ({url})')
            print('If this is a timm-fgvc release: set `published: true` in its hub config, add the repo to '
                  'PUBLISHED_WEIGHTS (timm_fgvc/models/_builder.py) and run `timm-fgvc cards`.')
        elif args.action == 'cards':
            from .cards import check_model_cards, write_model_cards
            if args.check:
                if not check_model_cards(args.root):
                    return 1
                print('MODEL_CARDS.md is up to date.')
            else:
                print(f'Wrote {write_model_cards(args.root)}')
        elif args.action == 'record':
            from .cards import record_measurement
            measured = record_measurement(args.run, args.hub_config, command=args.command,
                                          same_dataset=args.same_dataset)
            print(f'Recorded measured top-1 {measured["top1"]} in {args.hub_config}; run `timm-fgvc cards` to '
                  'update MODEL_CARDS.md.')
        elif args.action == 'explain':
            import json

            import timm

            from . import models  # noqa: F401  (registers the methods)
            from .engine.checkpoint import load_weights
            from .explain import explain_files
            kwargs = json.loads(args.model_args)
            if args.num_classes:
                kwargs['num_classes'] = args.num_classes
            model = timm.create_model(args.model, pretrained=args.model.startswith(('hf-hub:', 'local-dir:')),
                                      **kwargs)
            if args.checkpoint:
                load_weights(model, args.checkpoint)
            print(f'Wrote {explain_files(model, args.image, args.out, img_size=args.img_size)}')
    except (FileNotFoundError, ValueError) as e:
        print(f'timm-fgvc {args.action}: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
