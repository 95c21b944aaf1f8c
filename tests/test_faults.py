"""Damaged files, lazy reads, full disks, hostile pickles and numerical faults (issues #3, #4, #9)."""
from __future__ import annotations
import builtins, errno, hashlib, io, json, mmap, os, stat
from pathlib import Path

import numpy as np
import pytest
import torch

from dd_companion.core import (DDError, atomic_save_json, atomic_savefig, atomic_write_text, safe_torch_load, save_results,
                               save_table, sha256_file)
from dd_companion.buffers import ExpertBuffer, _paths, build_experts, expert_config

from conftest import tmp_files


def sha(path) -> str: return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- 4. truncated, corrupt and mismatched buffer files ------------------------------------------------------------
@pytest.mark.fault
def test_truncated_expert_file_is_an_error_naming_it(buffer_copy):
    victim = _paths(buffer_copy, 1)['npy']
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DDError) as e: ExpertBuffer(buffer_copy)
    assert str(victim) in str(e.value) and 'truncated' in str(e.value)
    # the same through the cache: asking build_experts for these experts must not hand out the damaged buffer
    with pytest.raises(DDError) as e: build_experts('smoke', root=buffer_copy.parent, progress=False)
    assert str(victim) in str(e.value)


@pytest.mark.fault
def test_expert_file_cut_inside_its_header_is_an_error_naming_it(buffer_copy):
    victim = _paths(buffer_copy, 0)['npy']
    victim.write_bytes(victim.read_bytes()[:30])
    with pytest.raises(DDError) as e: ExpertBuffer(buffer_copy)
    assert str(victim) in str(e.value) and 'corrupt' in str(e.value)


@pytest.mark.fault
def test_bit_flipped_expert_file_fails_verify_naming_it(buffer_copy):
    victim = _paths(buffer_copy, 1)['npy']
    raw = bytearray(victim.read_bytes()); size = len(raw)
    raw[size // 2] ^= 0x10                                   # one bit, same size: only the checksum can tell
    victim.write_bytes(bytes(raw))
    buf = ExpertBuffer(buffer_copy)                          # headers and sizes are fine
    with pytest.raises(DDError) as e: buf.verify()
    assert str(victim) in str(e.value) and 'checksum' in str(e.value)


@pytest.mark.fault
def test_expert_file_of_another_configuration_is_an_error_naming_it(buffer_copy):
    victim = _paths(buffer_copy, 1)['npy']
    np.save(victim, np.zeros((4, 10), np.float32))
    with pytest.raises(DDError) as e: ExpertBuffer(buffer_copy)
    assert str(victim) in str(e.value) and 'another configuration' in str(e.value)


@pytest.mark.fault
def test_corrupt_manifest_is_an_error_naming_it(buffer_copy):
    man = buffer_copy / 'manifest.json'
    man.write_text(man.read_text()[:50])
    with pytest.raises(DDError) as e: ExpertBuffer(buffer_copy)
    assert str(man) in str(e.value)


@pytest.mark.fault
def test_truncated_partial_checkpoint_is_an_error_naming_it(buffer_copy):
    "Resuming expert 2 from a damaged .partial.pt names that file (never a raw unpickling traceback)."
    victim = _paths(buffer_copy, 2)['partial']
    victim.write_bytes(_paths(buffer_copy, 0)['state'].read_bytes()[:200])
    with pytest.raises(DDError) as e: build_experts('smoke', root=buffer_copy.parent, num_experts=3, progress=False)
    assert str(victim) in str(e.value)


def test_stored_snapshots_of_an_expert_differ_from_each_other(smoke_buffer):
    "The authors' code on a CPU stores aliases of the live weights; here every epoch is a real copy."
    for i in smoke_buffer:
        traj = np.asarray(smoke_buffer.trajectory(i))
        assert traj.shape == (smoke_buffer.epochs + 1, smoke_buffer.num_params)
        for a in range(len(traj)):
            for b in range(a + 1, len(traj)):
                assert not np.array_equal(traj[a], traj[b]), f'expert {i}: snapshots {a} and {b} are identical'
        steps = np.linalg.norm(np.diff(traj, axis=0), axis=1)
        assert (steps > 1e-4 * np.linalg.norm(traj[0])).all(), steps
    assert not np.array_equal(np.asarray(smoke_buffer.trajectory(0)), np.asarray(smoke_buffer.trajectory(1)))


# --- 5. sampling reads only two snapshots -------------------------------------------------------------------------
P, SNAPSHOTS, NUM_EXPERTS = 1000, 51, 100


def value(expert, epoch): return (expert * SNAPSHOTS + epoch) * P + np.arange(P, dtype=np.float64)  # exact in float32


@pytest.fixture(scope='module')
def synthetic_buffer(tmp_path_factory):
    "100 experts x 51 snapshots of P=1000 parameters, in the on-disk format of `build_experts` (20 MB)."
    folder = tmp_path_factory.mktemp('synthetic') / 'buffer'
    folder.mkdir()
    man = {'config': expert_config('smoke').identity(), 'key': 'synthetic', 'experts': {}}
    for i in range(NUM_EXPERTS):
        arr = np.stack([value(i, e) for e in range(SNAPSHOTS)]).astype(np.float32)
        np.save(_paths(folder, i)['npy'], arr)
        man['experts'][str(i)] = {'epochs': SNAPSHOTS - 1, 'sha256': sha256_file(_paths(folder, i)['npy']), 'num_params': P}
    (folder / 'manifest.json').write_text(json.dumps(man))
    return folder


class ReadCounter:
    "Counts bytes read through os.pread/os.read, and every other way of opening or mapping a file."
    def __init__(self, monkeypatch):
        self.pread_bytes, self.preads, self.other = 0, 0, []
        orig_pread, orig_read = os.pread, os.read
        def pread(fd, n, offset):
            b = orig_pread(fd, n, offset); self.pread_bytes += len(b); self.preads += 1; return b
        def read(fd, n):
            b = orig_read(fd, n); self.other.append(('os.read', len(b))); return b
        monkeypatch.setattr(os, 'pread', pread)
        monkeypatch.setattr(os, 'read', read)
        for owner, name in [(builtins, 'open'), (io, 'open'), (np, 'load'), (np, 'memmap'), (np, 'fromfile'), (mmap, 'mmap')]:
            orig = getattr(owner, name)
            def spy(*a, _orig=orig, _name=f'{owner.__name__}.{name}', **k):
                self.other.append((_name, str(a[0]) if a else '')); return _orig(*a, **k)
            monkeypatch.setattr(owner, name, spy)


def test_sampling_a_pair_reads_exactly_two_snapshots(synthetic_buffer, monkeypatch):
    buf = ExpertBuffer(synthetic_buffer)
    assert (len(buf), buf.epochs, buf.num_params) == (NUM_EXPERTS, SNAPSHOTS - 1, P)
    for e in buf.experts: buf.snapshot(e, 0)              # the first read of each file checks its SHA-256, once per process
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        counter = ReadCounter(monkeypatch)
        expert, start, a, b = buf.sample(gen, max_start=40, span=2)
        monkeypatch.undo()
        assert counter.pread_bytes == 2 * P * 4 and counter.preads == 2, (counter.pread_bytes, counter.preads)
        assert counter.other == [], f'other reads while sampling: {counter.other}'
        assert torch.equal(a, torch.from_numpy(value(expert, start).astype(np.float32)))
        assert torch.equal(b, torch.from_numpy(value(expert, start + 2).astype(np.float32)))
    counter = ReadCounter(monkeypatch)
    a, b = buf.pair(99, 48, 2)
    monkeypatch.undo()
    assert counter.pread_bytes == 2 * P * 4 and counter.other == []
    assert torch.equal(b, torch.from_numpy(value(99, 50).astype(np.float32)))
    assert buf.nbytes() > 2000 * counter.pread_bytes        # 20 MB on disk, 8 KB read


# --- 6. a full disk while saving leaves the previous file intact -------------------------------------------------
class _FullFile:
    "A file object whose disk fills up after `limit` bytes."
    def __init__(self, f, limit): self._f, self._left = f, limit
    def write(self, b):
        if len(b) > self._left:
            if self._left: self._f.write(b[:self._left]); self._left = 0
            raise OSError(errno.ENOSPC, 'No space left on device')
        self._left -= len(b)
        return self._f.write(b)
    def __getattr__(self, k): return getattr(self._f, k)
    def __enter__(self): return self
    def __exit__(self, *a): return self._f.__exit__(*a)
    def __iter__(self): return iter(self._f)


def _fd_path(fd):
    try: return os.readlink(f'/proc/self/fd/{fd}')
    except OSError: return ''


def disk_full(monkeypatch, match: str, how: str):
    "Atomic writes of files whose name contains `match` fail with ENOSPC: half-way through ('write') or at fsync."
    if how == 'write':
        orig = os.fdopen
        def fdopen(fd, *a, **k):
            f = orig(fd, *a, **k)
            return _FullFile(f, 100) if match in os.path.basename(_fd_path(fd)) else f
        monkeypatch.setattr(os, 'fdopen', fdopen)
    else:
        orig_fsync = os.fsync
        def fsync(fd):
            if match in os.path.basename(_fd_path(fd)): raise OSError(errno.ENOSPC, 'No space left on device')
            return orig_fsync(fd)
        monkeypatch.setattr(os, 'fsync', fsync)


@pytest.fixture(scope='module')
def distiller(tmp_path_factory, smoke_buffer, smoke_data):
    from dd_companion.methods import Distiller, distill_config
    d = Distiller(distill_config('smoke', iterations=50, checkpoint_every=0), data=smoke_data, buffer=smoke_buffer,
                  out_dir=tmp_path_factory.mktemp('distiller'), progress=False)
    d.step()
    return d


def _save_checkpoint(d, _, tmp_path):
    d.step(); d.save_checkpoint(); return d.ckpt_path


def _save_distilled(d, k, tmp_path):
    from dd_companion.evaluate import save_distilled
    return save_distilled(tmp_path / 'set.pt', d.images + k, d.labels, 0.01 * (k + 1), d.data, config={'k': k})


def _save_results(d, k, tmp_path): return save_results(tmp_path, 'exp', {'ipc': 1}, {'acc': [0.1 * k] * 50})


def _save_table(d, k, tmp_path): return save_table([{'IPC': i, 'acc': f'{k}.{i}'} for i in range(30)], tmp_path, 'exp', 'T')[1]


def _save_figure(d, k, tmp_path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(); ax.plot(np.arange(10) * (k + 1))
    atomic_savefig(fig, tmp_path / 'fig.png'); plt.close(fig)
    return tmp_path / 'fig.png'


SAVERS = {'checkpoint': (_save_checkpoint, 'checkpoint.pt'), 'distilled set': (_save_distilled, 'set.pt'),
          'results JSON': (_save_results, 'exp.json'), 'table': (_save_table, 'exp.md'), 'figure': (_save_figure, 'fig.png')}


@pytest.mark.fault
@pytest.mark.parametrize('how', ['write', 'fsync'])
@pytest.mark.parametrize('what', list(SAVERS))
def test_disk_full_while_saving_keeps_the_previous_file(what, how, distiller, tmp_path, monkeypatch):
    save, name = SAVERS[what]
    path = Path(save(distiller, 1, tmp_path))
    before = sha(path)
    disk_full(monkeypatch, name, how)
    with pytest.raises(Exception) as e: save(distiller, 2, tmp_path)
    monkeypatch.undo()
    assert sha(path) == before, f'{what}: the previous file was modified by a failed save'
    assert tmp_files(path.parent) == [], f'{what}: temporary file left behind: {tmp_files(path.parent)}'
    path2 = Path(save(distiller, 3, tmp_path))                          # and the disk, once freed, works again
    assert path2 == path and sha(path) != before
    # the error says what happened: a full disk, not a secondary error of the serialiser
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC, (
        f'{what}: a full disk surfaced as {type(e.value).__name__}: {e.value} — atomic_torch_save should serialise '
        f'to memory (io.BytesIO) and write the bytes, so that the OSError(ENOSPC) reaches the caller')


@pytest.mark.fault
@pytest.mark.parametrize('how', ['write', 'fsync'])
def test_disk_full_while_writing_an_expert_file_keeps_the_buffer(how, buffer_copy, monkeypatch):
    "Appending a 4th epoch to the smoke experts with a full disk: the 3-epoch buffer stays intact and usable."
    victim = _paths(buffer_copy, 0)['npy']
    before, old = sha(victim), np.load(victim)
    disk_full(monkeypatch, 'expert_000.npy', how)
    with pytest.raises(OSError) as e: build_experts('smoke', root=buffer_copy.parent, epochs=4, progress=False)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert sha(victim) == before
    assert tmp_files(buffer_copy) == [], tmp_files(buffer_copy)
    ExpertBuffer(buffer_copy, num_experts=2, epochs=3).verify()
    more = build_experts('smoke', root=buffer_copy.parent, epochs=4, progress=False).verify()
    assert more.epochs == 4
    assert np.array_equal(np.asarray(more.trajectory(0))[:4], old)           # the old epochs are kept


def test_atomic_files_get_ordinary_permissions(tmp_path):
    "A file written atomically is as readable as one written with open(): mode 0o666 minus the umask (not 0o600)."
    umask = os.umask(0); os.umask(umask)
    plain = tmp_path / 'plain.txt'; plain.write_text('x')
    atomic_write_text(tmp_path / 'atomic.txt', 'x')
    atomic_save_json(tmp_path / 'atomic.json', {'x': 1})
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~umask
    for p in ('atomic.txt', 'atomic.json'):
        got = stat.S_IMODE((tmp_path / p).stat().st_mode)
        assert got == want, f'{p} has mode {oct(got)}, a plain write gives {oct(want)} (tempfile.mkstemp creates 0o600)'


# --- 7. loading never executes code --------------------------------------------------------------------------------
class Payload:
    "Unpickling this runs a shell command that creates `marker`."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


class Innocent:
    "A harmless class instance: still not something a weights-only loader may construct."
    def __init__(self): self.x = 1


def hostile_pt(path, marker, kind='payload'):
    obj = Payload(marker) if kind == 'payload' else Innocent()
    torch.save({'images': torch.zeros(10, 3, 32, 32), 'labels': torch.arange(10), 'lr': 0.01, 'mean': [0.5] * 3,
                'std': [0.5] * 3, 'zca': False, 'config': '{}', 'iteration': 1, 'epoch': 1, 'extra': obj}, path)


@pytest.mark.fault
@pytest.mark.parametrize('kind', ['payload', 'instance'])
def test_distilled_set_with_a_pickled_object_is_refused(tmp_path, kind):
    from dd_companion.evaluate import load_distilled
    marker = tmp_path / 'executed'
    hostile_pt(tmp_path / 'set.pt', marker, kind)
    with pytest.raises(DDError) as e: load_distilled(tmp_path / 'set.pt')
    assert str(tmp_path / 'set.pt') in str(e.value)
    assert not marker.exists(), 'the payload was executed'


@pytest.mark.fault
def test_checkpoint_with_a_pickled_payload_is_refused(tmp_path, smoke_buffer, smoke_data):
    from dd_companion.methods import Distiller, distill_config
    marker = tmp_path / 'executed'
    d = Distiller(distill_config('smoke'), data=smoke_data, buffer=smoke_buffer, out_dir=tmp_path / 'run', progress=False)
    hostile_pt(tmp_path / 'evil.pt', marker)
    with pytest.raises(DDError): d.load_checkpoint(tmp_path / 'evil.pt')
    hostile_pt(tmp_path / 'run' / 'checkpoint.pt', marker)                 # resumed automatically on construction
    with pytest.raises(DDError) as e:
        Distiller(distill_config('smoke'), data=smoke_data, buffer=smoke_buffer, out_dir=tmp_path / 'run', progress=False)
    assert 'checkpoint.pt' in str(e.value)
    assert not marker.exists(), 'the payload was executed'


@pytest.mark.fault
def test_expert_files_with_pickled_payloads_are_refused(buffer_copy, tmp_path):
    marker = tmp_path / 'executed'
    hostile_pt(_paths(buffer_copy, 2)['partial'], marker)                   # a resumable expert checkpoint
    with pytest.raises(DDError) as e: build_experts('smoke', root=buffer_copy.parent, num_experts=3, progress=False)
    assert str(_paths(buffer_copy, 2)['partial']) in str(e.value)
    victim = _paths(buffer_copy, 1)['npy']                                  # a trajectory as an object array
    np.save(victim, np.array([Payload(marker)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DDError) as e: ExpertBuffer(buffer_copy)
    assert str(victim) in str(e.value)
    np.save(_paths(buffer_copy, 0)['correct'], np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError): ExpertBuffer(buffer_copy, num_experts=1).correctness(0)
    assert not marker.exists(), 'the payload was executed'


# --- 9. numerical faults --------------------------------------------------------------------------------------------
def _run_until_fault(tmp_path, smoke_buffer, smoke_data, monkeypatch, poison=None, **overrides):
    "Run a smoke distillation that should stop with a NumericalFault; returns (distiller, fault, sha of each checkpoint)."
    import dd_companion.methods as M
    cfg = M.distill_config('smoke', iterations=12, checkpoint_every=2, **overrides)
    d = M.Distiller(cfg, data=smoke_data, buffer=smoke_buffer, out_dir=tmp_path / 'run', progress=False)
    saved = {}
    orig_save = M.Distiller.save_checkpoint
    def save(self): orig_save(self); saved[self.iteration] = sha(self.ckpt_path)
    monkeypatch.setattr(M.Distiller, 'save_checkpoint', save)
    if poison is not None:
        orig, calls = d.parts.engines[cfg.meta_grad], [0]
        def poisoned(*a, **k):
            r = orig(*a, **k); calls[0] += 1
            if calls[0] == 6: poison(r)                      # the 6th iteration (iteration 5) goes wrong
            return r
        monkeypatch.setitem(d.parts.engines, cfg.meta_grad, poisoned)
    from dd_companion.matching import NumericalFault
    with pytest.raises(NumericalFault) as e: d.run(evaluate=False)
    return d, str(e.value), saved


def _assert_last_good_checkpoint(d, msg, saved):
    assert 'lower lr_img' in msg and 'lr_lr' in msg, msg
    assert saved, 'no checkpoint was written before the fault'
    last = max(saved)
    assert str(d.ckpt_path) in msg, msg
    assert sha(d.ckpt_path) == saved[last], 'the checkpoint on disk is not the last good one'
    ck = safe_torch_load(d.ckpt_path)
    assert ck['iteration'] == last
    assert torch.isfinite(ck['images']).all() and 0 < float(ck['syn_lr']) < 1
    assert not (d.out_dir / 'distilled.pt').exists()            # nothing exported from a broken run
    assert tmp_files(d.out_dir) == []


POISONS = {
    'nan loss': lambda r: r.update(tm=torch.tensor(float('nan'))),
    'inf loss': lambda r: r.update(tm=torch.tensor(float('inf'))),
    'nan image gradient': lambda r: r['g_images'].view(-1)[:7].fill_(float('nan')),
    'exploding step size': lambda r: r.update(g_lr=torch.full_like(r['g_lr'], -1e9)),
}


@pytest.mark.fault
@pytest.mark.parametrize('fault', list(POISONS))
def test_numerical_fault_stops_with_the_last_good_checkpoint(fault, tmp_path, smoke_buffer, smoke_data, monkeypatch):
    d, msg, saved = _run_until_fault(tmp_path, smoke_buffer, smoke_data, monkeypatch, POISONS[fault])
    assert 'iteration 5' in msg, msg
    assert max(saved) == 4
    _assert_last_good_checkpoint(d, msg, saved)


@pytest.mark.fault
def test_negative_step_size_from_a_large_lr_lr(tmp_path, smoke_buffer, smoke_data, monkeypatch):
    "A real run, no monkeypatching of the maths: lr_lr=2e-7 drives the learned step size below zero."
    d, msg, saved = _run_until_fault(tmp_path, smoke_buffer, smoke_data, monkeypatch, lr_lr=2e-7)
    assert 'step size' in msg and 'non-positive' in msg, msg
    _assert_last_good_checkpoint(d, msg, saved)
    from dd_companion.methods import Distiller
    again = Distiller(d.cfg, data=smoke_data, buffer=smoke_buffer, out_dir=d.out_dir, progress=False)
    assert again.iteration == max(saved) and float(again.syn_lr) > 0       # the last good state can be resumed


# --- 20.8 a failed notebook run, outside the runner, publishes nothing ---------------------------------------------
def _papermill_random_real(tmp_path, out, *params):
    from conftest import REPO, child_env
    import subprocess, sys
    nb = REPO / 'nbs' / 'experiments' / 'random_real.ipynb'
    return subprocess.run([sys.executable, '-m', 'papermill', str(nb), str(tmp_path / 'executed.ipynb'), '-p', 'out_dir', str(out),
                           *params, '--cwd', str(nb.parent), '--no-progress-bar'],
                          env=child_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.fault
def test_failed_direct_papermill_run_leaves_the_published_outputs_as_they_were(tmp_path):
    """`-y "ipcs: []"` fails after the table and figure were written (no IPC to draw a grid for): the results JSON,
    table and figures of the earlier successful run must stay byte-identical, and a later run clears the failed one's
    staging folder."""
    out = tmp_path / 'out'
    r = _papermill_random_real(tmp_path, out, '-y', 'ipcs: [2]')
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    before = {p.name: sha(p) for p in out.iterdir() if p.is_file()}
    assert {'random_real.json', 'random_real.md', 'random_real.csv', 'random_real.png'} <= set(before), sorted(before)
    r = _papermill_random_real(tmp_path, out, '-y', 'ipcs: []')
    assert r.returncode != 0, 'the run with no IPC was expected to fail'
    after = {p.name: sha(p) for p in out.iterdir() if p.is_file()}
    assert after == before, 'a failed run changed the published outputs: ' + ', '.join(
        sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n)))
    staged = [p for p in (out / '.unpublished').glob('random_real-*') if p.is_dir() and not p.is_symlink()]
    assert len(staged) == 1 and (staged[0] / 'random_real.md').exists(), 'the failed run\'s partial table should stay staged for inspection'
    r = _papermill_random_real(tmp_path, out, '-y', 'ipcs: [2]', '-p', 'runs', '1')
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not staged[0].exists(), 'the next run did not remove the dead run\'s staging folder'
    assert json.loads((out / 'random_real.json').read_text())['params']['runs'] == 1
