"""The reproduction runner (issue #7): failures isolated and earlier results kept, idempotent reruns, parameter
validation before any run, --list / --dry-run, the submitit executor in local mode, and expert buffers built once
by concurrent processes.

Everything writes into pytest's temporary folders (conftest points DD_COMPANION_BUFFERS/RUNS/FIGURES there too).
The real `random_real` notebook runs once with a smoke-sized override; the other notebooks are tiny ones generated
here, registered through a test-only `Registry`."""
from __future__ import annotations
import json, os, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from dd_companion.papers import ENTRIES, NOTEBOOK_PRESETS, Entry
from dd_companion.report import Registry, check_overrides, notebook_parameters
from dd_companion.reproduce import main
from dd_companion.buffers import ExpertBuffer, expert_config

REPO = Path(__file__).resolve().parents[1]
RANDOM_REAL = REPO / 'nbs' / 'experiments' / 'random_real.ipynb'
RR_TINY = {'ipcs': [2], 'runs': 1}     # smoke defaults (20 images/class, ConvNet-16, 20 epochs) at one IPC, one run

OK_BODY = """from dd_companion.core import experiment_out, save_results, save_table, check_notebook_params
params = check_notebook_params(globals())
out = experiment_out('{name}', out_dir)
save_table([{{'ipc': ipc, 'value': scale}}], out, '{name}', 'a tiny table')
save_results(out, '{name}', params, {{'table_rows': [{{'method': 'mtt', 'dataset': 'cifar10-mini', 'ipc': ipc, 'accs': [scale]}}]}})"""

BOOM_BODY = """from pathlib import Path
Path(out_dir, 'boom.md').write_text('NEW, from the failing run')
raise RuntimeError('boom: this notebook fails on purpose')"""


def write_notebook(path: Path, body: str, params: str = "ipc: int = 1\nscale: float = 0.5\nout_dir: str = ''") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata['tags'] = ['parameters']
    nb.cells = [nbformat.v4.new_markdown_cell('# test notebook'), cell, nbformat.v4.new_code_cell(body)]
    for i, c in enumerate(nb.cells): c['id'] = f'cell-{i}'
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def entry(nb: str, path: Path, kind: str = 'table') -> Entry:
    return Entry(f'{nb}-T', 'project', kind, f'test entry {nb}', nb, path=str(path))


def run(argv, registry, capsys):
    rc = main(argv, registry=registry)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def dirs(tmp_path):
    return {'out': tmp_path / 'figures', 'runs': tmp_path / 'runs', 'nbs': tmp_path / 'nbs'}


def common(dirs, preset='quick'):
    return ['reproduce', '--preset', preset, '--out', str(dirs['out']), '--runs', str(dirs['runs']), '--no-progress']


@pytest.mark.fault
def test_failure_isolated_earlier_results_kept_then_cached(dirs, capsys):
    """One notebook fails: the other completes, the failing one's earlier results are untouched, the summary names
    its executed notebook, the exit code is 1; a second invocation serves random_real from the cache."""
    boom = write_notebook(dirs['nbs'] / 'boom.ipynb', BOOM_BODY)
    reg = Registry([Entry('random-real', 'project', 'table', 'random real', 'random_real', path=str(RANDOM_REAL)),
                    entry('boom', boom)], presets={'random_real': {'quick': RR_TINY}, 'boom': {'quick': {'ipc': 3}}})
    # earlier results of the failing notebook (another configuration, so it is due to run again)
    out = dirs['out']; out.mkdir(parents=True)
    earlier = {'experiment': 'boom', 'config_hash': 'x', 'params': {'ipc': 1}, 'results': {'earlier': True}}
    (out / 'boom.json').write_text(json.dumps(earlier))
    (out / 'boom.md').write_text('EARLIER results')
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    t0 = time.time()
    rc, text, err = run(common(dirs) + ['--jobs', '2'], reg, capsys)
    first = time.time() - t0
    print(text)
    assert rc == 1, (text, err)
    # the other notebook completed and its table was rendered beside the reported number
    doc = json.loads((out / 'random_real.json').read_text())
    assert doc['params']['ipcs'] == [2] and doc['results']['by_ipc']['2']['accs']
    assert (out / 'random_real.png').exists() and (out / 'random_real_grid.png').exists()
    table = (out / 'tables' / 'random-real.md').read_text()
    assert '| Random real | CIFAR-10 mini (embedded) | 2 |' in table
    assert (dirs['runs'] / 'random_real.ipynb').exists()
    # earlier results of the failing notebook are byte-identical; its partial output went elsewhere
    for name, data in before.items(): assert (out / name).read_bytes() == data, name
    assert (dirs['runs'] / 'boom.partial' / 'boom.md').read_text().startswith('NEW')
    failed_nb = dirs['runs'] / 'boom.failed.ipynb'
    assert failed_nb.exists() and not (dirs['runs'] / 'boom.ipynb').exists()
    assert 'FAILED boom: RuntimeError: boom: this notebook fails on purpose' in text
    assert f'executed notebook: {failed_nb}' in text
    assert not (out / '.staging').exists()
    assert 'REPRODUCE.md' in text and (out / 'REPRODUCE.md').exists()

    # second invocation: random_real is cached (same configuration), boom fails again, earlier results still intact
    rr_mtime = (dirs['runs'] / 'random_real.ipynb').stat().st_mtime_ns
    rc, text, _ = run(common(dirs), reg, capsys)
    assert rc == 1 and '· cached  random_real' in text and '0 ran, 1 cached, 1 failed' in text, text
    for name, data in before.items(): assert (out / name).read_bytes() == data, name
    # and a cached run alone runs nothing (its time is printed, not asserted: times vary on a shared machine)
    t0 = time.time()
    rc, text, _ = run(common(dirs) + ['--only', 'random-real'], reg, capsys)
    second = time.time() - t0
    print(text, f'\nfirst run {first:.1f} s, cached rerun {second:.1f} s')
    assert rc == 0 and '0 ran, 1 cached, 0 failed' in text, text
    assert (dirs['runs'] / 'random_real.ipynb').stat().st_mtime_ns == rr_mtime
    rc, text, _ = run(common(dirs) + ['--list'], reg, capsys)
    assert rc == 0
    assert [l.split()[5] for l in text.splitlines() if l.startswith(('random-real ', 'boom-T '))] == ['done', 'not']


def test_idempotent_force_and_changed_parameters(dirs, capsys):
    ok = write_notebook(dirs['nbs'] / 'okay.ipynb', OK_BODY.format(name='okay'))
    presets = {'okay': {'quick': {'ipc': 10, 'scale': 0.25}}}
    reg = Registry([entry('okay', ok)], presets=presets)
    rc, text, _ = run(common(dirs), reg, capsys)
    assert rc == 0 and '1 ran, 0 cached' in text, text
    executed = dirs['runs'] / 'okay.ipynb'
    m1 = executed.stat().st_mtime_ns
    table = (dirs['out'] / 'tables' / 'okay-T.md').read_text()
    assert '| MTT | CIFAR-10 mini (embedded) | 10 | ConvNet | 25.0 ± 0.0 | 1 | 65.3 ± 0.7 | [2nd] |' in table, table
    rc, text, _ = run(common(dirs), reg, capsys)
    assert rc == 0 and '0 ran, 1 cached' in text and executed.stat().st_mtime_ns == m1
    rc, text, _ = run(common(dirs) + ['--force'], reg, capsys)
    assert rc == 0 and '1 ran, 0 cached' in text and executed.stat().st_mtime_ns != m1
    presets['okay']['quick']['scale'] = 0.5            # another configuration: runs again, new numbers published
    rc, text, _ = run(common(dirs), reg, capsys)
    assert rc == 0 and '1 ran, 0 cached' in text
    assert json.loads((dirs['out'] / 'okay.json').read_text())['params']['scale'] == 0.5
    assert '50.0 ± 0.0' in (dirs['out'] / 'tables' / 'okay-T.md').read_text()


@pytest.mark.bad_input
def test_notebook_without_results_json_fails_clearly(dirs, capsys):
    nojson = write_notebook(dirs['nbs'] / 'quiet.ipynb', 'x = ipc * 2')
    reg = Registry([entry('quiet', nojson)], presets={'quiet': {'quick': {}}})
    rc, text, _ = run(common(dirs), reg, capsys)
    assert rc == 1 and 'wrote no quiet.json into out_dir' in text, text
    assert (dirs['runs'] / 'quiet.failed.ipynb').exists() and not (dirs['out'] / 'quiet.json').exists()


@pytest.mark.bad_input
def test_parameter_errors_are_reported_before_any_run(dirs, capsys):
    ok = write_notebook(dirs['nbs'] / 'okay.ipynb', OK_BODY.format(name='okay'))
    loose = write_notebook(dirs['nbs'] / 'loose.ipynb', 'pass', params="ipc = 1\nout_dir: str = ''")
    reg = Registry([Entry('random-real', 'project', 'table', 'random real', 'random_real', path=str(RANDOM_REAL)),
                    entry('okay', ok), entry('loose', loose)],
                   presets={'random_real': {'quick': {'ipcs': '[1, 10]', 'epoch': 3}}, 'okay': {'quick': {'scale': 1}},
                            'loose': {'quick': {'ipc': 2}}})
    rc, text, err = run(common(dirs), reg, capsys)
    assert rc == 2, (text, err)
    assert 'nothing was run' in err
    assert "random_real: parameter ipcs='[1, 10]' must be of type list, got str" in err
    assert "random_real: unknown parameter 'epoch'" in err and 'epochs: int' in err and 'train_per_class: int' in err
    assert "loose: parameter 'ipc' has no type annotation" in err
    assert 'okay' not in err                               # an int is a valid float
    assert not dirs['runs'].exists() and not dirs['out'].exists()
    reg.presets['okay']['quick']['out_dir'] = '/tmp/elsewhere'
    rc, _, err = run(common(dirs) + ['--only', 'okay'], reg, capsys)
    assert rc == 2 and 'out_dir is set by the runner' in err
    rc, _, err = run(common(dirs, 'lite') + ['--only', 'okay'], reg, capsys)
    assert rc == 2 and "no 'lite' preset for okay (defined: smoke, quick)" in err


def test_default_registry_is_consistent():
    """The papers' presets raise no problem, every notebook with presets exists under nbs/experiments, and every preset
    passes the runner's parameter check against its notebook's parameters cell."""
    reg = Registry.default()
    assert reg.problems == []
    assert set(reg.presets) == set(NOTEBOOK_PRESETS)
    experiments = REPO / 'nbs' / 'experiments'
    with_presets = [e for e in reg.entries if e.notebook in reg.presets]
    assert {e.notebook for e in with_presets} == set(NOTEBOOK_PRESETS)
    for e in with_presets:
        assert (experiments / f'{e.notebook}.ipynb').exists(), e.notebook
        assert reg.path(e) == experiments / f'{e.notebook}.ipynb'
    for nb, per in reg.presets.items():
        declared = notebook_parameters(experiments / f'{nb}.ipynb')
        for preset in per: assert check_overrides(nb, declared, reg.overrides(nb, preset)) == [], (nb, preset)


def test_declared_parameters_cover_what_papermill_misses():
    import papermill
    ours, theirs = notebook_parameters(RANDOM_REAL), papermill.inspect_notebook(str(RANDOM_REAL))
    assert set(theirs) < set(ours) or set(theirs) == set(ours)
    assert all(p.type for p in ours.values()) and 'out_dir' in ours


def test_list_and_dry_run(dirs, capsys):
    # the installed console script, on the real registry
    p = subprocess.run(['dd-companion', 'reproduce', '--list', '--preset', 'quick', '--out', str(dirs['out'])],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, 'PATH': str(Path(sys.executable).parent) + os.pathsep + os.environ['PATH']})
    assert p.returncode == 0, p.stderr
    lines = {l.split()[0]: l for l in p.stdout.splitlines() if l.strip()}
    for e in ENTRIES:
        assert e.id in lines, e.id
        nb = REPO / 'nbs' / 'experiments' / f'{e.notebook}.ipynb'
        if e.notebook is None: assert 'not regenerated' in lines[e.id]
        elif not nb.exists(): assert ' missing ' in lines[e.id], lines[e.id]
        else: assert ' not run' in lines[e.id] or ' no quick preset' in lines[e.id], lines[e.id]
    assert {e.paper for e in ENTRIES} == {'DATM-CLR', 'SelMatch', 'project'}
    assert 'DATM-CLR: none' in lines['datmclr-T1'] and '[2nd]' in lines['datmclr-T1']
    assert ' inferred ' in lines['datmclr-T1']
    # dry run: what would run, with its parameters; nothing is executed
    ok = write_notebook(dirs['nbs'] / 'okay.ipynb', OK_BODY.format(name='okay'))
    reg = Registry([entry('okay', ok), Entry('diagram', 'project', 'figure', 'a diagram', None)],
                   presets={'okay': {'quick': {'ipc': 10, 'scale': 1e-05}}})
    rc, text, _ = run(common(dirs) + ['--dry-run'], reg, capsys)
    assert rc == 0
    assert 'run     okay  [okay-T]' in text and 'injected: {"ipc": 10, "scale": 1e-05}' in text
    assert 'echoed:   {"ipc": 10, "scale": 1e-05}' in text and 'by hand:  papermill ' in text
    assert "scale: 1.0e-05" in text                        # the YAML keeps 1e-05 a float for papermill
    assert 'skip    diagram: not regenerated' in text
    assert not dirs['runs'].exists()


def test_submitit_local_executor(dirs, capsys):
    ok = write_notebook(dirs['nbs'] / 'viajob.ipynb', OK_BODY.format(name='viajob'))
    reg = Registry([entry('viajob', ok)], presets={'viajob': {'quick': {'ipc': 50}}})
    rc, text, err = run(common(dirs) + ['--executor', 'submitit', '--cluster', 'local', '--timeout-min', '10'], reg, capsys)
    assert rc == 0, (text, err)
    assert '▶ start   viajob' in text and '(job ' in text and '✔ done    viajob' in text
    assert json.loads((dirs['out'] / 'viajob.json').read_text())['params']['ipc'] == 50
    assert (dirs['runs'] / 'viajob.ipynb').exists() and list((dirs['runs'] / 'submitit').glob('*/*.pkl'))


CONCURRENT_BUILD = r"""
import os, sys, time
root, counter, me, other = sys.argv[1:5]
import dd_companion.buffers as B
original = B.train_expert_epochs
def counted(cfg, data, state, until, *a, **k):
    with open(counter, 'a') as f: f.write(f'{os.getpid()} {state["epoch"]} {until}\n')
    time.sleep(1.0)                       # keep the lock held long enough for the other process to collide
    return original(cfg, data, state, until, *a, **k)
B.train_expert_epochs = counted
open(me, 'w').close()
while not os.path.exists(other): time.sleep(0.01)   # both start building at the same moment
b = B.build_experts('smoke', root=root, progress=False)
print('experts', len(b.experts), 'epochs', b.epochs)
"""


@pytest.mark.fault
def test_concurrent_processes_share_the_experts_of_one_buffer(tmp_path):
    root, counter = tmp_path / 'buffers', tmp_path / 'calls.txt'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    procs = [subprocess.Popen([sys.executable, '-c', CONCURRENT_BUILD, str(root), str(counter), str(tmp_path / f'ready{i}'),
                               str(tmp_path / f'ready{1 - i}')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all('experts 2 epochs 3' in o for o, _ in outs), outs
    calls = counter.read_text().split('\n')[:-1]
    assert len(calls) == 2, calls                                   # 2 smoke experts, each trained once in all
    assert len({c.split()[0] for c in calls}) == 2, calls           # ... one by each process: the work is shared out
    assert sum('waiting for another process training expert' in e for _, e in outs) >= 1, [e[-500:] for _, e in outs]
    b = ExpertBuffer(root / expert_config('smoke').key); b.verify()  # one consistent manifest with both experts
    assert sorted(b.experts) == [0, 1]


SLOW_BODY = """import os, time
from pathlib import Path
Path(out_dir, 'pid.txt').write_text(str(os.getpid()))
time.sleep(300)"""

INTERRUPTIBLE = """import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal: a background launch inherits SIGINT ignored
from dd_companion.papers import Entry
from dd_companion.report import Registry
from dd_companion.reproduce import main
reg = Registry([Entry('slow-T', 'project', 'table', 'slow', 'slow', path=sys.argv[1])], presets={'slow': {'quick': {}}})
sys.exit(main(['reproduce', '--preset', 'quick', '--out', sys.argv[2], '--runs', sys.argv[3], '--no-progress'], registry=reg))"""


@pytest.mark.fault
def test_ctrl_c_stops_the_kernel_and_keeps_its_traces(dirs):
    import psutil, signal
    slow = write_notebook(dirs['nbs'] / 'slow.ipynb', SLOW_BODY)
    p = subprocess.Popen([sys.executable, '-c', INTERRUPTIBLE, str(slow), str(dirs['out']), str(dirs['runs'])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while not list(dirs['out'].glob('.staging/slow-*/pid.txt')) and time.time() < end and p.poll() is None: time.sleep(0.2)
    pid_file = list(dirs['out'].glob('.staging/slow-*/pid.txt'))
    assert pid_file, p.communicate(timeout=10)
    kernel = int(pid_file[0].read_text())
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert 'interrupted' in err and '✘ stopped slow' in out, (out, err)
    try: psutil.Process(kernel).wait(timeout=20)            # the kernel (another process group) was stopped too
    except psutil.NoSuchProcess: pass
    assert not psutil.pid_exists(kernel)
    assert (dirs['runs'] / 'slow.failed.ipynb').exists() and (dirs['runs'] / 'slow.partial' / 'pid.txt').exists()
    assert not (dirs['out'] / 'slow.json').exists() and not list(dirs['out'].glob('.staging/*'))


WAITING_RUNNER = """import sys
from dd_companion.papers import Entry
from dd_companion.report import Registry
from dd_companion.reproduce import main
nb, out, runs = sys.argv[1:4]
reg = Registry([Entry('okay-T', 'project', 'table', 'okay', 'okay', path=nb)], presets={'okay': {'quick': {'ipc': 7}}})
sys.exit(main(['reproduce', '--preset', 'quick', '--out', out, '--runs', runs, '--no-progress'], registry=reg))"""


@pytest.mark.fault
def test_a_run_that_waited_for_the_lock_serves_what_the_holder_produced(dirs):
    """A second `reproduce` on the same --out waits for the lock; what the first run produced meanwhile (the same
    configuration) is served from the cache once the lock is free, not computed again. The first run is played by
    this test: it holds the lock, waits for the second run to report that it is waiting, then publishes the results."""
    from conftest import Child, child_env
    from dd_companion.core import file_lock, save_results
    from dd_companion.report import plan
    ok = write_notebook(dirs['nbs'] / 'okay.ipynb', OK_BODY.format(name='okay'))
    reg = Registry([entry('okay', ok)], presets={'okay': {'quick': {'ipc': 7}}})
    (task,), _ = plan(reg, 'quick', out=dirs['out'], runs=dirs['runs'])
    dirs['out'].mkdir(parents=True)
    with file_lock(dirs['out'] / '.reproduce.lock'):
        second = Child([sys.executable, '-c', WAITING_RUNNER, ok, dirs['out'], dirs['runs']], env=child_env())
        second.wait_for(lambda: any('another dd-companion reproduce is writing to' in l for _, l in second.lines), timeout=120)
        save_results(dirs['out'], 'okay', {**task.params, 'out_dir': 'the first run'},        # the first run finishes
                     {'table_rows': [{'method': 'mtt', 'dataset': 'cifar10-mini', 'ipc': 7, 'accs': [0.5]}]})
    rc = second.finish(120)
    text = second.output()
    assert rc == 0, text
    assert '0 ran, 1 cached, 0 failed' in text and 'finished by the run that held' in text, text
    assert not (dirs['runs'] / 'okay.ipynb').exists() and not (dirs['runs'] / 'okay.log').exists()
    assert json.loads((dirs['out'] / 'okay.json').read_text())['params']['out_dir'] == 'the first run'
    assert '50.0 ± 0.0' in (dirs['out'] / 'tables' / 'okay-T.md').read_text()
