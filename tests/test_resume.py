"""kill -9 at a random moment, and in the middle of an atomic write, during expert training, distillation and a
papermill batch: the rerun resumes, loses at most one checkpoint interval, reproduces the uninterrupted run
exactly, and every file on disk is complete and valid or absent (issues #3, #4, #9).

Set DD_FAULT_SEED to replay the random kill moments of a run (the seed is printed)."""
from __future__ import annotations
import json, os, random, shutil, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, Child, child_env, run_child, start_child, tmp_files

EXPERTS, EPOCHS = 3, 6               # expert kill test: 3 ConvNet-16 experts x 6 epochs on 20 images/class
ITERATIONS, EVERY, SEED = 12, 3, 3   # distillation kill test: 12 iterations, a checkpoint every 3


def fault_rng(name: str) -> random.Random:
    seed = int(os.environ.get('DD_FAULT_SEED', random.SystemRandom().randrange(10**6)))
    print(f'[{name}] DD_FAULT_SEED={seed}')
    return random.Random(seed)


def smoke_key() -> str:
    from dd_companion.buffers import expert_config
    return expert_config('smoke').key


# --- checking what a kill left on disk ----------------------------------------------------------------------------
def check_buffer_files(folder: Path, experts: int = EXPERTS) -> dict:
    "Every file of a buffer folder must be complete and valid (or absent); returns the epochs safely on disk per expert."
    from dd_companion.buffers import ExpertBuffer, _paths
    from dd_companion.core import safe_torch_load
    man_path = folder / 'manifest.json'
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {}
    if manifest:
        ExpertBuffer(folder).verify()                       # every listed expert: header, size and checksum
    for p in folder.iterdir():
        if p.name.endswith('.tmp') or p.name == '.lock': continue
        if p.suffix == '.json': json.loads(p.read_text())
        elif p.suffix == '.npy': np.load(p, mmap_mode='r')
        elif p.suffix == '.pt': safe_torch_load(p)
    on_disk = {}
    for i in range(experts):
        p = _paths(folder, i)
        if str(i) in manifest.get('experts', {}): on_disk[i] = manifest['experts'][str(i)]['epochs']
        elif p['partial'].exists(): on_disk[i] = int(safe_torch_load(p['partial'])['epoch'])
        elif p['meta'].exists() and p['npy'].exists() and p['state'].exists(): on_disk[i] = json.loads(p['meta'].read_text())['epochs']
        else: on_disk[i] = 0
    return on_disk


def assert_same_experts(folder: Path, reference):
    "The resumed buffer is complete, passes its checksums and equals the uninterrupted build bit for bit."
    from dd_companion.buffers import ExpertBuffer
    n, e = len(reference), reference.epochs
    buf = ExpertBuffer(folder, num_experts=n, epochs=e).verify()
    for i in range(n):
        a, b = np.asarray(buf.trajectory(i)), np.asarray(reference.trajectory(i))
        assert a.shape == b.shape == (e + 1, buf.num_params)
        assert np.array_equal(a, b), f'expert {i}: resumed snapshots differ from the uninterrupted build (max |diff| {np.abs(a - b).max()})'
        assert np.array_equal(buf.correctness(i), reference.correctness(i)), f'expert {i}: per-sample correctness differs'
        assert buf.meta(i)['test_acc'] == reference.meta(i)['test_acc']
    assert not list(folder.glob('*.partial.pt')), 'partial checkpoints left after completion'


@pytest.fixture(scope='module')
def expert_reference(tmp_path_factory):
    "An uninterrupted build of the same configuration, in a child process like the interrupted one."
    from dd_companion.buffers import ExpertBuffer
    root = tmp_path_factory.mktemp('expert_reference')
    run_child('experts', root, EXPERTS, EPOCHS)
    return ExpertBuffer(root / smoke_key(), num_experts=EXPERTS, epochs=EPOCHS)


# --- 1. expert training -------------------------------------------------------------------------------------------
def test_kill9_during_expert_training_resumes_exactly(tmp_path, expert_reference, measurements):
    rng = fault_rng('experts')
    root, total = tmp_path / 'buffers', EXPERTS * EPOCHS
    target = rng.randint(1, total - 2)                    # kill while epoch target+1 is being computed
    c = start_child('experts', root, EXPERTS, EPOCHS)
    c.wait_for(lambda: any(int(w[0]) >= target for w in c.tagged('SAVED')), timeout=240)
    assert list((root / smoke_key()).glob('expert_*.partial.pt')) or list((root / smoke_key()).glob('expert_*.npy'))
    stamps = [t for t, l in c.lines if l.startswith('SAVED ')]
    epoch_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.5
    delay = rng.uniform(0, epoch_s)
    time.sleep(delay)
    c.kill9()
    assert not c.tagged('DONE'), 'the child finished before it could be killed'
    trained_before = len(c.tagged('TRAINED'))

    folder = root / smoke_key()
    on_disk = check_buffer_files(folder)                  # every file complete and valid, or absent
    stale = tmp_files(root)
    lost = trained_before - sum(on_disk.values())         # epochs computed but not on disk
    assert 0 <= lost <= 1, f'{lost} finished epochs lost (on disk {on_disk}, trained {trained_before})'

    again = run_child('experts', root, EXPERTS, EPOCHS)
    retrained = len(again.tagged('TRAINED'))
    assert sum(on_disk.values()) + retrained == total, (on_disk, retrained)
    assert_same_experts(folder, expert_reference)
    assert tmp_files(root) == [], f'temporary files left after the rerun: {tmp_files(root)}'

    m = {'test': 'kill -9 during expert training', 'experts': EXPERTS, 'epochs': EPOCHS,
         'killed_after_epochs': trained_before, 'seconds_into_next_epoch': round(delay, 3), 'epochs_on_disk': sum(on_disk.values()),
         'lost_finished_epochs': lost, 'retrained_epochs': retrained, 'stale_tmp_after_kill': len(stale),
         'resumed_exactly': True}
    print(f"expert build killed after {trained_before} of {total} epochs (+{delay:.2f} s into the next), resumed from "
          f"{sum(on_disk.values())} epochs on disk, lost {lost} finished epoch(s) plus the epoch in flight")
    measurements.append(m)


@pytest.mark.parametrize('target,nth,previous', [
    ('expert_001.partial.pt', 2, 'expert_001.partial.pt holds epoch 1'),
    ('expert_000.npy', 1, 'no expert_000.npy yet; expert_000.partial.pt holds the last epoch'),
], ids=['partial checkpoint', 'finished expert file'])
def test_kill9_in_the_middle_of_a_buffer_write(tmp_path, smoke_buffer, measurements, target, nth, previous):
    "Frozen after the temporary file is written, before the rename, then killed: the old file survives (2 experts x 3 epochs)."
    from dd_companion.buffers import _paths
    from dd_companion.core import safe_torch_load
    root, marker = tmp_path / 'buffers', tmp_path / 'marker'
    n, e = len(smoke_buffer), smoke_buffer.epochs
    c = start_child('experts', root, n, e, DD_FAULT_FREEZE_WRITE=target, DD_FAULT_FREEZE_NTH=nth, DD_FAULT_MARKER=marker)
    c.wait_for(marker.exists, timeout=240)
    tmp = Path(marker.read_text())
    c.kill9()
    folder = root / smoke_key()
    assert tmp.exists() and tmp.parent == folder              # killed mid-write: the temporary file is there
    on_disk = check_buffer_files(folder, n)
    if target.endswith('.partial.pt'):
        assert int(safe_torch_load(folder / target)['epoch']) == 1, 'the previous checkpoint was damaged'
    else:
        assert not (folder / target).exists()
        assert int(safe_torch_load(_paths(folder, 0)['partial'])['epoch']) == e
    again = run_child('experts', root, n, e)
    assert_same_experts(folder, smoke_buffer)
    measurements.append({'test': f'kill -9 while writing {target}', 'previous_file': previous, 'epochs_on_disk': sum(on_disk.values()),
                         'retrained_epochs': len(again.tagged('TRAINED')), 'stale_tmp_after_rerun': len(tmp_files(root))})
    assert tmp_files(root) == [], (f'the rerun left the temporary file of the killed write behind: {tmp_files(root)} — '
                                   f'build_experts should delete stale .*.tmp files in the buffer folder (it holds the lock)')


# --- 2. distillation ----------------------------------------------------------------------------------------------
def distill_result(out: Path) -> dict:
    from dd_companion.core import safe_torch_load
    d = safe_torch_load(out / 'distilled.pt')
    s = json.loads((out / 'summary.json').read_text())
    return {'images': d['images'], 'labels': d['labels'], 'lr': d['lr'], 'iteration': d['iteration'],
            'losses': [h['loss'] for h in s['history']], 'experts': [(h['expert'], h['start_epoch']) for h in s['history']],
            'syn_lrs': [h['syn_lr'] for h in s['history']], 'accs': s['summary']['final_eval']['accs']}


def assert_same_distillation(out: Path, ref: dict):
    r = distill_result(out)
    assert r['iteration'] == ITERATIONS
    assert torch.equal(r['images'], ref['images']), f"resumed images differ (max |diff| {(r['images'] - ref['images']).abs().max()})"
    assert torch.equal(r['labels'], ref['labels']) and r['lr'] == ref['lr']
    assert r['experts'] == ref['experts'] and r['losses'] == ref['losses'] and r['syn_lrs'] == ref['syn_lrs']
    assert r['accs'] == ref['accs']


@pytest.fixture(scope='module')
def distill_reference(tmp_path_factory, smoke_buffer):
    out = tmp_path_factory.mktemp('distill_reference')
    run_child('distill', out, ITERATIONS, EVERY, SEED)
    return distill_result(out)


def check_distill_files(out: Path) -> int:
    "Files of a killed distillation are complete or absent; returns the checkpoint's iteration (0 if none)."
    from dd_companion.core import safe_torch_load
    for name in ('distilled.pt',):
        if (out / name).exists(): safe_torch_load(out / name)
    if (out / 'summary.json').exists(): json.loads((out / 'summary.json').read_text())
    if not (out / 'checkpoint.pt').exists(): return 0
    ck = safe_torch_load(out / 'checkpoint.pt', 'distillation checkpoint')
    assert torch.isfinite(ck['images']).all() and float(ck['syn_lr']) > 0
    return int(ck['iteration'])


def test_kill9_during_distillation_resumes_exactly(tmp_path, distill_reference, measurements):
    rng = fault_rng('distill')
    out = tmp_path / 'run'
    target = rng.randint(EVERY, ITERATIONS - 2)
    c = start_child('distill', out, ITERATIONS, EVERY, SEED)
    c.wait_for(lambda: any(int(w[0]) >= target for w in c.tagged('ITER')), timeout=240)
    stamps = [t for t, l in c.lines if l.startswith('ITER ')]
    iter_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.2
    delay = rng.uniform(0, iter_s)
    time.sleep(delay)
    c.kill9()
    assert not c.tagged('DONE'), 'the child finished before it could be killed'
    killed_at = max(int(w[0]) for w in c.tagged('ITER'))
    ckpt = check_distill_files(out)
    stale = tmp_files(out)
    lost = killed_at - ckpt
    assert 0 <= lost <= EVERY, f'lost {lost} iterations with checkpoint_every={EVERY}'

    again = run_child('distill', out, ITERATIONS, EVERY, SEED)
    resumed = int(again.tagged('RESUMED')[0][0])
    assert resumed == ckpt, f'resumed from {resumed}, the checkpoint on disk holds iteration {ckpt}'
    assert_same_distillation(out, distill_reference)
    assert tmp_files(out) == []
    line = f'killed at iteration {killed_at} of {ITERATIONS}, resumed from checkpoint {resumed}, lost {lost} iterations'
    print(line)
    measurements.append({'test': 'kill -9 during distillation', 'iterations': ITERATIONS, 'checkpoint_every': EVERY,
                         'killed_at_iteration': killed_at, 'seconds_into_next_iteration': round(delay, 3),
                         'resumed_from_checkpoint': resumed, 'lost_iterations': lost, 'stale_tmp_after_kill': len(stale),
                         'resumed_exactly': True, 'summary': line})


def test_kill9_while_writing_a_distillation_checkpoint(tmp_path, distill_reference, measurements):
    from dd_companion.core import safe_torch_load
    out, marker = tmp_path / 'run', tmp_path / 'marker'
    c = start_child('distill', out, ITERATIONS, EVERY, SEED, DD_FAULT_FREEZE_WRITE='checkpoint.pt', DD_FAULT_FREEZE_NTH=2,
                    DD_FAULT_MARKER=marker)
    c.wait_for(marker.exists, timeout=240)
    c.kill9()
    assert Path(marker.read_text()).exists()                     # the half-done write is on disk as a temporary file
    assert check_distill_files(out) == EVERY                     # the previous checkpoint is intact
    assert safe_torch_load(out / 'checkpoint.pt')['iteration'] == EVERY
    again = run_child('distill', out, ITERATIONS, EVERY, SEED)
    assert int(again.tagged('RESUMED')[0][0]) == EVERY
    assert_same_distillation(out, distill_reference)
    measurements.append({'test': 'kill -9 while writing checkpoint.pt', 'killed_at_iteration': 2 * EVERY,
                         'resumed_from_checkpoint': EVERY, 'lost_iterations': EVERY, 'stale_tmp_after_rerun': len(tmp_files(out))})
    assert tmp_files(out) == [], (f'the rerun left the temporary file of the killed write behind: {tmp_files(out)} — '
                                  f'Distiller should delete stale .*.tmp files in its out_dir when it starts')


# --- 3. a batch of notebooks: `dd-companion reproduce` (papermill) -------------------------------------------------
SLOW_BODY = """import time
import matplotlib.pyplot as plt
from dd_companion.core import experiment_out, save_results, save_table, atomic_savefig, check_notebook_params
params = check_notebook_params(globals())
out = experiment_out('slow', out_dir)
for i in range(steps):
    time.sleep(0.5)
    fig, ax = plt.subplots(); ax.plot(range(10 + i)); atomic_savefig(fig, out / f'slow_{i}.png'); plt.close(fig)
    save_table([{'step': j, 'value': j * j} for j in range(i + 1)], out, 'slow', 'a slow table')
save_results(out, 'slow', params, {'table_rows': [{'method': 'mtt', 'dataset': 'cifar10-mini', 'ipc': 1, 'accs': [0.5]}]})"""


def slow_notebook(path: Path) -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    cell = nbformat.v4.new_code_cell("steps: int = 2   # figures to write\nout_dir: str = ''")
    cell.metadata['tags'] = ['parameters']
    nb.cells = [nbformat.v4.new_markdown_cell('# a slow notebook'), cell, nbformat.v4.new_code_cell(SLOW_BODY)]
    for k, c in enumerate(nb.cells): c['id'] = f'cell-{k}'
    nbformat.write(nb, path)
    return path


def check_output_file(p: Path):
    "A published file is complete: JSON parses (a results JSON matches its own hash), PNG decodes, text ends its last line."
    from dd_companion.core import config_hash
    if p.suffix in ('.json', '.ipynb'):
        d = json.loads(p.read_text())
        if p.suffix == '.json' and 'config_hash' in d: assert d['config_hash'] == config_hash(d['params']), p
    elif p.suffix == '.png':
        from PIL import Image
        with Image.open(p) as im: im.load()
    elif p.suffix in ('.csv', '.md', '.log', '.yaml'):
        t = p.read_text(); assert t.strip() and t.endswith('\n'), p
    else:
        raise AssertionError(f'unexpected file {p}')


def check_published(out: Path) -> list:
    "Every file of the output folder outside the runner's staging area is complete; returns their names."
    names = []
    for p in sorted(out.rglob('*')) if out.exists() else []:
        rel = p.relative_to(out)
        if not p.is_file() or rel.parts[0] == '.staging' or p.name == '.reproduce.lock': continue
        check_output_file(p); names.append(str(rel))
    return names


def test_kill9_during_a_reproduce_batch(tmp_path, measurements):
    """`dd-companion reproduce` over two notebooks (random_real and a slow one): killed with SIGKILL (runner, papermill
    and kernel) at a random moment, then frozen and killed while publishing random_real's results JSON, then rerun."""
    rng = fault_rng('reproduce')
    out, runs, slow = tmp_path / 'figures', tmp_path / 'runs', slow_notebook(tmp_path / 'slow.ipynb')
    # (a) kill at a random moment after the batch started writing anything
    c = start_child('reproduce', out, runs, slow)
    c.wait_for(lambda: out.exists() and any(p.is_file() and not p.name.startswith('.') for p in out.rglob('*')), timeout=300, poll=0.005)
    delay = rng.uniform(0, 3.0)                           # from random_real's first output file on
    time.sleep(delay)
    c.kill9()
    assert c.proc.returncode != 0, 'the batch finished before it could be killed'
    after_random_kill = check_published(out)
    # (b) kill while the runner publishes random_real's results JSON: the previous JSON (if any) survives byte for byte
    before = (out / 'random_real.json').read_bytes() if (out / 'random_real.json').exists() else None
    marker = tmp_path / 'marker'
    c = start_child('reproduce', out, runs, slow, '--force', '--only', 'random-real', DD_FAULT_FREEZE_REPLACE='random_real.json',
                    DD_FAULT_MARKER=marker)
    c.wait_for(marker.exists, timeout=300)
    c.kill9()
    check_published(out)
    if before is None: assert not (out / 'random_real.json').exists()
    else: assert (out / 'random_real.json').read_bytes() == before
    # (c) the rerun completes; every published file is complete; nothing half-written is left anywhere
    c = start_child('reproduce', out, runs, slow)
    rc = c.finish(300)
    assert rc == 0, c.output()
    published = check_published(out)
    assert {'random_real.json', 'random_real.png', 'random_real_grid.png', 'slow.json', 'slow_3.png', 'REPRODUCE.md'} <= set(published), published
    assert not (out / '.staging').exists() or not any((out / '.staging').iterdir())
    assert tmp_files(out) == []
    leftovers = sorted(p.name for p in runs.iterdir() if p.name.startswith('.'))
    measurements.append({'test': 'kill -9 during a reproduce batch (random_real + slow notebook)',
                         'seconds_after_first_output': round(delay, 3), 'complete_files_after_random_kill': after_random_kill,
                         'previous_results_json_kept': before is not None, 'hidden_leftovers_in_runs_after_rerun': leftovers})
    for p in runs.rglob('*'):
        if p.is_file(): check_output_file(p)                 # executed notebooks (temporary ones included) parse
    assert leftovers == [], (f'temporary files of killed runs are left in {runs}: {leftovers} — reproduce should delete '
                             f'stale .<notebook>.<token>.ipynb / .params.yaml files there when it takes the lock')


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_run(tmp_path):
    "A notebook run directly with papermill (no runner): a write killed mid-way must not leave its .tmp behind for ever."
    out, marker = tmp_path / 'out', tmp_path / 'marker'
    code = ('from dd_companion.core import experiment_out, save_results\n'
            f'save_results(experiment_out("random_real", {str(out)!r}), "random_real", {{"ipc": 1}}, {{}})\n')
    c = Child([sys.executable, '-c', code], env=child_env(DD_FAULT_FREEZE_WRITE='random_real.json', DD_FAULT_MARKER=marker))
    c.wait_for(marker.exists, timeout=120)
    c.kill9()
    assert tmp_files(out) and not (out / 'random_real.json').exists()
    from dd_companion.core import experiment_out, save_results
    save_results(experiment_out('random_real', str(out)), 'random_real', {'ipc': 1}, {})
    check_output_file(out / 'random_real.json')
    assert tmp_files(out) == [], (f'{tmp_files(out)} — experiment_out should delete temporary files of dead writers '
                                  f'(e.g. .<name>.<pid>.*.tmp whose pid no longer runs)')
