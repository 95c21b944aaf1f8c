"""Fault hooks for the kill -9 tests (imported automatically by every child Python, which has this folder on PYTHONPATH).

- `DD_FAULT_FREEZE_WRITE=<name>`: the n-th (`DD_FAULT_FREEZE_NTH`, default 1) atomic write of a file whose name
  contains <name> is frozen just before its rename: the temporary file is complete and flushed, the target is not
  yet replaced (the hook sits in os.fsync, which atomic_write calls right before os.replace).
- `DD_FAULT_FREEZE_REPLACE=<name>`: the n-th os.replace of a non-temporary file onto a target whose name contains
  <name> is frozen before it happens (the reproduction runner publishing a finished run's files).

A frozen process writes what it froze on to `DD_FAULT_MARKER` and sleeps until the test kills it with SIGKILL —
a deterministic "kill -9 in the middle of a write". Without these variables nothing changes.
"""
import os

_write, _replace = os.environ.get('DD_FAULT_FREEZE_WRITE'), os.environ.get('DD_FAULT_FREEZE_REPLACE')
if _write or _replace:
    import time
    _nth = int(os.environ.get('DD_FAULT_FREEZE_NTH', '1'))
    _marker = os.environ['DD_FAULT_MARKER']
    _seen = [0]

    def _freeze(what):
        _seen[0] += 1
        if _seen[0] != _nth: return
        with open(_marker + '.part', 'w') as f: f.write(what)
        _orig_replace(_marker + '.part', _marker)
        while True: time.sleep(1)

    _orig_fsync, _orig_replace = os.fsync, os.replace

    def _frozen_fsync(fd):
        try: path = os.readlink(f'/proc/self/fd/{fd}')
        except OSError: path = ''
        if _write and _write in os.path.basename(path) and path.endswith('.tmp'):
            _orig_fsync(fd)
            _freeze(path)
        return _orig_fsync(fd)

    def _frozen_replace(src, dst, **kw):
        if _replace and _replace in os.path.basename(os.fspath(dst)) and not os.fspath(src).endswith('.tmp'):
            _freeze(os.fspath(dst))
        return _orig_replace(src, dst, **kw)

    os.fsync, os.replace = _frozen_fsync, _frozen_replace
