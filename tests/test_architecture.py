"""Layers only point down: every module imports only modules that come before it in the reading order (the number of
its notebook), no import cycle exists, and importing the loop loads no method module. Lazy imports inside functions
count too: the walk reads every import statement of each exported module."""
from __future__ import annotations
import ast, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'dd_companion'


def module_order() -> dict:
    "{module: position} from the notebooks' `#| default_exp` lines, in file-name (reading) order."
    order = {}
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        m = re.search(r'#\|\s*default_exp\s+([\w.]+)', nb.read_text())
        assert m, f'{nb.name} exports no module'
        order[m.group(1)] = len(order)
    return order


def imports_of(path: Path) -> set:
    "Names of the dd_companion modules a module imports, anywhere in its source."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: base = node.module or ''
            elif (node.module or '').startswith('dd_companion'): base = node.module[len('dd_companion') + 1:]
            else: continue
            if base: out.add(base.split('.')[0])
            else: out.update(a.name for a in node.names)            # from . import x / from dd_companion import x
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('dd_companion.'))
    return out


def test_every_module_has_a_notebook_and_imports_only_earlier_layers():
    order = module_order()
    modules = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))
    assert sorted(order) == modules, f'modules without a notebook or notebooks without a module: {set(order) ^ set(modules)}'
    upward = [(m, dep) for m in modules for dep in imports_of(PKG / f'{m}.py')
              if dep in order and order[dep] >= order[m] and dep != m]
    assert upward == [], f'imports of a later (or the same) layer: {upward}'


def test_no_import_cycle():
    graph = {p.stem: imports_of(p) & {q.stem for q in PKG.glob('*.py')} for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    state = {}
    def visit(m, path):
        if state.get(m) == 'done': return
        assert state.get(m) != 'active', f'import cycle: {" -> ".join(path + [m])}'
        state[m] = 'active'
        for dep in graph.get(m, ()): visit(dep, path + [m])
        state[m] = 'done'
    for m in graph: visit(m, [])


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / 'x.py'
    src.write_text('from .core import a\nfrom dd_companion.data import b\nimport dd_companion.models\n'
                   'def f():\n    from dd_companion import methods\n    from . import selmatch\n')
    assert imports_of(src) == {'core', 'data', 'models', 'methods', 'selmatch'}


def test_importing_the_loop_loads_no_method_module():
    code = 'import sys, dd_companion.matching; print(" ".join(sorted(m for m in sys.modules if m.startswith("dd_companion."))))'
    loaded = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    later = {'dd_companion.' + m for m, i in module_order().items() if i > module_order()['matching']}
    assert not set(loaded) & later, f'importing dd_companion.matching loaded {sorted(set(loaded) & later)}'


def test_no_module_reaches_into_another_modules_private_names():
    offenders = []
    for p in PKG.glob('*.py'):
        if p.stem.startswith('_'): continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or '').startswith('dd_companion')):
                offenders += [f'{p.stem}: {a.name}' for a in node.names if a.name.startswith('_')]
    assert offenders == [], f'private names imported across modules: {offenders}'
