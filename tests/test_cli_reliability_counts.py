"""tools/reliability_counts.py: the counts table of tests/README.md (issue #20) — one case per collected item, a
failure in any phase counts as failed, skipped cases apart, and --update-readme replaces only its own block."""
from __future__ import annotations
import importlib.util
from pathlib import Path
from types import SimpleNamespace

from conftest import REPO

spec = importlib.util.spec_from_file_location('reliability_counts', REPO / 'tools' / 'reliability_counts.py')
rc = importlib.util.module_from_spec(spec); spec.loader.exec_module(rc)


def report(nodeid, when, outcome):
    return SimpleNamespace(nodeid=nodeid, when=when, failed=outcome == 'failed', skipped=outcome == 'skipped',
                           passed=outcome == 'passed')


def test_counts_per_category_and_file():
    t = rc.Tally()
    t.items = {'a.py::x[1]': ('a.py', ['bad_input']), 'a.py::x[2]': ('a.py', ['bad_input']),
               'b.py::y': ('b.py', ['fault']), 'b.py::z': ('b.py', ['fault']), 'b.py::w': ('b.py', ['bad_input', 'fault'])}
    for r in [report('a.py::x[1]', 'setup', 'passed'), report('a.py::x[1]', 'call', 'passed'), report('a.py::x[1]', 'teardown', 'passed'),
              report('a.py::x[2]', 'setup', 'skipped'),
              report('b.py::y', 'call', 'passed'), report('b.py::y', 'teardown', 'failed'),      # a teardown error is a failure
              report('b.py::z', 'call', 'failed'), report('b.py::w', 'call', 'passed')]:
        t.pytest_runtest_logreport(r)
    lines = rc.tables(t, ran=True).splitlines()
    assert lines[2] == '| bad inputs (clear error before any work) | 2 | 2 | 0 | 1 |', lines
    assert lines[3] == '| faults (survived, nothing lost) | 3 | 1 | 2 | 0 |', lines
    assert '| bad_input | `a.py` | 1 | 1 | 0 | 1 |' in lines and '| fault | `b.py` | 3 | 1 | 2 | 0 |' in lines
    assert lines[-2:] == ['- `b.py::y`', '- `b.py::z`'], lines
    assert rc.tables(t, ran=False).splitlines()[2] == '| bad inputs (clear error before any work) | 3 | — | — | — |'


def test_update_readme_replaces_only_its_block(tmp_path, monkeypatch):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# tests\n\nbefore\n\n{rc.BEGIN}\nold table\n{rc.END}\n\nafter\n')
    monkeypatch.setattr(rc, 'README', readme)
    rc.update_readme('new table')
    assert readme.read_text() == f'# tests\n\nbefore\n\n{rc.BEGIN}\nnew table\n{rc.END}\n\nafter\n'
    readme.write_text('# tests\n'); rc.update_readme('t')
    assert readme.read_text() == f'# tests\n\n{rc.BEGIN}\nt\n{rc.END}\n'


def test_the_readme_holds_the_block_and_the_markers_are_registered():
    text = (REPO / 'tests' / 'README.md').read_text()
    assert rc.BEGIN in text and rc.END in text and 'python tools/reliability_counts.py' in text
    import conftest
    assert set(conftest.MARKERS) == set(rc.CATEGORIES)
