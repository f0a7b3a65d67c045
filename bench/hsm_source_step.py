"""Probe HSM's step 1 on the source classes: does the saliency branch stay alive? (an investigation tool)

Runs step 1 of the transfer protocol (`bench/transfer.run_source_step`: CUB classes 51-200, the source resnet18
and its classifier frozen, the saliency branch alone training) for a few settings and prints, per setting, the
share of live saliency cells on 64 source test images and the top-1 on 600 of them. Results are appended to
`<workdir>/hsm_probe/probes.jsonl`.

    python bench/hsm_source_step.py --workdir /work/runs --settings '[[1.0, 0.02, 140], [0.1, 0.001, 140]]'

Each setting is `[score_bias_init, lr, steps]`.
"""
import argparse
import json
import os
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import DEFAULT_CUB_TAR, prepare_cub_subset  # noqa: E402
from transfer import SOURCE_WEIGHTS, TRANSFER_DEFAULTS, run_source_step  # noqa: E402
from timm_fgvc.engine.config import TrainConfig  # noqa: E402
from timm_fgvc.engine.trainer import train  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--workdir', required=True, help='where the source classes are extracted and the runs go')
    p.add_argument('--settings', type=json.loads, required=True, help='JSON list of [score_bias_init, lr, steps]')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    dataset = str(prepare_cub_subset(DEFAULT_CUB_TAR, 150, workdir, first=50)[0])
    root = workdir / 'hsm_probe'
    for bias, lr, steps in args.settings:
        step_args = types.SimpleNamespace(source_dataset=lambda: dataset, source_step_epochs=3., workers=0,
                                          max_steps=steps)
        result = run_source_step(step_args, train, TrainConfig, 'hsm_resnet18', {'score_bias_init': bias},
                                 TRANSFER_DEFAULTS, lr, 0, SOURCE_WEIGHTS, root / f'bias{bias}_lr{lr}_steps{steps}')
        line = dict(score_bias_init=bias, lr=lr, steps=steps, source_top1_600=result['source_top1_600'],
                    saliency=result['saliency'])
        print('PROBE', json.dumps(line), flush=True)
        with open(root / 'probes.jsonl', 'a') as f:
            f.write(json.dumps(line) + '\n')


if __name__ == '__main__':
    main()
