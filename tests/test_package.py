"""Installed as a package, the library works outside its checkout (issue #21).

A module fixture copies what a build reads (setup.py, settings.ini, pyproject.toml, MANIFEST.in, README.md, the
package, `data/` without downloads, `nbs/experiments/`) into a temporary folder, builds the sdist and from the sdist
the wheel (`python -m build --no-isolation`: nothing is downloaded), and installs the wheel with `--no-deps --no-index`
into a fresh virtualenv. Only after the install does a `.pth` file put this environment's site-packages *behind* the
virtualenv's own, so torch and the other requirements are reused (CI stays fast) while `dd_companion` itself comes
from the wheel — each test checks that it does.

Every command then runs from an empty temporary folder, with the `DD_COMPANION_*` variables unset and `HOME` and the
`XDG_*` folders pointing into the test's temporary folder, so "the user's cache/data folders" are observable:

| test | asserts |
|---|---|
| `test_the_wheel_ships_the_data_and_the_notebooks` | every embedded file is in the wheel under `dd_companion/_data/` with its SHA-256; every experiment notebook under `dd_companion/_experiments/`; `platformdirs` is a requirement and `dd-companion` an entry point |
| `test_smoke_distillation_from_an_empty_folder` | no checkout is found; data from the wheel; a smoke distillation runs, is evaluated and exported; the set reads back with `torch.load(weights_only=True)`; the expert buffer is in the user cache folder, the run in the user data folder; the working folder holds only the exported file; a missing data file names the reinstall, not `git checkout` |
| `test_console_script_from_an_empty_folder` | `dd-companion --version` prints the version of settings.ini; `reproduce --list` finds the notebooks shipped in the wheel (no entry "missing") and places outputs in the user data folder |
| `test_a_shipped_notebook_runs_from_an_empty_folder` | `dd-companion reproduce --preset smoke --only random-real` executes the wheel's copy of the notebook with the virtualenv's kernel and publishes its results JSON in the user data folder |
"""
from __future__ import annotations
import configparser, hashlib, json, os, shutil, site, subprocess, sys, time, venv, zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ['setup.py', 'settings.ini', 'pyproject.toml', 'MANIFEST.in', 'README.md']
NOT_SHIPPED = shutil.ignore_patterns('__pycache__', '*.pyc', '.ipynb_checkpoints', 'downloads', 'cifar-10-batches-py',
                                     'cifar-100-python', 'tiny-imagenet-200', '*.tar.gz', '*.zip', '*.tmp')
EXPERIMENTS = sorted(p.name for p in (REPO / 'nbs' / 'experiments').glob('*.ipynb'))


def settings_version() -> str:
    cp = configparser.ConfigParser(delimiters=['='])
    cp.read(REPO / 'settings.ini', encoding='utf-8')
    return cp['DEFAULT']['version']


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "Build sdist + wheel from a copy of the sources, install the wheel into a fresh virtualenv; returns its paths."
    root = tmp_path_factory.mktemp('package')
    t0 = time.perf_counter()
    src = root / 'src'
    src.mkdir()
    for f in BUILD_INPUTS: shutil.copy2(REPO / f, src / f)
    for d in ['dd_companion', 'data', 'nbs/experiments']: shutil.copytree(REPO / d, src / d, ignore=NOT_SHIPPED)
    dist = root / 'dist'
    b = subprocess.run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(dist), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    wheels, sdists = list(dist.glob('*.whl')), list(dist.glob('*.tar.gz'))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    env_dir = root / 'venv'
    venv.create(env_dir, with_pip=False, symlinks=os.name != 'nt')
    py = env_dir / ('Scripts/python.exe' if os.name == 'nt' else 'bin/python')
    i = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index', '-q',
                        str(wheels[0])], capture_output=True, text=True, timeout=300)
    assert i.returncode == 0, i.stdout[-3000:] + i.stderr[-3000:]
    purelib = Path(subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                                  capture_output=True, text=True, check=True).stdout.strip())
    assert (purelib / 'dd_companion' / '__init__.py').exists()
    # the requirements (torch, ...) come from this environment, after the virtualenv's own site-packages
    (purelib / '_dd_test_requirements.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    home = root / 'home'
    home.mkdir()
    print(f'built and installed the wheel in {time.perf_counter() - t0:.1f} s')
    return {'root': root, 'wheel': wheels[0], 'sdist': sdists[0], 'python': py, 'bin': py.parent, 'purelib': purelib,
            'package': purelib / 'dd_companion', 'home': home, 'cache': home / 'cache' / 'dd_companion',
            'share': home / 'share' / 'dd_companion'}


def user_env(inst) -> dict:
    "The environment of a new user: no DD_COMPANION_* variables, HOME and XDG folders in the test's temporary folder."
    drop = ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP', 'VIRTUAL_ENV', 'JUPYTER_PATH', 'JUPYTER_DATA_DIR',
            'JUPYTER_CONFIG_DIR', 'IPYTHONDIR')
    env = {k: v for k, v in os.environ.items() if not k.startswith(('DD_COMPANION_', 'XDG_')) and k not in drop}
    h = inst['home']
    env.update(HOME=str(h), XDG_CACHE_HOME=str(h / 'cache'), XDG_DATA_HOME=str(h / 'share'),
               XDG_CONFIG_HOME=str(h / 'config'), PATH=os.pathsep.join([str(inst['bin']), env.get('PATH', '')]),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONUNBUFFERED='1', PYTHONNOUSERSITE='1')
    return env


def empty_folder(inst, name: str) -> Path:
    d = inst['root'] / 'work' / name
    d.mkdir(parents=True)
    return d


def run(inst, args, cwd, timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=user_env(inst), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f'{args} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}'
    return p


def test_the_wheel_ships_the_data_and_the_notebooks(installed):
    from dd_companion.data import EMBEDDED_SHA256
    with zipfile.ZipFile(installed['wheel']) as w:
        names = set(w.namelist())
        for rel, digest in EMBEDDED_SHA256.items():
            member = f'dd_companion/_data/{rel}'
            assert member in names, f'{member} is not in the wheel'
            assert hashlib.sha256(w.read(member)).hexdigest() == digest, member
        shipped = sorted(n.split('/')[-1] for n in names if n.startswith('dd_companion/_experiments/'))
        assert shipped == EXPERIMENTS
        meta = next(w.read(n).decode() for n in names if n.endswith('.dist-info/METADATA'))
        entry = next(w.read(n).decode() for n in names if n.endswith('.dist-info/entry_points.txt'))
    assert 'Requires-Dist: platformdirs' in meta
    assert 'dd-companion = dd_companion.reproduce:main' in entry
    assert not [n for n in names if 'downloads' in n or n.endswith('.pyc')]
    # installed, the files are where importlib.resources finds them, byte for byte the repository's
    for rel in EMBEDDED_SHA256:
        assert (installed['package'] / '_data' / rel).read_bytes() == (REPO / 'data' / rel).read_bytes(), rel


SMOKE = r'''
import json, os, sys, tempfile
import torch
torch.set_num_threads(1)
import dd_companion
from dd_companion.core import DDError, checkout_root, data_dir, buffers_dir, runs_dir, notebooks_dir
from dd_companion.data import load_dataset
from dd_companion.methods import distill_config, Distiller
d = Distiller(distill_config('smoke', 'mtt', ipc=1), progress=False)
summary = d.run()
ev = d.evaluate()
path = d.export('my_set.pt')
s = torch.load('my_set.pt', weights_only=True)
os.environ['DD_COMPANION_DATA'] = tempfile.mkdtemp()
try: load_dataset(); missing = None
except DDError as e: missing = str(e)
print('RESULT ' + json.dumps({
    'file': dd_companion.__file__, 'checkout': None if checkout_root() is None else str(checkout_root()),
    'buffers': str(buffers_dir()), 'runs': str(runs_dir()), 'notebooks': str(notebooks_dir()),
    'buffer': str(d.buffer.folder), 'out_dir': str(d.out_dir), 'export': str(path),
    'final': summary['final_eval']['mean'], 'eval': ev.mean, 'accs': ev.accs,
    'images': list(s['images'].shape), 'labels': s['labels'].tolist(), 'lr': float(s['lr']), 'missing': missing}))
'''


def test_smoke_distillation_from_an_empty_folder(installed):
    work = empty_folder(installed, 'smoke')
    t0 = time.perf_counter()
    p = run(installed, [installed['python'], '-c', SMOKE], cwd=work)
    print(f'smoke distillation from the wheel: {time.perf_counter() - t0:.1f} s')
    r = json.loads(next(l for l in p.stdout.splitlines() if l.startswith('RESULT '))[7:])
    pkg = installed['package']
    assert Path(r['file']) == pkg / '__init__.py'                 # the wheel's copy, not the checkout's
    assert r['checkout'] is None
    assert (Path(r['buffers']), Path(r['runs']), Path(r['notebooks'])) == (
        installed['cache'] / 'buffers', installed['share'] / 'runs', pkg / '_experiments')
    assert Path(r['buffer']).parent == installed['cache'] / 'buffers' and list(Path(r['buffer']).glob('expert_*.npy'))
    assert Path(r['out_dir']).is_relative_to(installed['share'] / 'runs') and (Path(r['out_dir']) / 'checkpoint.pt').exists()
    assert r['images'] == [10, 3, 32, 32] and sorted(r['labels']) == list(range(10)) and r['lr'] > 0
    assert 0 <= r['eval'] <= 1 and 0 <= r['final'] <= 1 and len(r['accs']) == 2
    assert sorted(q.name for q in work.iterdir()) == ['my_set.pt']  # nothing else written into the working folder
    import torch
    s = torch.load(work / 'my_set.pt', weights_only=True)          # readable without the library
    assert s['images'].shape == (10, 3, 32, 32) and torch.isfinite(s['images']).all()
    assert r['missing'] and 'reinstall the package' in r['missing'] and 'git checkout' not in r['missing']


def test_console_script_from_an_empty_folder(installed):
    work = empty_folder(installed, 'cli')
    cli = installed['bin'] / 'dd-companion'
    v = run(installed, [cli, '--version'], cwd=work)
    assert v.stdout.strip() == f'dd-companion {settings_version()}'
    p = run(installed, [cli, 'reproduce', '--list', '--preset', 'quick'], cwd=work)
    lines = p.stdout.rstrip().splitlines()
    assert lines[-1] == f"experiment notebooks: {installed['package'] / '_experiments'}", p.stdout
    assert lines[0].endswith(f"outputs in {installed['share'] / 'figures' / 'quick'}"), lines[0]
    from dd_companion.papers import ENTRIES
    rows = {l.split()[0]: l for l in lines if l.split() and l.split()[0] in {e.id for e in ENTRIES}}
    assert set(rows) == {e.id for e in ENTRIES}
    missing = [i for i, l in rows.items() if '  missing  ' in l]
    assert missing == [], f'entries whose notebook was not found in the package: {missing}'
    assert list(work.iterdir()) == []


def test_a_shipped_notebook_runs_from_an_empty_folder(installed):
    work = empty_folder(installed, 'notebook')
    py = installed['python']
    run(installed, [py, '-m', 'ipykernel', 'install', '--prefix', installed['root'] / 'venv', '--name', 'python3'], cwd=work)
    k = run(installed, [py, '-c', 'from jupyter_client.kernelspec import KernelSpecManager as K; '
                                  'print(K().get_kernel_spec("python3").argv[0])'], cwd=work)
    assert Path(k.stdout.strip()) == py, k.stdout                  # the notebook runs in the virtualenv
    t0 = time.perf_counter()
    p = run(installed, [installed['bin'] / 'dd-companion', 'reproduce', '--preset', 'smoke', '--only', 'random-real',
                        '--no-progress'], cwd=work, timeout=600)
    print(f'random_real (smoke) from the wheel: {time.perf_counter() - t0:.1f} s')
    assert '1 ran, 0 cached, 0 failed' in p.stdout, p.stdout
    doc = json.loads((installed['share'] / 'figures' / 'smoke' / 'random_real.json').read_text())
    assert doc['results'] and doc['experiment'] == 'random_real'
    assert (installed['share'] / 'runs' / 'smoke' / 'random_real.ipynb').exists()
    assert list(work.iterdir()) == []
