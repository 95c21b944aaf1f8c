"""The runner never orphans its notebooks (issue #20, item 3): SIGTERM or SIGHUP to `dd-companion reproduce` stops
papermill and its kernel; after a kill -9 of the runner alone, the next run finds the still-running notebook (its pid
is recorded in the runs folder) and stops it before it touches the same files."""
from __future__ import annotations
import json, os, signal, sys, textwrap, time
from pathlib import Path

import psutil
import pytest

from conftest import Child, child_env
from test_resume import slow_notebook

RUNNER = textwrap.dedent('''
    import sys
    from dd_companion.papers import Entry
    from dd_companion.report import Registry
    from dd_companion.reproduce import main
    out, runs, slow, steps = sys.argv[1:5]
    reg = Registry([Entry('slow-T', 'project', 'table', 'a slow notebook', 'slow', path=slow)],
                   presets={'slow': {'quick': {'steps': int(steps)}}})
    raise SystemExit(main(['reproduce', '--preset', 'quick', '--out', out, '--runs', runs, '--no-progress'], registry=reg))
''')


def start_runner(tmp_path: Path, steps: int) -> Child:
    slow = tmp_path / 'slow.ipynb'
    if not slow.exists(): slow_notebook(slow)
    return Child([sys.executable, '-c', RUNNER, tmp_path / 'figures', tmp_path / 'runs', slow, steps], env=child_env())


def running_family(tmp_path: Path, c: Child, timeout: float = 120) -> list:
    "Wait until the runner recorded its papermill child and that child started a kernel; returns [papermill, descendants...]."
    children = tmp_path / 'runs' / '.reproduce-children.json'
    def ready():
        if not children.exists(): return None
        pid = int(next(iter(json.loads(children.read_text()))))
        try: kids = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess: return None
        return [pid] + [k.pid for k in kids] if any('kernel' in ' '.join(k.cmdline()) for k in kids) else None
    return c.wait_for(ready, timeout=timeout, poll=0.1)


def alive(pids) -> list:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.fault
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGHUP], ids=['SIGTERM', 'SIGHUP'])
def test_a_terminated_runner_stops_papermill_and_its_kernel(tmp_path, sig):
    c = start_runner(tmp_path, steps=120)                     # a minute of work: still running when the signal comes
    family = running_family(tmp_path, c)
    os.kill(c.proc.pid, sig)
    rc = c.finish(60)
    assert rc == 128 + sig, (rc, c.output())
    end = time.time() + 20
    while alive(family) and time.time() < end: time.sleep(0.2)
    assert alive(family) == [], f'left running after {sig.name}: {alive(family)}\n{c.output()}'
    assert not (tmp_path / 'runs' / '.reproduce-children.json').exists() or json.loads((tmp_path / 'runs' / '.reproduce-children.json').read_text()) == {}


@pytest.mark.fault
def test_after_a_kill9_of_the_runner_the_next_run_stops_the_leftover_notebook(tmp_path):
    c = start_runner(tmp_path, steps=120)
    family = running_family(tmp_path, c)
    os.kill(c.proc.pid, signal.SIGKILL)                       # the runner alone: its notebook keeps running, orphaned
    c.finish(30)
    assert alive(family[:1]), 'papermill should survive a kill -9 of the runner alone (that is the orphan this test is about)'
    again = start_runner(tmp_path, steps=1)
    rc = again.finish(300)
    assert rc == 0, again.output()
    assert 'is still running: stopping it' in again.output(), again.output()
    assert alive(family) == [], f'the leftover notebook is still running: {alive(family)}'
    assert (tmp_path / 'figures' / 'slow.json').exists()
    assert not (tmp_path / 'runs' / '.reproduce-children.json').exists()
