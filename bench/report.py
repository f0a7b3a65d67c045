#!/usr/bin/env python
"""Render the benchmark results (`bench/results/*.json`) as Markdown tables.

Writes `bench/README.md` (the tables, the commands that made every number, and how to run each script), the
block between `<!-- bench:start -->` and `<!-- bench:end -->` in the repository's README.md when it has those
markers (otherwise the tables are printed and README.md is left alone), and MODEL_CARDS.md (`timm-fgvc cards`
renders the same tables into it, and a speed line into each model card). The tables come from
`timm_fgvc.benchmarks`.

    python bench/report.py            # update bench/README.md and the README.md block
    python bench/report.py --check    # exit 1 if either is out of date (for CI)
    python bench/report.py --print    # print the tables only

Paper numbers: the paper's top-1 comes from `hub_configs/*.yaml` (`paper.top1`, as in MODEL_CARDS.md); the
paper's own baseline and hit rate, where the paper reports them, from `timm_fgvc.benchmarks.PAPER`. Measured and
paper numbers are separate columns, never mixed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timm_fgvc.benchmarks import RESULTS_DIR, load_results, load_transfer, paper_top1, render  # noqa: E402
from timm_fgvc.cards import CARDS_FILE, load_bench_results, load_hub_configs, render_model_cards  # noqa: E402

RESULTS = REPO / RESULTS_DIR
START, END = '<!-- bench:start -->', '<!-- bench:end -->'


def replace_block(text: str, block: str) -> Optional[str]:
    if START not in text or END not in text or text.index(START) > text.index(END):
        return None
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f'{head}{START}\n{block}{END}{tail}'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true',
                   help='exit 1 if bench/README.md, the README block or MODEL_CARDS.md is stale')
    p.add_argument('--print', dest='print_only', action='store_true', help='print the tables, write nothing')
    p.add_argument('--results-dir', default=str(RESULTS), help='where the JSON results are (default bench/results)')
    p.add_argument('--include-quick', action='store_true', help='also show --quick smoke runs (--print only)')
    args = p.parse_args(argv)
    committed = Path(args.results_dir).resolve() == RESULTS.resolve()
    if not args.print_only and (not committed or args.include_quick):  # the repo's files show the committed runs
        p.error('--results-dir (other than bench/results) and --include-quick are for --print: the READMEs show the '
                'committed results only.')
    configs = load_hub_configs(REPO)
    block, full, short = render(load_results('throughput_*.json', args.results_dir, REPO),
                                load_results('accuracy_*.json', args.results_dir, REPO), paper_top1(configs),
                                args.include_quick, transfer=load_transfer(args.results_dir, REPO))
    if args.print_only:
        print(block)
        return 0
    targets = [(REPO / 'bench' / 'README.md', full)]
    readme = REPO / 'README.md'
    if readme.exists():
        updated = replace_block(readme.read_text(), short)  # README: the summary; the full tables in bench/
        if updated is None:
            print(f'README.md has no {START} ... {END} block: left unchanged. The tables:\n\n{block}')
        else:
            targets.append((readme, updated))
    else:
        print(f'No README.md: the tables (also in bench/README.md):\n\n{block}')
    targets.append((REPO / CARDS_FILE, render_model_cards(configs, load_bench_results(REPO))))
    stale = [path for path, text in targets if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f'{path.relative_to(REPO)} is out of date: run python bench/report.py', file=sys.stderr)
        return 1 if stale else 0
    for path, text in targets:
        path.write_text(text)
        print(f'wrote {path.relative_to(REPO)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
