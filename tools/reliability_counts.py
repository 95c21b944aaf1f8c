"""Count the project's reliability cases from its own tests (issue #20): bad inputs tried / clear errors, faults
injected / survived with nothing lost.

    python tools/reliability_counts.py                   # run every test marked bad_input or fault; print the table
    python tools/reliability_counts.py --collect-only    # only count the cases (no run; ~20 s)
    python tools/reliability_counts.py --update-readme   # run, then replace the table in tests/README.md
    python tools/reliability_counts.py -- -k manifest    # anything after -- goes to pytest

A case is one collected test item — each parametrised case counts on its own. A test carries the marker `bad_input`
(a bad argument, option, parameter or folder must give a clear error before any work) or `fault` (a kill, a full
disk, a damaged or hostile file, a failing notebook, a concurrent run must be survived with nothing lost); the
markers are registered in tests/conftest.py, which also marks every test of test_resume.py a fault. A case passes
when its test passes — the test asserts the clear error or that nothing was lost; skipped cases (a check that
cannot be made on this machine, e.g. file permissions as root) are counted apart. Exit status: pytest's.
"""
from __future__ import annotations
import argparse, os, re, sys, time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {'bad_input': 'bad inputs (clear error before any work)', 'fault': 'faults (survived, nothing lost)'}
README = REPO / 'tests' / 'README.md'
BEGIN, END = '<!-- reliability-counts: begin -->', '<!-- reliability-counts: end -->'


class Tally:
    "A pytest plugin: the selected items with their categories, and each item's outcome."
    def __init__(self):
        self.items, self.outcome = {}, {}

    def pytest_collection_finish(self, session):
        for it in session.items:
            cats = [c for c in CATEGORIES if it.get_closest_marker(c) is not None]
            if cats: self.items[it.nodeid] = (it.path.name, cats)

    def pytest_runtest_logreport(self, report):
        prev = self.outcome.get(report.nodeid)
        if report.failed: self.outcome[report.nodeid] = 'failed'            # setup, call or teardown
        elif report.skipped and prev != 'failed': self.outcome[report.nodeid] = 'skipped'
        elif report.when == 'call' and report.passed and prev is None: self.outcome[report.nodeid] = 'passed'


def tables(t: Tally, ran: bool) -> str:
    "The markdown tables: per category, then per category and file; failed cases listed."
    per, per_file = defaultdict(Counter), defaultdict(Counter)
    for nodeid, (file, cats) in t.items.items():
        o = t.outcome.get(nodeid, 'not run') if ran else 'collected'
        for c in cats: per[c][o] += 1; per[c]['cases'] += 1; per_file[(c, file)][o] += 1; per_file[(c, file)]['cases'] += 1
    head = ['| category | cases tried | passed (clear error / survived) | failed | skipped |', '|---|---:|---:|---:|---:|']
    row = lambda name, n: (f"| {name} | {n['cases'] - n['skipped'] if ran else n['cases']} | "
                           + (f"{n['passed']} | {n['failed'] + n['not run']} | {n['skipped']} |" if ran else '— | — | — |'))
    lines = head + [row(CATEGORIES[c], per[c]) for c in CATEGORIES]
    lines += ['', '| category | test file | cases tried | passed | failed | skipped |', '|---|---|---:|---:|---:|---:|']
    for (c, file), n in sorted(per_file.items()):
        lines.append(f"| {c} | `{file}` | {n['cases'] - n['skipped'] if ran else n['cases']} | "
                     + (f"{n['passed']} | {n['failed'] + n['not run']} | {n['skipped']} |" if ran else '— | — | — |'))
    failed = [k for k, o in t.outcome.items() if o == 'failed' and k in t.items]
    if failed: lines += ['', 'Failed cases:', *[f'- `{k}`' for k in failed]]
    return '\n'.join(lines)


def update_readme(text: str):
    doc = README.read_text()
    block = f'{BEGIN}\n{text}\n{END}'
    if BEGIN in doc and END in doc: doc = re.sub(re.escape(BEGIN) + r'.*?' + re.escape(END), lambda m: block, doc, flags=re.S)
    else: doc = doc.rstrip('\n') + f'\n\n{block}\n'
    README.write_text(doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--collect-only', action='store_true', help='count the cases without running them')
    ap.add_argument('--update-readme', action='store_true', help=f'replace the table between the markers in {README.relative_to(REPO)}')
    ap.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --)')
    a = ap.parse_args(argv)
    for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(k, '1')
    os.chdir(REPO)
    import pytest
    t, t0 = Tally(), time.time()
    args = [str(REPO / 'tests'), '-m', ' or '.join(CATEGORIES), '-q', '-p', 'no:cacheprovider', *a.pytest_args]
    rc = pytest.main(args + (['--collect-only', '-qq'] if a.collect_only else []), plugins=[t])
    text = tables(t, ran=not a.collect_only)
    stamp = (f"{'collected' if a.collect_only else 'ran'} in {time.time() - t0:.0f} s by `python tools/reliability_counts.py"
             f"{' --collect-only' if a.collect_only else ''}`")
    print(f'\n{text}\n\n({stamp})')
    if a.update_readme and not a.collect_only: update_readme(f'{text}\n\n<sub>{stamp}, {time.strftime("%Y-%m-%d")}</sub>')
    return int(rc)


if __name__ == '__main__':
    sys.exit(main())
