"""The committed outputs of the library notebooks 00–11 and the tool that keeps them in sync (issue #18).

`tools/check_outputs.py` re-executes a notebook and compares every cell's outputs with the committed ones (.ci/run
runs it on nbs/00–11 after nbdev_test). These tests are fast: they check that the checker can fail — a wrong
committed output is an error naming the cell, a differing `volatile` cell is not, `--update` repairs — on tiny
notebooks generated in a temporary folder, and that the committed notebooks carry outputs a reader can trust:
present, at most 1 MB per notebook, PNG figures only, and nothing machine-dependent (absolute paths, timestamps,
memory addresses, progress bars).
"""
from __future__ import annotations
import base64, importlib.util, io, json, os, re, subprocess, sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'check_outputs.py'
LIBRARY_NOTEBOOKS = sorted(p for p in (REPO / 'nbs').glob('*.ipynb') if re.match(r'(0\d|1[01])_', p.name))
MAX_BYTES = 1_000_000


def _tool():
    spec = importlib.util.spec_from_file_location('check_outputs', TOOL)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _run(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _stream(text):
    return nbformat.v4.new_output('stream', name='stdout', text=text)


def _notebook(path, cells):
    "A notebook of (source, committed outputs, tags) code cells."
    nb = nbformat.v4.new_notebook()
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    for i, (src, outs, tags) in enumerate(cells):
        c = nbformat.v4.new_code_cell(src, outputs=outs); c['id'] = f'cell-{i:03d}'
        if tags: c.metadata['tags'] = tags
        nb.cells.append(c)
    nbformat.write(nb, path)
    return path


def test_checker_fails_on_a_wrong_output_naming_the_cell(tmp_path):
    nb = _notebook(tmp_path / 'wrong.ipynb', [("x = 6 * 7", [], None),
                                              ("print('answer', x)\nprint('done')", [_stream('answer 41\ndone\n')], None)])
    r = _run(nb)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'cell 2 (id cell-001' in r.stderr and 'line 1 differs' in r.stderr, r.stderr
    assert 'committed: answer 41' in r.stderr and 'executed:  answer 42' in r.stderr, r.stderr
    assert 'FAIL' in r.stdout and '--update' in r.stderr


def test_checker_fails_on_a_missing_output_and_on_an_error(tmp_path):
    r = _run(_notebook(tmp_path / 'missing.ipynb', [("print('hello')", [], None)]),
             _notebook(tmp_path / 'raises.ipynb', [("x = 1", [], None), ("x / 0", [], None)]))
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'missing.ipynb: cell 1' in r.stderr and 'differ in kind' in r.stderr, r.stderr
    assert 'raises.ipynb: cell 2' in r.stderr and 'ZeroDivisionError' in r.stderr, r.stderr
    assert '0/2 notebooks match' in r.stdout


def test_volatile_cells_are_not_compared_and_update_repairs(tmp_path):
    volatile = _notebook(tmp_path / 'volatile.ipynb', [("import time; print(time.time())", [_stream('123.0\n')], ['volatile']),
                                                       ("print('stable')  ", [_stream('stable   \n\n')], None)])   # trailing blanks ignored
    wrong = _notebook(tmp_path / 'repair.ipynb', [("print(1 + 1)", [_stream('3\n')], None)])
    r = _run('--update', wrong)
    assert r.returncode == 0, r.stdout + r.stderr
    assert nbformat.read(wrong, 4).cells[0].outputs[0]['text'] == '2\n'
    from execnb.nbio import read_nb, nb2str
    from fastcore.xtras import working_directory
    from nbdev.clean import _nbdev_clean
    with working_directory(REPO):                                        # nbdev_clean would change nothing
        nb = read_nb(wrong); _nbdev_clean(nb)
    assert nb2str(nb) == wrong.read_text(encoding='utf-8')
    r = _run(volatile, wrong)
    assert r.returncode == 0, r.stdout + r.stderr


def _png(arr):
    from PIL import Image
    b = io.BytesIO(); Image.fromarray(arr).save(b, format='PNG')
    return base64.b64encode(b.getvalue()).decode()


def _display(png):
    return nbformat.v4.new_output('display_data', data={'image/png': png, 'text/plain': '<Figure size 100x100 with 1 Axes>'})


def test_source_line_numbers_of_show_doc_links_are_not_compared():
    tool = _tool()
    link = '[source](https://github.com/o/r/blob/main/dd_companion/evaluate.py#L{}){{target="_blank"}}'
    assert tool._norm_text(link.format(63)) == tool._norm_text(link.format(65))
    assert tool._norm_text(link.format(63)) != tool._norm_text(link.format(63).replace('evaluate', 'matching'))
    assert tool._norm_text('moved 63 lines') != tool._norm_text('moved 65 lines')


def test_images_are_compared_by_pixels_with_a_tolerance():
    import numpy as np
    tool = _tool()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    noisy = a.copy(); noisy[::7, ::5] ^= 1                                  # anti-aliasing noise: a few levels on a few pixels
    assert tool.compare_outputs([_display(_png(a))], [_display(_png(noisy))]) is None
    label = a.copy(); label[5:11, 20:26] = np.where(a[5:11, 20:26] > 127, 0, 255)   # a changed character of a label: 36 pixels
    assert '36 pixels changed colour' in tool.compare_outputs([_display(_png(a))], [_display(_png(label))])
    faint = np.clip(a.astype(int) + 4, 0, 255).astype(np.uint8)             # everything a little lighter
    assert 'mean pixel difference' in tool.compare_outputs([_display(_png(a))], [_display(_png(faint))])
    assert 'size 60×40 committed, 60×20 executed' in tool.compare_outputs([_display(_png(a))], [_display(_png(a[:20]))])
    split = [_stream('a\n'), _stream('b\n')]                                # where a stream is cut does not matter
    assert tool.compare_outputs(split, [_stream('a\nb\n')]) is None


@pytest.mark.parametrize('path', LIBRARY_NOTEBOOKS, ids=lambda p: p.name)
def test_library_notebook_outputs_are_committed_and_stable(path):
    assert len(LIBRARY_NOTEBOOKS) == 12
    size = path.stat().st_size
    assert size <= MAX_BYTES, f'{path.name} is {size} bytes with its outputs (at most {MAX_BYTES})'
    nb = json.loads(path.read_text(encoding='utf-8'))
    outputs = [(i + 1, o) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    assert outputs, f'{path.name} has no committed output: run python tools/check_outputs.py --update {path.relative_to(REPO)}'
    bad = re.compile(r'<ipython-input-|Warning: |/work\b|/tmp\b|/home/|/root\b|\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d|\b\d\d:\d\d:\d\d\b| at 0x[0-9a-f]+|\d+(\.\d+)?it/s|\r')
    for cell, o in outputs:
        assert o['output_type'] != 'error', f'{path.name} cell {cell}: a committed error'
        texts = [o.get('text', '')] + [v for k, v in o.get('data', {}).items() if k.startswith('text/')]
        for t in texts:
            t = ''.join(t) if isinstance(t, list) else t
            m = bad.search(t)
            assert m is None, f'{path.name} cell {cell}: machine-dependent output {m.group(0)!r} in {t[max(0, m.start() - 60):m.end() + 60]!r}'
        images = [k for k in o.get('data', {}) if k.startswith('image/')]
        assert all(k == 'image/png' for k in images), f'{path.name} cell {cell}: {images} (PNG figures only)'
    from execnb.nbio import read_nb, nb2str
    from fastcore.xtras import working_directory
    from nbdev.clean import _nbdev_clean
    with working_directory(REPO):
        clean = read_nb(path); _nbdev_clean(clean)
    assert nb2str(clean) == path.read_text(encoding='utf-8'), f'{path.name}: nbdev_clean would change it (run nbdev_clean)'


def test_printed_decimals_may_differ_in_their_last_digits_only():
    tool = _tool()
    line = "{'outer_tm_pixels': %s, 'loss_tm': 37.7566, 'steps': %s}"
    assert tool.compare_outputs([_stream(line % ('1.1612', '20') + '\n')], [_stream(line % ('1.1613', '20') + '\n')]) is None
    assert 'line 1 differs' in tool.compare_outputs([_stream(line % ('1.1612', '20') + '\n')], [_stream(line % ('1.1700', '20') + '\n')])
    grad = "{'grad_norm_updated': 0.00536, 'grad_norm_frozen': %s}\n"       # what a Zen 4 printed against the committed output
    assert tool.compare_outputs([_stream(grad % '0.02531')], [_stream(grad % '0.02535')]) is None
    assert 'line 1 differs' in tool.compare_outputs([_stream(grad % '0.02531')], [_stream(grad % '0.02560')])
    assert 'line 1 differs' in tool.compare_outputs([_stream(line % ('1.1612', '20') + '\n')], [_stream(line % ('1.1612', '21') + '\n')])
    assert tool.compare_outputs([_stream('acc 2.5e-03\n')], [_stream('acc 2.5e-03\n')]) is None
    assert 'differs' in tool.compare_outputs([_stream('accuracy 45.1 %\n')], [_stream('accuracy 47.3 %\n')])
