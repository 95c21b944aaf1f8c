"""Check that the outputs committed in notebooks are the outputs they produce now (issue #18).

    python tools/check_outputs.py nbs/0*.ipynb nbs/1[01]_*.ipynb            # check: exit 1 and a diff if any differs
    python tools/check_outputs.py --update nbs/08_matching.ipynb            # refresh: execute, write outputs, nbdev_clean

Run it from the repository root, with the virtualenv's python, one thread (`OMP_NUM_THREADS=1`), as CI does.

**Execution** is nbdev_test's: execnb's `CaptureShell` runs the cells of the notebook (its `#|` directive lines removed)
with the notebook's folder as working directory and `IN_TEST=1`; a cell carrying one of settings.ini's `tst_flags`
(`#| notest`, `#| slow`, `#| gpu`) or `#| eval: false` is not run and keeps no output. The executed notebook is then
cleaned exactly as `nbdev_clean` cleans (execution counts and `at 0x…` addresses removed), so what is compared is what
`--update` would commit.

**Comparison**, cell by cell (a cell that raises is a failure of its own):

- the outputs' kinds must agree: stream name, or output type and its MIME types (`text/plain`, `image/png`, …);
- text (streams, `text/plain`, `text/html`, `text/markdown`, …) must be equal after removing trailing whitespace
  from each line and trailing blank lines, except that a printed decimal number may differ by `NUM_REL` relative or
  one unit of its last digit (integers and all other text must match); consecutive stream outputs of the same name are joined first (where a
  stream is cut in two depends on buffering);
- a PNG must have the same pixel size, at most `PNG_MAX_CHANGED` pixels whose colour changed by more than
  `PNG_STRONG` (on a 0–1 scale, in any channel), and a mean absolute difference of its decoded pixels of at most
  `PNG_TOLERANCE`. The bytes are not compared: PNG encoding and metadata vary with library versions, and float
  noise in the plotted numbers moves anti-aliased edges by a fraction of a pixel — small changes of a few levels —
  whereas a changed label, curve or image changes tens of pixels completely. Other images (there should be none:
  the notebooks make PNG only) are compared by presence.

Outputs are compared under the assumption that both sides ran on the same software stack with one thread (CI's
virtualenv, `OMP_NUM_THREADS=1`): a different torch build or BLAS can change the last digits of computed numbers,
and chaotic computations (a diverging smoke distillation) can amplify them.

**Volatile cells**: a code cell whose metadata carries the tag `volatile` (written `# %% tags=["volatile"]` in
tools/nbpy.py's format; settings.ini's `allowed_cell_metadata_keys = tags` makes nbdev_clean keep it) is executed
but its outputs are not compared — for output that legitimately changes from run to run. Prefer making an output
stable (round, print relative paths, no timings) over marking it volatile.

`--update` executes each notebook, writes the fresh outputs of every code cell (volatile ones included) back into
it, then runs nbdev_clean on it; a second `--update` or `nbdev_clean` changes nothing. A failing cell stops
`--update` without writing.
"""
from __future__ import annotations
import argparse, base64, copy, io, os, re, sys, time
from pathlib import Path

VOLATILE_TAG = 'volatile'
PNG_TOLERANCE = 0.01             # mean |Δ| of decoded pixels, 0–1 scale (≈ 2.5/255)
PNG_STRONG = 0.25                # a pixel "changed" when a channel moved by more than this (64/255) ...
PNG_MAX_CHANGED = 4              # ... and at most this many may have changed (anti-aliasing noise)
# one-time messages of a fresh installation, never part of a notebook's output (dropped before writing and comparing)
IGNORED_LINES = re.compile(r'^Matplotlib is building the font cache')
NUM_REL = 5e-3                   # a printed decimal number may differ by this relative amount, or by one unit of its
                                 # last printed digit (1.1612 vs 1.1613): CPUs differ in the last bits of float sums, and a
                                 # gradient norm after a short trajectory printed 0.02531 on one and 0.02535 (0.16 %) on a Zen 4
_DECIMAL = re.compile(r'[-+]?\d+\.\d+(?:[eE][-+]?\d+)?')


def _text(v) -> str:
    return ''.join(v) if isinstance(v, list) else str(v)


# show_doc's "[source]" links carry the line number of the definition, which moves with every edit above it
SOURCE_LINE = re.compile(r'(/blob/[^\s)#]+\.py)#L\d+')


def _norm_text(s: str) -> list[str]:
    s = SOURCE_LINE.sub(r'\1#L', s)
    lines = [l.rstrip() for l in s.replace('\r\n', '\n').split('\n')]
    while lines and not lines[-1]: lines.pop()
    return lines


def _filtered(outputs) -> list[dict]:
    "Outputs as plain dicts without the `IGNORED_LINES` of their streams (a stream left empty is dropped)."
    res = []
    for o in outputs:
        o = dict(o)
        if o.get('output_type') == 'stream':
            lines = _text(o['text']).splitlines(True)
            kept = [l for l in lines if not IGNORED_LINES.match(l)]
            if not kept: continue
            if len(kept) < len(lines): o['text'] = kept
        res.append(o)
    return res


def _merged(outputs) -> list[dict]:
    "Outputs as plain dicts (see `_filtered`), consecutive streams of the same name joined."
    res = []
    for o in _filtered(outputs):
        if o.get('output_type') == 'stream' and res and res[-1].get('output_type') == 'stream' and res[-1]['name'] == o['name']:
            res[-1] = {**res[-1], 'text': _text(res[-1]['text']) + _text(o['text'])}
        else: res.append(o)
    return res


def _kind(o) -> str:
    t = o.get('output_type')
    if t == 'stream': return f"stream {o.get('name')}"
    if t == 'error': return f"error {o.get('ename')}"
    return f"{t} [{', '.join(sorted(o.get('data', {})))}]"


def _png(b64: str):
    import numpy as np
    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(_text(b64)))).convert('RGBA')
    return np.asarray(im, dtype=np.float32) / 255


def _last_digit_unit(t: str) -> float:
    "What one unit of the last printed digit of decimal `t` is worth: '1.25' → 0.01, '3.5e-04' → 1e-05."
    mantissa, _, exponent = t.lower().partition('e')
    return 10.0 ** (int(exponent or 0) - len(mantissa.split('.')[1]))

def _close(x: str, y: str) -> bool:
    "Two printed decimal numbers agree within `NUM_REL` or one unit of the last digit either prints."
    a, b = float(x), float(y)
    unit = max(_last_digit_unit(x), _last_digit_unit(y))
    return abs(a - b) <= max(NUM_REL * max(abs(a), abs(b)), 1.01 * unit)

def _same_line(a: str, b: str) -> bool:
    "Equal, or equal but for decimal numbers that are `_close` (integers and everything else must match exactly)."
    if a == b: return True
    na, nb = _DECIMAL.findall(a), _DECIMAL.findall(b)
    return (_DECIMAL.sub('#', a) == _DECIMAL.sub('#', b) and len(na) == len(nb) and all(map(_close, na, nb)))

def _same_text(old: list[str], new: list[str]) -> bool:
    return len(old) == len(new) and all(map(_same_line, old, new))

def _first_diff(old: list[str], new: list[str]) -> str:
    for i in range(max(len(old), len(new))):
        a = old[i] if i < len(old) else '<no line>'
        b = new[i] if i < len(new) else '<no line>'
        if not _same_line(a, b): return f'line {i + 1} differs:\n    committed: {a[:300]}\n    executed:  {b[:300]}'
    return 'no difference'


def compare_outputs(old_outputs, new_outputs) -> str | None:
    "None when the outputs agree (see the module docstring), else the first difference in words."
    old, new = _merged(old_outputs), _merged(new_outputs)
    if [_kind(o) for o in old] != [_kind(o) for o in new]:
        return (f'the outputs differ in kind:\n    committed: {[_kind(o) for o in old] or "no output"}\n'
                f'    executed:  {[_kind(o) for o in new] or "no output"}')
    for k, (a, b) in enumerate(zip(old, new), 1):
        what = f'output {k} ({_kind(a)})'
        if a.get('output_type') == 'stream':
            if not _same_text(_norm_text(_text(a['text'])), _norm_text(_text(b['text']))):
                return f'{what}: ' + _first_diff(_norm_text(_text(a['text'])), _norm_text(_text(b['text'])))
            continue
        if a.get('output_type') == 'error':
            continue                                      # an executed error is reported before any comparison
        for mime in sorted(a.get('data', {})):
            va, vb = a['data'][mime], b['data'][mime]
            if mime == 'image/png':
                try: pa, pb = _png(va), _png(vb)
                except Exception as e: return f'{what} {mime}: cannot decode ({type(e).__name__}: {e})'
                if pa.shape != pb.shape:
                    return f'{what} {mime}: size {pa.shape[1]}×{pa.shape[0]} committed, {pb.shape[1]}×{pb.shape[0]} executed'
                delta = abs(pa - pb)
                changed = int((delta.max(-1) > PNG_STRONG).sum())
                if changed > PNG_MAX_CHANGED:
                    return (f'{what} {mime}: {changed} pixels changed colour (more than {PNG_MAX_CHANGED} may, '
                            f'by more than {PNG_STRONG} of the range)')
                if float(delta.mean()) > PNG_TOLERANCE:
                    return f'{what} {mime}: mean pixel difference {float(delta.mean()):.4f} > tolerance {PNG_TOLERANCE}'
            elif mime.startswith('image/'):
                continue                                  # presence only
            elif mime.startswith('text/') or isinstance(va, (str, list)):
                if not _same_text(_norm_text(_text(va)), _norm_text(_text(vb))):
                    return f'{what} {mime}: ' + _first_diff(_norm_text(_text(va)), _norm_text(_text(vb)))
            elif va != vb:
                return f'{what} {mime}: the values differ'
    return None


def _skip_flags() -> set:
    from nbdev.config import get_config
    return set(get_config().get('tst_flags', '').split())


def execute(path: Path, flags: set | None = None):
    "Execute the notebook at `path` as nbdev_test does; returns (raw notebook with the fresh outputs, error text or None)."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.clean import _nbdev_clean
    path = Path(path).resolve()
    flags = _skip_flags() if flags is None else flags
    raw = read_nb(path)
    run = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    assert len(run.cells) == len(raw.cells), f'{path}: the processed notebook has a different number of cells'

    def skip(cell):
        if cell.cell_type != 'code': return True
        if 'nbdev_export' + '(' in cell.source: return True
        d = getattr(cell, 'directives_', {}) or {}
        if d.get('eval:', [''])[0].lower() == 'false': return True
        return bool(flags & d.keys())

    os.environ['IN_TEST'] = '1'
    shell = CaptureShell(path, mpl_format='png')
    err = None
    with working_directory(path.parent):
        for i, cell in enumerate(run.cells):
            if cell.cell_type != 'code': continue
            raw.cells[i]['outputs'] = []
            if skip(cell): continue
            shell.cell(cell)
            raw.cells[i]['outputs'] = _filtered(copy.deepcopy(list(cell.get('outputs', []))))
            if shell.exc is not None:
                tb = ''.join(''.join(o.get('traceback') or []) for o in cell.get('outputs', []) if o.get('output_type') == 'error')
                err = f'cell {i + 1} (id {raw.cells[i].get("id")}) raised {type(shell.exc).__name__}: {shell.exc}\n{tb[-3000:]}'
                break
    _nbdev_clean(raw)                                    # what nbdev_clean would leave: compare and write that
    return raw, err


def _rel(p: Path) -> str:
    try: return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError: return str(p)


def check(path: Path, update: bool = False) -> list[str]:
    "Execute one notebook and compare (or, with `update`, write) its outputs; returns the problems found."
    from execnb.nbio import read_nb, write_nb
    path = Path(path)
    committed = read_nb(path)
    fresh, err = execute(path)
    name = _rel(path)
    if err: return [f'{name}: {err}']
    if update:
        write_nb(fresh, path)
        from nbdev.clean import nbdev_clean
        nbdev_clean(fname=str(path))
        return []
    problems = []
    for i, (a, b) in enumerate(zip(committed.cells, fresh.cells)):
        if a.cell_type != 'code': continue
        if VOLATILE_TAG in (a.get('metadata', {}).get('tags') or []): continue
        d = compare_outputs(a.get('outputs', []), b.get('outputs', []))
        if d: problems.append(f'{name}: cell {i + 1} (id {a.get("id")}, first line: {a.source.splitlines()[0][:60] if a.source else ""!r}): {d}')
    return problems


def _one(nb: Path, update: bool) -> tuple[int, str, str, float]:
    "Check one notebook in a fresh interpreter (no state, random or imported, leaks from one notebook to the next)."
    import subprocess
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), '--single', str(nb)] + (['--update'] if update else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--update', action='store_true', help='write the fresh outputs into the notebooks (then nbdev_clean)')
    ap.add_argument('--jobs', type=int, default=1, help='notebooks executed at once, each in its own process (default 1)')
    ap.add_argument('--single', action='store_true', help=argparse.SUPPRESS)   # internal: this process runs one notebook
    args = ap.parse_args(argv)
    if args.single:
        problems = check(args.notebooks[0], update=args.update)
        for p in problems: print(p, file=sys.stderr)
        return 1 if problems else 0
    from concurrent.futures import ThreadPoolExecutor
    failed, t_all = 0, time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for nb, (rc, out, err, secs) in zip(args.notebooks, pool.map(lambda nb: _one(nb, args.update), args.notebooks)):
            status = 'FAIL' if rc else ('updated' if args.update else 'ok')
            print(f'{status:7s} {_rel(nb)} ({secs:.0f} s)', flush=True)
            if rc:
                msg = (err.strip() or out.strip() or f'exit status {rc}')
                print('  ' + msg.replace('\n', '\n  '), file=sys.stderr, flush=True)
            failed += bool(rc)
    print(f'{len(args.notebooks) - failed}/{len(args.notebooks)} notebooks '
          f'{"updated" if args.update else "match their committed outputs"} ({time.perf_counter() - t_all:.0f} s)', flush=True)
    if failed and not args.update:
        print(f'{failed} notebook(s) differ from their committed outputs. If the change is intended, refresh them with\n'
              f'    python tools/check_outputs.py --update NOTEBOOK...\nand commit the notebooks.', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
