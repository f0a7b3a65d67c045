#!/usr/bin/env python
"""Run a list of `bench/accuracy.py` jobs N at a time.

One GPU holds many of the transfer protocol's runs at once (a resnet18 at 128 px, batch 32, uses a small part of
it): on an H100, 7-8 of them side by side finished a 12-epoch baseline in ~45 s each. Every finished run is added
to the results file at once, under its lock, so a sweep adds up as its jobs end and a stopped sweep keeps what
finished.

    python bench/sweep.py jobs.txt --slots 8 --common '--suites transfer --threads 2 --workers 2 --workdir W'

`jobs.txt`: one job a line, the arguments that follow `--common` (blank lines and lines starting with `#` are
skipped), e.g. `--methods caa --skip-baseline --seeds 0 --epochs 36`. Give the jobs one `--workdir` in `--common`:
they then share the extracted CUB subset and HSM's source steps (each made once, under a lock, while the others
wait) and `--resume` finds their runs. Each job writes its output to `<logs>/jobNN.log` (a new sweep overwrites
them). Past `--deadline` seconds no job starts and the running ones are stopped (SIGTERM, then SIGKILL after 10 s);
the jobs that did not finish, or failed, are listed and the exit status is 1.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List

BENCH = Path(__file__).resolve().parent


def read_jobs(path: Path) -> List[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith('#')]


def run_sweep(jobs: List[str], slots: int, common: str = '', deadline: float = float('inf'),
              script: Path = BENCH / 'accuracy.py', logs: Path = Path('sweep_logs'), poll: float = 1.0) -> List[str]:
    """Run `python script common job` for every job, `slots` at a time; returns the jobs that did not finish with
    status 0 ('killed at the deadline', 'exit status N' or 'not started', each with its job)."""
    logs.mkdir(parents=True, exist_ok=True)
    start, pending, running, problems = time.monotonic(), list(enumerate(jobs)), {}, []
    say = lambda text: print(f'{time.monotonic() - start:7.0f} s  {text}', flush=True)  # noqa: E731
    while pending or running:
        late = time.monotonic() - start >= deadline
        while pending and len(running) < slots and not late:
            index, job = pending.pop(0)
            log = open(logs / f'job{index:02d}.log', 'w')
            command = [sys.executable, str(script), *shlex.split(common), *shlex.split(job)]
            running[index] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, job)
            say(f'start job{index:02d}: {job}')
        for index, (proc, log, job) in list(running.items()):
            if proc.poll() is None and not late:
                continue
            status = 'ok'
            if proc.poll() is None:
                proc.terminate()  # SIGTERM first: a job between two writes ends cleanly
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                status = 'killed at the deadline'
            elif proc.returncode:
                status = f'exit status {proc.returncode} (log {logs / f"job{index:02d}.log"})'
            log.close()
            if status != 'ok':
                problems.append(f'{status}: {job}')
            say(f'end job{index:02d}, {status}')
            del running[index]
        if late:
            problems += [f'not started: {job}' for _, job in pending]
            break
        time.sleep(poll)
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('jobs', type=Path, help='one job a line: bench/accuracy.py arguments after --common')
    p.add_argument('--slots', type=int, default=4, help='jobs at a time (default 4)')
    p.add_argument('--common', default='', help='arguments every job gets first, e.g. "--suites transfer"')
    p.add_argument('--deadline', type=float, default=float('inf'),
                   help='seconds after which no job starts and the running ones are stopped')
    p.add_argument('--logs', type=Path, default=Path('sweep_logs'), help='folder of the jobs\' logs')
    args = p.parse_args(argv)
    if args.slots < 1:
        p.error('--slots must be at least 1')
    jobs = read_jobs(args.jobs)
    if not jobs:
        p.error(f'{args.jobs} holds no job (one bench/accuracy.py argument list a line)')
    problems = run_sweep(jobs, args.slots, args.common, args.deadline, logs=args.logs)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
