"""`timm-fgvc`: use a trained model (predict, eval, explain) and publish it (export, push, record, cards; SPEC §5).

    timm-fgvc export --run output/s3n_resnet50.cub200 --out export/s3n_resnet50.cub200 \\
                     --hub-config hub_configs/s3n_resnet50.cub200.yaml
    timm-fgvc push --folder export/s3n_resnet50.cub200 --repo-id timm-fgvc/s3n_resnet50.cub200
    timm-fgvc record --run output/s3n_resnet50.cub200 --hub-config hub_configs/s3n_resnet50.cub200.yaml
    timm-fgvc cards            # regenerate MODEL_CARDS.md from hub_configs/
    timm-fgvc cards --check    # exit 1 when MODEL_CARDS.md is stale (CI)
    timm-fgvc predict --checkpoint output/run/model.safetensors photos/ --out preds.csv   # top-k class names
    timm-fgvc eval --checkpoint output/run/model.safetensors --robustness --out eval/       # accuracy report
    timm-fgvc explain --checkpoint output/run/model.safetensors --image a.jpg b.jpg --out attention.png

A model is `--model NAME|hf-hub:ID|local-dir:DIR` and/or `--checkpoint FILE` (a run's model.safetensors: its
results.json gives the model, classes and class names, so --model may be left out).

Also `python -m timm_fgvc.cli ...`. Exit status: 0 ok, 1 stale model cards, 2 an error (message on stderr).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ['build_parser', 'main']


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model', help="a registered name, 'hf-hub:<repo>' or 'local-dir:<folder>' (default: the "
                                   "checkpoint's run)")
    p.add_argument('--checkpoint', help="weights (a run's model.safetensors, or its folder)")
    p.add_argument('--num-classes', type=int, help='classes of the checkpoint (default: its run\'s)')
    p.add_argument('--model-args', default='{}', help='JSON object of extra model arguments')
    p.add_argument('--device', help='cpu, cuda, cuda:1 ... (default: cuda when there is one)')


def _load(args):
    import json

    from .inference import load_model
    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as e:
        raise ValueError(f'--model-args is not a JSON object: {e}') from e
    if not isinstance(model_args, dict):
        raise ValueError(f'--model-args must be a JSON object of argument names and values (e.g. \'{{"backbone": '
                         f'"resnet50"}}\'), got {args.model_args}.')
    return load_model(args.model, args.checkpoint, num_classes=args.num_classes, model_args=model_args,
                      device=args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-fgvc', description='timm-fgvc tools: predict, eval, explain, export, push, cards, record.')
    sub = parser.add_subparsers(dest='action', required=True, metavar='{predict,eval,explain,export,push,cards,record}')

    p = sub.add_parser('export', help='write a Hub-ready folder (config.json, model.safetensors, README.md) '
                                      'from a train_fgvc.py run')
    p.add_argument('--run', required=True, help='the run folder (results.json + model.safetensors)')
    p.add_argument('--out', required=True, help='the folder to write')
    p.add_argument('--hub-config', help='hub_configs/<model>.yaml of the model (repo id, paper, recipe)')
    p.add_argument('--repo-id', help='repo named in the card\'s usage snippet (default: the hub config\'s hub_id)')
    p.add_argument('--same-dataset', action='store_true',
                   help="the run's local folder is a copy of the hub config's dataset with its official split")

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

    p = sub.add_parser('predict', help='top-k class names and probabilities for image files or folders')
    _model_arguments(p)
    p.add_argument('paths', nargs='+', metavar='PATH', help='image files or folders (searched recursively)')
    p.add_argument('--top-k', type=int, default=5)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--img-size', type=int, help='input size (default: the run\'s / the model\'s eval size)')
    p.add_argument('--out', help='also write the predictions to a .csv or .jsonl file')

    p = sub.add_parser('eval', help='top-1/top-5, per-head and per-class accuracy, a confusion matrix (PNG) and a '
                                    'JSON report; --robustness adds rotated and reduced inputs (SSANet Tables 1-2)')
    _model_arguments(p)
    p.add_argument('--dataset', help="'synthetic', a Hub dataset id or an image folder (default: the run's)")
    p.add_argument('--dataset-config', help='the Hub dataset\'s configuration name')
    p.add_argument('--split', help='the split to evaluate, e.g. test (default: as training chose it)')
    p.add_argument('--image-column')
    p.add_argument('--label-column')
    p.add_argument('--batch-size', type=int, help='default: the run\'s eval batch size')
    p.add_argument('--max-samples', type=int, help='evaluate N images only (a seeded draw over the classes)')
    p.add_argument('--img-size', type=int, help='input size (default: the run\'s / the model\'s eval size)')
    p.add_argument('--skip-bad-images', action='store_true', default=None,
                   help="leave out (and count) images that cannot be read instead of stopping (default: the run's)")
    p.add_argument('--robustness', action='store_true',
                   help='also evaluate inputs rotated by +-15/30/45 degrees and reduced to 0.5-0.9 of the side')
    p.add_argument('--pad', choices=('black', 'mean'), default='black',
                   help='what fills the area a rotation or reduction uncovers (default black)')
    p.add_argument('--compare', nargs='+', default=[], metavar='REPORT',
                   help='report.json files of earlier --robustness evals (other methods, the baseline): their rows '
                        'join the robustness table')
    p.add_argument('--out', required=True, help='the folder for report.json, confusion.png (and robustness.md)')

    p = sub.add_parser('explain', help='render where a model attends (attention_maps; a plain timm CNN: the CAM '
                                       'of its top-1 class) over some images to a PNG')
    _model_arguments(p)
    p.add_argument('--image', nargs='+', required=True,
                   help='image files or folders (the first 16 readable images; unreadable files are skipped)')
    p.add_argument('--img-size', type=int, help='input size (default: the run\'s / the model\'s eval size)')
    p.add_argument('--panel-size', type=int, default=256, help='pixels per panel (at least 256)')
    p.add_argument('--out', required=True, help='the image to write (.png, .jpg or .webp)')
    return parser


def _export(args: argparse.Namespace) -> int:
    """Export a finished run as a Hub-ready folder."""
    from .hub import export_run
    folder = export_run(args.run, args.out, hub_config=args.hub_config, repo_id=args.repo_id,
                        same_dataset=args.same_dataset)
    print(f'Exported {args.run} -> {folder} ({", ".join(sorted(p.name for p in folder.iterdir()))})')
    return 0


def _push(args: argparse.Namespace) -> int:
    """Upload an exported folder to the Hub."""
    from .hub import push
    info = push(args.folder, args.repo_id, token=args.token, private=args.private,
                commit_message=args.commit_message)
    url = getattr(info, 'commit_url', info)
    print(f'Pushed {args.folder} -> https://huggingface.co/{args.repo_id} ({url})')
    print('If this is a timm-fgvc release: set `published: true` in its hub config, add the repo to '
          'PUBLISHED_WEIGHTS (timm_fgvc/models/_builder.py) and run `timm-fgvc cards`.')
    return 0


def _cards(args: argparse.Namespace) -> int:
    """Regenerate MODEL_CARDS.md from hub_configs/, or check it is in sync."""
    from .cards import check_model_cards, write_model_cards
    if args.check:
        if not check_model_cards(args.root):
            return 1
        print('MODEL_CARDS.md is up to date.')
    else:
        print(f'Wrote {write_model_cards(args.root)}')
    return 0


def _record(args: argparse.Namespace) -> int:
    """Record a run's measured top-1 in its hub config."""
    from .cards import record_measurement
    measured = record_measurement(args.run, args.hub_config, command=args.command,
                                  same_dataset=args.same_dataset)
    print(f'Recorded measured top-1 {measured["top1"]} in {args.hub_config}'
          + (f', off its recipe: {measured["recipe_changes"]}' if measured['recipe_changes'] else '')
          + '; run `timm-fgvc cards` to update MODEL_CARDS.md.')
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Top-k class names of image files and folders."""
    from .predict import format_predictions, predict, predictions_path, write_predictions
    if args.out:
        predictions_path(args.out)  # a wrong file name stops here, not after every image is predicted
    predictions = predict(_load(args), args.paths, top_k=args.top_k, batch_size=args.batch_size,
                          num_workers=args.num_workers, img_size=args.img_size)
    print(format_predictions(predictions))
    skipped = [p for p in predictions if p.error]
    for p in skipped:
        print(f'timm-fgvc predict: skipped {p.path}: {p.error}', file=sys.stderr)
    if args.out:
        print(f'Wrote {write_predictions(predictions, args.out)}')
    print(f'{len(predictions) - len(skipped)} file(s) predicted, {len(skipped)} skipped.')
    if predictions and len(skipped) == len(predictions):
        print('timm-fgvc predict: error: no file could be read as an image.', file=sys.stderr)
        return 2
    return 0


def _eval(args: argparse.Namespace) -> int:
    """The evaluation report of a model on its run's data or other data."""
    from .evaluate import evaluate_model, read_reports, robustness_table, write_report
    others = read_reports(args.compare)
    report = evaluate_model(
        _load(args), dataset=args.dataset, split=args.split, batch_size=args.batch_size, device=args.device,
        robustness=args.robustness, pad=args.pad, max_samples=args.max_samples, img_size=args.img_size,
        dataset_config=args.dataset_config, image_column=args.image_column, label_column=args.label_column,
        skip_bad_images=args.skip_bad_images)
    if report['bad_images_skipped']:
        print(f"{report['bad_images_skipped']} image(s) that cannot be read were left out "
              f"(--skip-bad-images): {', '.join(report['bad_images'][:5])}")
    if report['files_ignored']:
        print(f"Left out {report['files_ignored']} file(s) of the dataset folder: "
              f"{'; '.join(report['ignored_files'][:5])}")
    for warning in report['warnings']:
        print(f'timm-fgvc eval: warning: {warning}', file=sys.stderr)
    heads = ', '.join(f'{k} {v:.2f}' for k, v in report['top1_per_head'].items())
    print(f"{report['model']} on {report['dataset']}, {report['split']} ({report['samples']} images): top-1 "
          f"{report['top1']:.2f}%, top-5 {report['top5']:.2f}%; top-1 per head: {heads}")
    scored = [c for c in report['per_class'] if c['top1'] is not None]
    worst = sorted(scored, key=lambda c: c['top1'])[:5]
    print('lowest per-class top-1: ' + ', '.join(f"{c['label']} {c['top1']:.1f}" for c in worst)
          + (f"; {len(report['per_class']) - len(scored)} class(es) with no image evaluated"
             if len(scored) < len(report['per_class']) else ''))
    if 'robustness' in report:
        print(robustness_table(others + [report]))
    paths = write_report(report, args.out, compare=others)
    print('Wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def _explain(args: argparse.Namespace) -> int:
    """Draw where the model attends on some images."""
    from .explain import check_panel_size, explain_files, sheet_path
    sheet_path(args.out)  # a wrong file name or panel size stops here, before the model is loaded and run
    check_panel_size(args.panel_size)
    loaded = _load(args)
    written = explain_files(loaded, args.image, args.out, img_size=args.img_size, panel_size=args.panel_size)
    print(f'Wrote {written}')
    return 0


_ACTIONS = {'export': _export, 'push': _push, 'cards': _cards, 'record': _record, 'predict': _predict,
            'eval': _eval, 'explain': _explain}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _ACTIONS[args.action](args)
    except (OSError, ValueError, FloatingPointError) as e:  # bad input, the Hub unreachable, a diverged model
        print(f'timm-fgvc {args.action}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
