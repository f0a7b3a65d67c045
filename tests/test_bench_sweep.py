"""bench/sweep.py: jobs run N at a time, a failure and the jobs cut off by the deadline are reported, never lost."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from sweep import main, read_jobs, run_sweep  # noqa: E402

# stands in for bench/accuracy.py: records when it ran, sleeps, exits with the status it is given
JOB = """
import sys, time
name, seconds, status = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
start = time.time()
time.sleep(seconds)
open(f'{sys.argv[4]}/{name}', 'w').write(f'{start} {time.time()}')
sys.exit(status)
"""


def test_jobs_run_slots_at_a_time_and_failures_and_the_deadline_are_reported(tmp_path):
    script = tmp_path / 'job.py'
    script.write_text(JOB)
    done = tmp_path / 'done'
    done.mkdir()
    jobs = [f'{name} 2.5 0' for name in 'abc'] + ['bad 0.1 3']  # long enough to overlap on a loaded machine
    problems = run_sweep([f'{j} {done}' for j in jobs], slots=2, script=script, logs=tmp_path / 'logs', poll=0.05)
    spans = {p.name: tuple(map(float, p.read_text().split())) for p in done.iterdir()}
    assert set(spans) == {'a', 'b', 'c', 'bad'}
    events = sorted([(t0, 1) for t0, _ in spans.values()] + [(t1, -1) for _, t1 in spans.values()])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2  # two slots: never three at once, and both used
    assert problems == [f'exit status 3 (log {tmp_path / "logs" / "job03.log"}): bad 0.1 3 {done}']

    # past the deadline: the running job is stopped, the pending one never starts, both are listed
    start = time.monotonic()
    problems = run_sweep([f'slow 30 0 {done}', f'later 0.1 0 {done}'], slots=1, script=script,
                         logs=tmp_path / 'logs', poll=0.05, deadline=1.0)
    assert time.monotonic() - start < 10
    assert problems == [f'killed at the deadline: slow 30 0 {done}', f'not started: later 0.1 0 {done}']
    assert not (done / 'slow').exists() and not (done / 'later').exists()


def test_a_jobs_file_without_jobs_is_refused_before_anything_runs(tmp_path, capsys):
    jobs = tmp_path / 'jobs.txt'
    jobs.write_text('# nothing yet\n\n')
    assert read_jobs(jobs) == []
    with pytest.raises(SystemExit) as error:
        main([str(jobs)])
    assert error.value.code == 2 and 'holds no job' in capsys.readouterr().err


def test_parallel_jobs_writing_one_results_file_lose_no_entry(tmp_path):
    """What `bench/sweep.py` relies on: `merge_results` (the synthetic / cub suites; the transfer suite's `add_run`
    takes the same lock) read-modify-writes under a lock, so runs that finish at the same moment all land."""
    out, go = tmp_path / 'accuracy_x.json', tmp_path / 'go'
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
            "from _common import merge_results\n"
            "Path(sys.argv[4] + '.ready' + sys.argv[3]).touch()\n"
            "while not Path(sys.argv[4]).exists(): time.sleep(0.01)\n"  # all start merging at once
            "for i in range(25): merge_results(Path(sys.argv[2]), [{'job': sys.argv[3], 'i': i}], ('job', 'i'))")
    bench = str(Path(__file__).resolve().parents[1] / 'bench')
    procs = [subprocess.Popen([sys.executable, '-c', code, bench, str(out), str(j), str(go)]) for j in range(6)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob('go.ready*'))) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    entries = json.loads(out.read_text())['entries']
    assert sorted((e['job'], e['i']) for e in entries) == [(str(j), i) for j in range(6) for i in range(25)]


def test_a_results_file_that_does_not_parse_is_refused_not_overwritten(tmp_path):
    from _common import merge_results
    out = tmp_path / 'accuracy_synthetic.json'
    merge_results(out, [{'job': 'a'}, {'job': 'b'}], ('job',))
    whole = out.read_text()
    out.write_text(whole[:-5])  # cut short, as by a disk that filled up
    damaged = out.read_text()
    with pytest.raises(ValueError, match='not a results file.*nothing was written'):
        merge_results(out, [{'job': 'c'}], ('job',))
    assert out.read_text() == damaged  # the earlier entries are still there to mend


def test_accuracy_entries_of_other_models_or_data_are_kept_side_by_side(tmp_path):
    """The synthetic / CUB suites replace an entry only with a re-run of the same models on the same data: a run of
    LFD does not delete the S3N entry of the same budget, nor a 20-class run the 50-class one."""
    from _common import merge_results
    from accuracy import ENTRY_KEY
    out = tmp_path / 'accuracy_cub.json'
    base = dict(suite='cub', backbone='resnet18', quick=False, budget={'epochs': 10}, seeds=[0], model_args={},
                baseline_args={}, device_type='cpu', data='first 20 classes')
    s3n, lfd = dict(base, models=['resnet18', 's3n_resnet18']), dict(base, models=['resnet18', 'lfd_resnet18'])
    merge_results(out, [s3n], ENTRY_KEY)
    merge_results(out, [lfd], ENTRY_KEY)
    merge_results(out, [dict(s3n, data='first 50 classes')], ENTRY_KEY)
    assert len(json.loads(out.read_text())['entries']) == 3
    merge_results(out, [dict(lfd, note='re-run')], ENTRY_KEY)  # a re-run replaces its own entry only
    entries = json.loads(out.read_text())['entries']
    assert len(entries) == 3 and entries[-1]['note'] == 're-run'
