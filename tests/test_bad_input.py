"""Bad input gets a one-paragraph DDError naming the parameter and what is allowed, before any long computation
(issue #9). Each case must raise before the work starts and, where it could, must not have trained any expert (no test
asserts on a time: on a shared machine times vary; the subprocess timeouts only guard against hangs)."""
from __future__ import annotations
import ast, json, os, subprocess, sys, time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dd_companion import buffers as B, data as D, methods as M
from dd_companion.core import DDError, experiment_out
from conftest import REPO, child_env, trained_files

NOTEBOOKS = sorted((REPO / 'nbs' / 'experiments').glob('*.ipynb'))


def _distiller(ctx, buffer=None, out=None, **kw):
    return M.Distiller(M.distill_config('smoke', **kw), buffer=buffer, out_dir=out or ctx.tmp / 'run', progress=False)


def _ds(**kw): return M.distill_config('smoke', **kw)


def _eval_wrong_size(ctx):
    from dd_companion.evaluate import evaluate_set, random_real_set
    x, y, _ = random_real_set(ctx.data, 1)
    return evaluate_set(x[:, :, :16, :16], y, ctx.data, 'smoke', progress=False)


def _eval_wrong_classes(ctx):
    from dd_companion.evaluate import evaluate_set, random_real_set
    x, y, _ = random_real_set(ctx.data, 1)
    return evaluate_set(x, torch.randn(len(x), 100), ctx.data, 'smoke', progress=False)


def _load_wrong_set(ctx, size=32, classes=10):
    from dd_companion.evaluate import load_distilled, save_distilled
    x = torch.randn(classes, 3, size, size)
    path = save_distilled(ctx.tmp / 'other.pt', x, torch.arange(classes), 0.01, ctx.data)
    return load_distilled(path, ctx.data)


def _not_a_folder(ctx):
    f = ctx.tmp / 'a_file'; f.write_text('x')
    return f / 'out'


# (id, call, substrings the message must contain, may it train experts?)
CASES = [
    ('unknown dataset', lambda c: _ds(dataset='cifar-10'), ["dataset='cifar-10'", 'allowed values', "'cifar10-mini'", "'cifar100'"]),
    ('unknown dataset (load_dataset)', lambda c: D.load_dataset('imagenet'), ["dataset='imagenet'", "'tinyimagenet'"]),
    ('unknown model', lambda c: _ds(model='ResNet-18'), ["model='ResNet-18'", 'allowed values', "'ResNet18'"]),
    ('unknown expert model', lambda c: B.build_experts('smoke', model='VGG', progress=False), ["model='VGG'", "'VGG11'"]),
    ('ipc = 0', lambda c: _ds(ipc=0), ['ipc=0', 'allowed range [1, inf]']),
    ('ipc < 0', lambda c: _ds(ipc=-3), ['ipc=-3', 'allowed range [1, inf]']),
    ('ipc not an integer', lambda c: _ds(ipc=1.5), ['ipc=1.5', 'integer']),
    ('ipc larger than the smallest class', lambda c: _distiller(c, ipc=21), ['ipc=21', 'smallest class', '20']),
    ('syn_steps = 0', lambda c: _ds(syn_steps=0), ['syn_steps=0', 'allowed range [1, inf]']),
    ('max_start_epoch beyond the buffer', lambda c: _distiller(c, c.buffer, max_start_epoch=4), ['max_start_epoch=4', 'buffer holds 3']),
    ('expert_epochs beyond the buffer', lambda c: _distiller(c, c.buffer, expert_epochs=3), ['expert_epochs=3', 'buffer holds 3']),
    ('start window beyond the experts, before training them', lambda c: _distiller(c, max_start_epoch=4), ['max_start_epoch=4', 'expert_epochs=1']),
    ('min_start_epoch >= max_start_epoch', lambda c: _ds(min_start_epoch=2, max_start_epoch=2), ['max_start_epoch=2', 'min_start_epoch']),
    ('buffer built with another ZCA setting', lambda c: B.ExpertBuffer(c.buffer.folder, expected={'zca': True}), ['zca=False', 'zca=True', 'smoke_buffer_folder']),
    ('buffer built for another model', lambda c: B.ExpertBuffer(c.buffer.folder, expected={'model': 'ConvNetBN'}), ["model='ConvNet'", "model='ConvNetBN'"]),
    ('buffer built for another dataset', lambda c: B.ExpertBuffer(c.buffer.folder, expected={'dataset': 'cifar100'}), ["dataset='cifar10-mini'", "dataset='cifar100'"]),
    ('buffer with fewer experts', lambda c: B.ExpertBuffer(c.buffer.folder, num_experts=5), ['2 experts', '5 were asked']),
    ('Distiller given a ZCA-mismatched buffer', lambda c: _distiller(c, c.buffer, zca=True), ['zca=False', 'zca=True']),
    ('Distiller given a buffer of another model', lambda c: _distiller(c, c.buffer, model='ConvNetBN'), ["'ConvNetBN'", "'ConvNet'"]),
    ('set with another image size (evaluate_set)', _eval_wrong_size, ['(3, 16, 16)', '(3, 32, 32)']),
    ('set with another class count (evaluate_set)', _eval_wrong_classes, ['100 classes', '10']),
    ('set with another image size (load_distilled)', lambda c: _load_wrong_set(c, size=64), ['other.pt', '(3, 64, 64)', '(3, 32, 32)']),
    ('set with another class count (load_distilled)', lambda c: _load_wrong_set(c, classes=20), ['other.pt', '20 classes', '10']),
    ('missing dataset files, offline', lambda c: c.offline(), ['cifar10', 'cifar-10-python.tar.gz', 'cifar-10-batches-py']),
    ('unwritable out_dir (experiment_out)', lambda c: experiment_out('x', str(_not_a_folder(c))), ['out_dir=', 'a_file', 'not writable']),
    ('unwritable out_dir (Distiller), before training', lambda c: _distiller(c, out=_not_a_folder(c)), ['a_file', 'out_dir']),
    ('unknown distill option', lambda c: _ds(ipcs=1), ["unknown option 'ipcs'", 'ipc', 'syn_steps']),
    ('unknown preset', lambda c: M.distill_config('fast'), ["scale='fast'", "'quick'", "'smoke'"]),
    ('unknown method', lambda c: M.distill_config('smoke', 'mttt'), ["method='mttt'", "'mtt'", "'datm'"]),
    ('negative lr_img', lambda c: _ds(lr_img=-1.0), ['lr_img=-1.0', 'allowed range [0, inf]']),
    ('negative lr_lr', lambda c: _ds(lr_lr=-1e-7), ['lr_lr=-1e-07', 'allowed range [0, inf]']),
    ('negative expert lr', lambda c: B.build_experts('smoke', lr=-0.01, progress=False), ['lr=-0.01', 'allowed range [0, inf]']),
    ('NaN lr_img', lambda c: _ds(lr_img=float('nan')), ['lr_img=nan']),
    ('unknown init', lambda c: _ds(init='random'), ["init='random'", "'real'", "'noise'", "'samples_predicted_correctly'"]),
    ('unknown label_mode', lambda c: _ds(label_mode='learned'), ["label_mode='learned'", "'hard'", "'soft'"]),
    ('zca given as a string', lambda c: _ds(zca='no'), ['zca', 'True', 'False']),
    ('unknown evaluation override', lambda c: _ds(eval_overrides={'epochz': 3}), ['epochz', 'epochs']),
    ('unknown expert override', lambda c: _distiller(c, expert_overrides={'widht': 32}), ['widht', 'width']),
]


@pytest.fixture
def ctx(tmp_path, smoke_buffer, smoke_data, empty_buffers, monkeypatch):
    def offline():
        from dd_companion.data import load_dataset
        monkeypatch.setenv('DD_COMPANION_OFFLINE', '1')
        (tmp_path / 'empty').mkdir()
        return load_dataset('cifar10', root=tmp_path / 'empty')
    return SimpleNamespace(tmp=tmp_path, buffer=smoke_buffer, data=smoke_data, empty_buffers=empty_buffers, offline=offline)


@pytest.mark.bad_input
@pytest.mark.parametrize('call,needles', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_before_any_work(call, needles, ctx):
    with pytest.raises(DDError) as e: call(ctx)
    msg = str(e.value)
    needles = [str(ctx.buffer.folder) if n == 'smoke_buffer_folder' else n for n in needles]
    missing = [n for n in needles if n not in msg]
    assert not missing, f'the message lacks {missing}: {msg}'
    assert '\n' not in msg.strip(), f'not one paragraph: {msg}'
    assert trained_files(ctx.empty_buffers) == [], f'experts were trained before the error: {trained_files(ctx.empty_buffers)}'


def test_there_are_at_least_twelve_bad_input_cases():
    assert len(CASES) >= 12


# --- missing dataset files with no internet (the variable DD_COMPANION_OFFLINE unset) -------------------------------
@pytest.mark.bad_input
def test_missing_dataset_without_internet_is_a_clear_error_quickly(tmp_path):
    "No internet is simulated with an unreachable proxy, so the test behaves the same on a connected machine."
    (tmp_path / 'empty').mkdir()
    env = child_env(HTTP_PROXY='http://127.0.0.1:9', HTTPS_PROXY='http://127.0.0.1:9', http_proxy='http://127.0.0.1:9',
                    https_proxy='http://127.0.0.1:9', NO_PROXY='', no_proxy='')
    env.pop('DD_COMPANION_OFFLINE', None)
    code = ('from dd_companion.core import DDError\nfrom dd_companion.data import load_dataset\n'
            f'try: load_dataset("cifar10", root={str(tmp_path / "empty")!r})\n'
            'except DDError as e: print("DDERROR", e); raise SystemExit(3)\n')
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, f'rc {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}'
    assert 'could not be downloaded' in r.stdout and 'cifar-10-python.tar.gz' in r.stdout, r.stdout
    assert not any((tmp_path / 'empty').iterdir()), 'a partial download was left behind'


# --- notebook parameters through papermill -------------------------------------------------------------------------
def _papermill(tmp_path, *params):
    nb = REPO / 'nbs' / 'experiments' / 'random_real.ipynb'
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'papermill', str(nb), str(tmp_path / 'executed.ipynb'), '-p', 'out_dir',
                        str(tmp_path / 'out'), *params, '--cwd', str(nb.parent), '--no-progress-bar'],
                       env=child_env(), capture_output=True, text=True, timeout=300)
    return r, time.perf_counter() - t0


@pytest.mark.bad_input
def test_papermill_parameter_of_the_wrong_type_is_refused(tmp_path):
    "-p ipcs \"[1, 2]\" passes a string; the notebook refuses it in its first cell, before loading data."
    r, seconds = _papermill(tmp_path, '-p', 'ipcs', '[1, 2]')
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert 'DDError' in out and 'notebook parameter ipcs must be of type list' in out and '-y' in out, out[-3000:]
    assert not (tmp_path / 'out' / 'random_real.json').exists()


@pytest.mark.bad_input
def test_papermill_unknown_parameter_is_refused(tmp_path):
    "papermill only warns about an unknown name (`-p ipc 3` instead of ipcs); the notebook must refuse it."
    r, seconds = _papermill(tmp_path, '-p', 'ipc', '3', '-p', 'epochs', '1', '-p', 'runs', '1')
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'DDError' in out and 'ipc' in out, (
        'an unknown notebook parameter was accepted (papermill only logs "Passed unknown parameter"). Fix: '
        'core.check_notebook_params should parse the cell papermill injects (the entry of namespace["In"] that '
        'starts with "# Parameters") and raise a DDError listing the accepted names for any name without an '
        f'annotation.\n{out[-1500:]}')
    assert not (tmp_path / 'out' / 'random_real.json').exists()


def _annotated(source: str) -> list:
    return [n.target.id for n in ast.parse(source).body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_sees_every_notebook_parameter(nb):
    """papermill.inspect_notebook (used by papermill's unknown-name warning, and by any runner that validates names)
    must find every parameter of the parameters cell; it skips lines with more than one '=' (e.g. in a comment)."""
    import papermill
    cells = [c for c in json.loads(nb.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, f'{nb.name}: {len(cells)} cells tagged parameters'
    source = ''.join(cells[0]['source'])
    declared = _annotated(source)
    assert declared and 'out_dir' in declared, f'{nb.name}: typed parameters with an out_dir expected'
    seen = set(papermill.inspect_notebook(str(nb)))
    hidden = [n for n in declared if n not in seen]
    lines = [l for l in source.splitlines() if l.count('=') > 1]
    assert not hidden, f'{nb.name}: papermill cannot see the parameters {hidden} (lines with two "=": {lines})'
