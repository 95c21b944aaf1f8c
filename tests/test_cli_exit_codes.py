"""`dd-companion reproduce` / `tables` exit codes (issue #20, item 9): bad usage or input is 2, an environment problem
(an --out, --runs or expert-buffer cache that cannot be written, a damaged buffer manifest) is 3 — each with one
clear message naming the folder or file, before any notebook starts. 0 and 1 are checked by test_reproduce.py, 130 by
its Ctrl-C test, 128 + SIGTERM/SIGHUP by test_runner_signals.py; `--help` lists them all.

Everything runs `main` in this process on a test registry of one tiny notebook; if a check were missing, the notebook
would start (its log appears in the runs folder) — that is what "before any work" is checked against."""
from __future__ import annotations
import os, stat
from pathlib import Path

import pytest

from dd_companion.core import DDError
from dd_companion.report import Registry
from dd_companion.reproduce import EXIT_CODES, build_parser, main

from test_reproduce import OK_BODY, entry, write_notebook

ROOT = os.geteuid() == 0 if hasattr(os, 'geteuid') else False


@pytest.fixture
def env(tmp_path, monkeypatch):
    "A tiny notebook in a registry of its own, writable --out/--runs, an empty buffer cache, and a regular file."
    nb = write_notebook(tmp_path / 'nbs' / 'okay.ipynb', OK_BODY.format(name='okay'))
    reg = Registry([entry('okay', nb)], presets={'okay': {'quick': {'ipc': 2}}})
    (tmp_path / 'a_file').write_text('not a folder')
    monkeypatch.setenv('DD_COMPANION_BUFFERS', str(tmp_path / 'buffers'))
    return {'tmp': tmp_path, 'reg': reg, 'out': tmp_path / 'figures', 'runs': tmp_path / 'runs', 'file': tmp_path / 'a_file'}


def run(argv, reg, capsys) -> tuple:
    try: rc = main(argv, registry=reg)
    except SystemExit as e: rc = e.code       # argparse
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def reproduce_args(out, runs, *extra) -> list:
    return ['reproduce', '--preset', 'quick', '--out', str(out), '--runs', str(runs), '--no-progress', *extra]


def nothing_ran(env) -> bool:
    "No notebook was prepared or started (its log is written just before papermill starts) and nothing was published."
    return not list(Path(env['tmp']).rglob('okay.log')) and not list(Path(env['tmp']).rglob('okay.json'))


# --- 2: bad usage or input --------------------------------------------------------------------------------------
USAGE = [
    ('unknown preset', ['--preset', 'p-quick'], "invalid choice: 'p-quick'"),
    ('unknown executor', ['--executor', 'slurm'], "invalid choice: 'slurm'"),
    ('--jobs 0', ['--jobs', '0'], '--jobs=0 must be a positive integer'),
    ('--jobs -2', ['--jobs', '-2'], '--jobs=-2 must be a positive integer'),
    ('--jobs not a number', ['--jobs', 'two'], "invalid int value: 'two'"),
    ('unknown --only id', ['--only', 'nope'], '--only nope: not a registered table/figure id or notebook name'),
    ('--submitit-param without =', ['--submitit-param', 'gpus'], "'gpus' is not KEY=VALUE"),
    ('unknown option', ['--outt', 'x'], 'unrecognized arguments: --outt'),
]


@pytest.mark.bad_input
@pytest.mark.parametrize('args,needle', [c[1:] for c in USAGE], ids=[c[0] for c in USAGE])
def test_bad_usage_exits_2_before_any_work(args, needle, env, capsys):
    argv = reproduce_args(env['out'], env['runs'])
    if args[0] == '--preset': argv[2] = args[1]; args = []     # replace the preset
    rc, out, err = run(argv + args, env['reg'], capsys)
    assert rc == 2, (rc, out, err)
    assert needle in err, err
    assert nothing_ran(env) and not env['runs'].exists()


# --- 3: environment problems ------------------------------------------------------------------------------------
def _readonly(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True); path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return path


def _read_only_fs() -> Path:
    "A folder on a filesystem mounted read-only even for root (/proc/sys in containers and on most systems)."
    p = Path('/proc/sys')
    if not p.is_dir() or os.access(p, os.W_OK): pytest.skip('no read-only filesystem to write into here')
    return p


def _cache_with_a_readonly_buffer(e) -> Path:
    buf = e['tmp'] / 'cache' / 'k1'; buf.mkdir(parents=True)
    (buf / 'manifest.json').write_text('{"config": {}, "experts": {}}')
    _readonly(buf)
    return buf.parent


UNWRITABLE = [   # (id, which folder, how to make it, expected words, made unwritable by permissions only?)
    ('--out under a regular file', '--out', lambda e: e['file'] / 'out', ['--out=', 'a_file/out', 'is not writable'], False),
    ('--out is a regular file', '--out', lambda e: e['file'], ['--out=', 'a_file', 'is not writable'], False),
    ('--runs under a regular file', '--runs', lambda e: e['file'] / 'runs', ['--runs=', 'a_file/runs', 'is not writable'], False),
    ('--out read-only', '--out', lambda e: _readonly(e['tmp'] / 'ro_out'), ['--out=', 'ro_out', 'is not writable'], True),
    ('--runs read-only', '--runs', lambda e: _readonly(e['tmp'] / 'ro_runs'), ['--runs=', 'ro_runs', 'is not writable'], True),
    ('buffer cache is a regular file', 'buffers', lambda e: e['file'],
     ['expert-buffer cache', 'a_file is not a folder', 'DD_COMPANION_BUFFERS'], False),
    ('buffer cache under a regular file', 'buffers', lambda e: e['file'] / 'cache', ['expert-buffer cache', 'a_file is not a folder'], False),
    ('buffer cache read-only', 'buffers', lambda e: _readonly(e['tmp'] / 'ro_cache'), ['expert-buffer cache', 'ro_cache', 'not writable'], True),
    ('a buffer in the cache read-only', 'buffers', _cache_with_a_readonly_buffer,
     ['expert buffer', 'k1', 'not writable'], True),
    ('--out on a read-only filesystem', '--out', lambda e: _read_only_fs() / 'dd_out', ['--out=', 'is not writable'], False),
    ('buffer cache on a read-only filesystem', 'buffers', lambda e: _read_only_fs() / 'dd_cache',
     ['expert-buffer cache', 'read-only filesystem'], False),
]


@pytest.mark.bad_input
@pytest.mark.parametrize('which,make,needles,by_permissions', [c[1:] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE])
def test_an_unwritable_folder_exits_3_before_any_work(which, make, needles, by_permissions, env, capsys, monkeypatch):
    if by_permissions and ROOT:
        pytest.skip('root may write into a read-only (0o500) folder: it is writable, and the run is right to go on')
    path = make(env)
    out, runs = (path if which == '--out' else env['out']), (path if which == '--runs' else env['runs'])
    if which == 'buffers': monkeypatch.setenv('DD_COMPANION_BUFFERS', str(path))
    rc, text, err = run(reproduce_args(out, runs), env['reg'], capsys)
    assert rc == 3, (rc, text, err)
    missing = [n for n in needles if n not in err]
    assert not missing and err.startswith('error: ') and err.count('\n') == 1, (missing, err)
    assert 'Traceback' not in err and nothing_ran(env)


MANIFESTS = [
    ('cut short', lambda m: m.write_text('{"config": {"dataset": "cifar10-mini"}, "exp')),
    ('not an object', lambda m: m.write_text('[1, 2, 3]')),
    ('without experts', lambda m: m.write_text('{"config": {}}')),
    ('binary garbage', lambda m: m.write_bytes(b'\xff\xfe\x00\x01' * 8)),
    ('empty', lambda m: m.write_text('')),
]


@pytest.mark.fault
@pytest.mark.parametrize('damage', [c[1] for c in MANIFESTS], ids=[c[0] for c in MANIFESTS])
def test_a_damaged_buffer_manifest_exits_3_before_any_work(damage, env, capsys):
    sound = env['tmp'] / 'buffers' / 'a1b2'; sound.mkdir(parents=True)
    (sound / 'manifest.json').write_text('{"config": {"dataset": "cifar10-mini"}, "experts": {}}')
    man = env['tmp'] / 'buffers' / 'ffff' / 'manifest.json'; man.parent.mkdir(parents=True)
    damage(man)
    rc, text, err = run(reproduce_args(env['out'], env['runs']), env['reg'], capsys)
    assert rc == 3, (rc, text, err)
    assert f'buffer manifest {man} is damaged' in err and f'delete the folder {man.parent}' in err, err
    assert 'Traceback' not in err and nothing_ran(env)


@pytest.mark.fault
def test_a_file_that_cannot_be_written_during_the_command_exits_3(env, capsys):
    "A regular file where the tables folder goes: the OSError of the write is one `error:` line and exit 3, no traceback."
    env['out'].mkdir(); (env['out'] / 'tables').write_text('in the way')
    rc, text, err = run(['tables', '--preset', 'quick', '--out', str(env['out'])], env['reg'], capsys)
    assert rc == 3 and err.startswith('error: ') and 'tables' in err and 'could not be written or read' in err, (rc, err)
    assert (env['out'] / 'tables').read_text() == 'in the way'


@pytest.mark.bad_input
def test_tables_with_an_unwritable_out_exits_3(env, capsys):
    rc, text, err = run(['tables', '--preset', 'quick', '--out', str(env['file'] / 'out')], env['reg'], capsys)
    assert rc == 3 and f"--out='{env['file'] / 'out'}' is not writable" in err, (rc, err)


WHERE_BODY = """from dd_companion.core import experiment_out, save_results, check_notebook_params, buffers_dir
params = check_notebook_params(globals())
out = experiment_out('where', out_dir)
save_results(out, 'where', params, {'buffers': str(buffers_dir())})"""


def test_a_relative_buffer_cache_is_the_callers_folder_for_the_check_and_the_notebook(env, capsys, monkeypatch):
    """A relative DD_COMPANION_BUFFERS names a folder relative to where the command runs — for the runner's check and for
    the notebook, which runs in its own folder (papermill --cwd); a sound environment then runs (exit 0)."""
    nb = write_notebook(env['tmp'] / 'nbs' / 'where.ipynb', WHERE_BODY)
    reg = Registry([entry('where', nb)], presets={'where': {'quick': {}}})
    monkeypatch.chdir(env['tmp'])
    monkeypatch.setenv('DD_COMPANION_BUFFERS', 'a_file')
    rc, _, err = run(reproduce_args(env['out'], env['runs']), reg, capsys)
    assert rc == 3 and f"{env['file']} is not a folder" in err, err
    monkeypatch.setenv('DD_COMPANION_BUFFERS', 'cache')
    rc, text, err = run(reproduce_args(env['out'], env['runs']), reg, capsys)
    assert rc == 0 and '1 ran, 0 cached, 0 failed' in text, (text, err)
    import json
    assert json.loads((env['out'] / 'where.json').read_text())['results']['buffers'] == str(env['tmp'] / 'cache')


def test_help_lists_every_exit_code(capsys):
    with pytest.raises(SystemExit): build_parser().parse_args(['reproduce', '--help'])
    text = capsys.readouterr().out
    for code, what in EXIT_CODES.items():
        assert f'  {code:<6} ' + what.split()[0] in text, (code, text[-1500:])
    assert issubclass(__import__('dd_companion.reproduce', fromlist=['EnvironmentProblem']).EnvironmentProblem, DDError)
