"""Shared fixtures of the reliability tests (issue #9).

Every test runs against temporary `DD_COMPANION_BUFFERS` / `DD_COMPANION_RUNS` / `DD_COMPANION_FIGURES` folders,
so nothing in the repository's `buffers/`, `runs/` or `figures/` is read or written. The smoke expert buffer
(2 ConvNet-16 experts x 3 epochs on 20 real images per class) is built once per session.

Child processes (the kill -9 tests) are started through `start_child`: a fresh Python with one torch thread, the
same temporary folders, and `tests/fault_hooks` on `PYTHONPATH`, whose `sitecustomize.py` can freeze the process
in the middle of an atomic write (see that file) so that a test can kill it at exactly that moment.

The markers `bad_input` and `fault` (registered here) tag the tests that `tools/reliability_counts.py` counts.
"""
from __future__ import annotations
import json, os, shutil, signal, subprocess, sys, threading, time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CHILD = TESTS / 'fault_child.py'
HOOKS = TESTS / 'fault_hooks'

os.environ.setdefault('MPLBACKEND', 'Agg')

import torch
torch.set_num_threads(1)   # the tests share two cores with other jobs: one thread avoids oversubscription


# --- the reliability markers (issue #20): what tools/reliability_counts.py counts ----------------------------------
MARKERS = {
    'bad_input': 'a bad input (argument, option, parameter, folder) that must give a clear error before any work',
    'fault': 'an injected fault (kill, full disk, damaged or hostile file, failure, concurrent run) that must be '
             'survived with nothing lost',
}
# Files whose tests are all faults but which are not marked in the file itself (their owners mark them here).
FAULT_FILES = {'test_resume.py': 'kill -9 at a random moment or in the middle of a write, then a rerun'}


def pytest_configure(config):
    for name, what in MARKERS.items(): config.addinivalue_line('markers', f'{name}: {what}')


@pytest.hookimpl(tryfirst=True)      # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in FAULT_FILES and item.get_closest_marker('fault') is None: item.add_marker(pytest.mark.fault)


# --- isolated folders ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='session', autouse=True)
def dd_dirs(tmp_path_factory):
    "Session-wide temporary buffers/runs/figures folders (environment variables restored afterwards)."
    root = tmp_path_factory.mktemp('dd_companion')
    env = {'DD_COMPANION_BUFFERS': root / 'buffers', 'DD_COMPANION_RUNS': root / 'runs',
           'DD_COMPANION_FIGURES': root / 'figures'}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    yield {k.split('_')[-1].lower(): v for k, v in env.items()} | {'root': root}
    for k, v in old.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


@pytest.fixture
def empty_buffers(tmp_path, monkeypatch):
    "A fresh, empty buffer cache for one test (to check that nothing was trained)."
    d = tmp_path / 'empty_buffers'
    d.mkdir()
    monkeypatch.setenv('DD_COMPANION_BUFFERS', str(d))
    return d


def trained_files(folder) -> list:
    "Expert files (finished or partial) under `folder`: evidence that expert training started."
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('expert_*') if p.is_file())


def tmp_files(folder) -> list:
    "Leftover temporary files of atomic writes under `folder`."
    return sorted(str(p) for p in Path(folder).rglob('*.tmp'))


# --- the smoke buffer and data ------------------------------------------------------------------------------------
@pytest.fixture(scope='session')
def smoke_buffer(dd_dirs):
    """The smoke expert buffer (2 experts x 3 epochs), built once per session in the session buffer folder.

    It is built in a child process with one torch thread, like the children of the kill tests, so that their
    rebuilds can be compared with it bit for bit."""
    from dd_companion.buffers import ExpertBuffer, expert_config
    run_child('experts', dd_dirs['buffers'], 2, 3)
    return ExpertBuffer(Path(dd_dirs['buffers']) / expert_config('smoke').key, num_experts=2, epochs=3)


@pytest.fixture(scope='session')
def smoke_data():
    from dd_companion.data import load_dataset
    return load_dataset(train_per_class=20, test_per_class=10)


@pytest.fixture
def buffer_copy(smoke_buffer, tmp_path):
    "A private copy of the smoke buffer folder (safe to damage)."
    dst = tmp_path / 'buffer_copy' / smoke_buffer.folder.name
    shutil.copytree(smoke_buffer.folder, dst, ignore=shutil.ignore_patterns('.lock'))
    return dst


# --- measurements reported by the kill/resume tests ---------------------------------------------------------------
_MEASUREMENTS: list = []


@pytest.fixture(scope='session')
def measurements(dd_dirs):
    "Tests append dicts; at the end of the session they are written to a JSON file and printed."
    yield _MEASUREMENTS
    if _MEASUREMENTS:
        path = Path(os.environ.get('DD_FAULTS_REPORT', dd_dirs['root'] / 'fault_measurements.json'))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_MEASUREMENTS, indent=2) + '\n')
        print(f'\n== kill/resume measurements written to {path}:\n{path.read_text()}')


# --- child processes ----------------------------------------------------------------------------------------------
def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1', MPLBACKEND='Agg',
               PYTHONPATH=os.pathsep.join([str(HOOKS), str(REPO)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])))
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Child:
    "A subprocess in its own session (so kill -9 reaches its whole process group), with its output collected."
    def __init__(self, args, env=None, cwd=REPO):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(self.args, cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.t0 = time.perf_counter()

    def _read(self):
        for line in self.proc.stdout: self.lines.append((time.perf_counter(), line.rstrip('\n')))

    def tagged(self, tag: str) -> list:
        "Lines printed as 'TAG value...' by the child, as lists of words after the tag."
        return [l.split()[1:] for _, l in list(self.lines) if l.startswith(tag + ' ')]

    def wait_for(self, predicate, timeout: float, poll: float = 0.01):
        "Wait until predicate() is truthy (returns it) or fail with the child's output."
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            v = predicate()
            if v: return v
            if self.proc.poll() is not None and not predicate():
                time.sleep(0.2)  # let the reader drain
                v = predicate()
                if v: return v
                raise AssertionError(f'child {self.args} exited (rc {self.proc.returncode}) before the awaited event:\n{self.output()}')
            time.sleep(poll)
        raise AssertionError(f'timed out after {timeout} s waiting for the child {self.args}:\n{self.output()}')

    def kill9(self):
        "SIGKILL the child, its process group and every descendant (a papermill kernel runs in a session of its own)."
        import psutil
        try: family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess: family = []
        try: os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        for p in family:
            try: p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess: pass
        self.proc.wait(timeout=30)
        psutil.wait_procs(family, timeout=30)
        self._reader.join(timeout=10)

    def finish(self, timeout: float) -> int:
        try: rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f'child {self.args} did not finish within {timeout} s:\n{self.output()}')
        self._reader.join(timeout=10)
        return rc

    def output(self, tail: int = 4000) -> str:
        return '\n'.join(l for _, l in self.lines)[-tail:]


def start_child(*args, **env) -> Child:
    "Start `python tests/fault_child.py *args` with the test environment (plus `env`)."
    return Child([sys.executable, CHILD, *args], env=child_env(**env))


def run_child(*args, timeout: float = 240, **env) -> Child:
    "Run a child to completion; fail with its output unless it exits 0."
    c = start_child(*args, **env)
    rc = c.finish(timeout)
    assert rc == 0, f'child {args} failed (rc {rc}):\n{c.output()}'
    return c
