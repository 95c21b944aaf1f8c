"""Build the docs site from nbs/ offline: stage the pages, generate the API reference and the nav, run mkdocs.

    python tools/docs/build.py [--out _site] [--keep-stage DIR]

The site's pages are the notebooks and markdown of nbs/ (index.ipynb is the front page), the reproduced tables and
figures of figures/quick/, and one API page per module of dd_companion (its `__all__`, from the docstrings, by
mkdocstrings). Notebooks are rendered with their committed outputs and never executed. The pages are staged in a
temporary folder laid out as the site will be (nbs/X -> X, figures/quick/X -> figures/quick/X), and every relative
link of a staged page is rewritten to point at the staged copy of its target; a target that is not part of the site
but exists in the repository becomes a link to the repository on GitHub (settings.ini `git_url`, `branch`).
"""
from __future__ import annotations
import argparse, ast, configparser, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# repository folder -> folder in the site (longest prefix first)
SITE_MAP = [('figures/quick', 'figures/quick'), ('nbs', '')]
SKIP_MODULES = {'__init__', '_modidx'}
MD_LINK = re.compile(r'(!?\[(?:[^\[\]]|\[[^\]]*\])*\]\()(<[^>]+>|[^)\s]+)((?:\s+"[^"]*")?\))')
HTML_ATTR = re.compile(r'''(\b(?:src|href)=)(["'])([^"']+)\2''')


def settings() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini', encoding='utf-8')
    return cp['DEFAULT']


def site_path(repo_rel: str) -> str | None:
    "Where a repository path lies in the site, or None when the site does not contain it."
    for src, dst in SITE_MAP:
        if repo_rel == src or repo_rel.startswith(src + '/'):
            rest = repo_rel[len(src):].lstrip('/')
            return f'{dst}/{rest}'.strip('/') if dst else rest
    return None


def source_files() -> list[tuple[Path, str]]:
    "(repository file, its path in the site) of every page and asset that the site is built from."
    out = []
    nbs = ROOT / 'nbs'
    for p in sorted(nbs.rglob('*')):
        rel = p.relative_to(ROOT).as_posix()
        if not p.is_file() or '.ipynb_checkpoints' in rel or p.name.startswith('.'): continue
        if p.suffix in ('.ipynb', '.md', '.png', '.jpg', '.svg', '.gif'): out.append((p, site_path(rel)))
    for p in sorted((ROOT / 'figures' / 'quick').rglob('*')):
        rel = p.relative_to(ROOT).as_posix()
        if not p.is_file() or '/.' in '/' + rel: continue
        if p.suffix in ('.md', '.png', '.csv', '.json', '.svg'): out.append((p, site_path(rel)))
    return out


def rewrite_target(target: str, src: Path, dst_rel: str, github: str, notebook: bool) -> str:
    "A relative link of the page `src` (staged at `dst_rel`) rewritten for the site."
    bare = target[1:-1] if target.startswith('<') else target
    if re.match(r'^[a-z][a-z0-9+.-]*:', bare, re.I) or bare.startswith(('#', '/')) or not bare: return target
    path, frag = (bare.split('#', 1) + [''])[:2]
    frag = '#' + frag if frag else ''
    resolved = (src.parent / path).resolve()
    try: repo_rel = resolved.relative_to(ROOT).as_posix()
    except ValueError: return target                     # outside the repository: left for the link check to report
    in_site = site_path(repo_rel)
    if in_site is None:
        if resolved.exists(): return f'{github}/{repo_rel}{frag}'
        return target                                    # missing: left for the link check to report
    new = os.path.relpath(in_site, os.path.dirname(dst_rel) or '.')
    if notebook and new.endswith('.ipynb'): new = new[:-len('.ipynb')] + '.html'   # nbconvert does not rewrite links
    if notebook and new.endswith('.md'): new = new[:-len('.md')] + '.html'
    return new + frag


def rewrite_text(text: str, src: Path, dst_rel: str, github: str, notebook: bool) -> str:
    f = lambda t: rewrite_target(t, src, dst_rel, github, notebook)
    text = MD_LINK.sub(lambda m: m.group(1) + f(m.group(2)) + m.group(3), text)
    return HTML_ATTR.sub(lambda m: m.group(1) + m.group(2) + f(m.group(3)) + m.group(2), text)


DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def nbdev_cell(cell: dict) -> dict | None:
    """A code cell as nbdev's docs show it: None for a hidden one (`#| hide`, or nothing but directives and no
    output), the source without its `#|` directive lines, no source under `#| echo: false`, no outputs under
    `#| output: false`."""
    source = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
    lines = source.splitlines()
    directives = {m.group(1): m.group(2).lower() for m in map(DIRECTIVE.match, lines) if m}
    if 'hide' in directives: return None
    cell = dict(cell, source='\n'.join(l for l in lines if not DIRECTIVE.match(l)))
    if directives.get('echo') == 'false': cell['source'] = ''
    if directives.get('output') == 'false' or 'hide_output' in directives: cell['outputs'] = []
    if not cell['source'].strip() and not cell.get('outputs'): return None
    return cell


def stage_page(src: Path, dst: Path, dst_rel: str, github: str):
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == '.md':
        dst.write_text(rewrite_text(src.read_text(encoding='utf-8'), src, dst_rel, github, False), encoding='utf-8')
    elif src.suffix == '.ipynb':
        nb = json.loads(src.read_text(encoding='utf-8'))
        cells = []
        for cell in nb.get('cells', []):
            s = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
            if cell.get('cell_type') == 'markdown':
                cell['source'] = rewrite_text(s, src, dst_rel, github, True)
            elif cell.get('cell_type') == 'code':
                cell = nbdev_cell(cell)
                if cell is None: continue
            cells.append(cell)
        nb['cells'] = cells
        dst.write_text(json.dumps(nb, ensure_ascii=False, indent=1), encoding='utf-8')
    else:
        shutil.copyfile(src, dst)


def module_all(path: Path) -> tuple[str, list[str], dict]:
    """The docstring and `__all__` of a module, read without importing it, and the exported names bound by a tuple
    assignment (`A, B = …`), which mkdocstrings does not list: name -> the statement's source."""
    text = path.read_text(encoding='utf-8')
    tree = ast.parse(text)
    names, unpacked = [], {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '__all__' for t in node.targets):
            names = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Tuple) for t in node.targets):
            for target in node.targets:
                for elt in getattr(target, 'elts', []):
                    if isinstance(elt, ast.Name): unpacked[elt.id] = ast.get_source_segment(text, node)
    return ast.get_docstring(tree) or '', names, {n: s for n, s in unpacked.items() if n in names}


def unpacked_section(lib: str, mod: str, unpacked: dict) -> list[str]:
    "Raw HTML entries (with the anchors mkdocstrings would give them) for the names of tuple assignments."
    import html
    out, done = ['', '<h2>Other exported names</h2>', ''], set()
    for name, src in unpacked.items():
        if src in done: continue
        done.add(src)
        group = [n for n, s in unpacked.items() if s == src]
        anchors = ''.join(f'<span id="{lib}.{mod}.{n}"></span>' for n in group)
        out += [f'<h3>{anchors}<code>{", ".join(group)}</code></h3>', '',
                f'<pre><code>{html.escape(src)}</code></pre>', '']
    return out


def notebook_of(path: Path) -> str | None:
    m = re.search(r'File to edit: \.\./nbs/([^\s]+\.ipynb)', path.read_text(encoding='utf-8'))
    return m.group(1) if m else None


def api_pages(stage: Path, lib: str) -> list[dict]:
    "One page per module (its `__all__` rendered by mkdocstrings), and the index of the API reference."
    api = stage / 'api'; api.mkdir(parents=True, exist_ok=True)
    mods = []
    for p in sorted((ROOT / lib).glob('*.py'), key=lambda p: (notebook_of(p) or '~', p.stem)):   # in reading order
        if p.stem in SKIP_MODULES: continue
        doc, names, unpacked = module_all(p)
        nb = notebook_of(p)
        mods.append((p.stem, doc, nb))
        lines = [f'# {lib}.{p.stem}', '']            # the module docstring comes with mkdocstrings' entry
        if nb: lines += [f'Written in the notebook [{Path(nb).stem}](../{nb}), where it is explained and tested.', '']
        members = [n for n in names if n not in unpacked]
        if members:
            lines += [f'::: {lib}.{p.stem}', '    options:', '      members:'] + [f'        - {n}' for n in members]
        else: lines += [doc, '']
        if unpacked: lines += unpacked_section(lib, p.stem, unpacked)
        if not names: lines += ['This module exports no names.']
        (api / f'{p.stem}.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    rows = [f'| [`{lib}.{m}`]({m}.md) | {doc.splitlines()[0] if doc else ""} |' for m, doc, _ in mods]
    (api / 'index.md').write_text('\n'.join([
        '# API reference', '',
        f'Every module of `{lib}`, with the names it exports (`__all__`) and their docstrings. Each module is written '
        'in a notebook of the tutorial, linked from its page.', '', '| module | what it holds |', '|---|---|', *rows, '']),
        encoding='utf-8')
    return [{'API reference': 'api/index.md'}] + [{f'{lib}.{m}': f'api/{m}.md'} for m, _, _ in mods]


LINK_IN_MD = re.compile(r'\[([^\]]+)\]\(([^)\s]+)\)')


def nav_from_index(index: Path) -> list:
    "The site's nav in the index's reading order: its '## ' sections, each grouped by its bold lines."
    nb = json.loads(index.read_text(encoding='utf-8'))
    sections, section, group = [], None, None
    seen = set()
    for cell in nb['cells']:
        if cell['cell_type'] != 'markdown': continue
        for line in ''.join(cell['source']).splitlines():
            if line.startswith('## '):
                section = {'title': line[3:].strip(), 'groups': []}; sections.append(section); group = None
            elif re.fullmatch(r'\*\*[^*]+\*\*', line.strip()) and section is not None:
                group = {'title': line.strip().strip('*'), 'pages': []}; section['groups'].append(group)
            elif line.lstrip().startswith('- ') and section is not None:
                for title, target in LINK_IN_MD.findall(line):
                    if not target.endswith('.ipynb') or target in seen: continue
                    seen.add(target)
                    if group is None:
                        group = {'title': None, 'pages': []}; section['groups'].append(group)
                    group['pages'].append({title: target})
    nav = []
    for s in sections:
        groups = [g for g in s['groups'] if g['pages']]
        if not groups: continue
        items = []
        for g in groups:
            items += g['pages'] if g['title'] is None else [{g['title']: g['pages']}]
        nav.append({s['title'].replace('Reading order: the library notebooks', 'Library notebooks'): items})
    return nav


def write_config(stage: Path, site: Path, nav: list, s):
    base = (HERE / 'mkdocs.yml').read_text(encoding='utf-8')
    extra = {
        'docs_dir': str(stage / 'docs'), 'site_dir': str(site), 'nav': nav,
        'repo_url': s.get('git_url', ''), 'edit_uri': '',
        'copyright': s.get('copyright', ''),
    }
    # JSON is YAML: the generated keys are appended to the base file
    text = base + '\n# generated by tools/docs/build.py\n' + ''.join(f'{k}: {json.dumps(v, ensure_ascii=False)}\n' for k, v in extra.items())
    text = text.replace('      handlers:\n        python:\n', f'      handlers:\n        python:\n          paths: [{json.dumps(str(ROOT))}]\n', 1)
    cfg = stage / 'mkdocs.yml'; cfg.write_text(text, encoding='utf-8')
    return cfg


MATHJAX_PLACEHOLDER = 'MATHJAX_ROOT'     # custom_mathjax_url of tools/docs/mkdocs.yml


def local_mathjax(site: Path):
    """Copy MathJax 2.7 (shipped by the PyPI package jupyter-server-mathjax) into the site and point every notebook
    page at it by a relative path, so that the formulas render without a network."""
    import jupyter_server_mathjax
    static = Path(jupyter_server_mathjax.__file__).parent / 'static'
    dest = site / 'assets' / 'mathjax'
    shutil.copytree(static, dest, ignore=shutil.ignore_patterns('*.md', 'test*'))
    for page in site.rglob('*.html'):
        text = page.read_text(encoding='utf-8')
        if MATHJAX_PLACEHOLDER not in text: continue
        rel = os.path.relpath(dest, page.parent).replace(os.sep, '/')
        page.write_text(text.replace(MATHJAX_PLACEHOLDER, rel), encoding='utf-8')


def build(out: Path, keep_stage: Path | None = None) -> Path:
    s = settings()
    github = f"{s.get('git_url', '').rstrip('/')}/blob/{s.get('branch', 'main')}"
    stage = Path(keep_stage) if keep_stage else Path(tempfile.mkdtemp(prefix='dd-docs-'))
    if (stage / 'docs').exists(): shutil.rmtree(stage / 'docs')
    docs = stage / 'docs'
    try:
        for src, rel in source_files():
            stage_page(src, docs / rel, rel, github)
        nav = [{'Home': 'index.ipynb'}, {'Method specification': 'methods.md'}]
        nav += nav_from_index(ROOT / 'nbs' / 'index.ipynb')
        nav += [{'Reproduced tables and figures': 'figures/quick/REPRODUCE.md'}]
        nav += [{'API reference': api_pages(docs, s.get('lib_name', 'dd_companion'))}]
        out = out.resolve()
        if out.exists(): shutil.rmtree(out)
        cfg = write_config(stage, out, nav, s)
        env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1', 'DISABLE_MKDOCS_2_WARNING': 'true'}   # mkdocs-material's banner
        subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-q', '-f', str(cfg)], check=True, cwd=stage, env=env)
        local_mathjax(out)
    finally:
        if keep_stage is None: shutil.rmtree(stage, ignore_errors=True)
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT / '_site'), help='folder to build the site into (replaced)')
    ap.add_argument('--keep-stage', default=None, help='stage the pages in this folder and keep it (for debugging)')
    a = ap.parse_args()
    print(build(Path(a.out), Path(a.keep_stage) if a.keep_stage else None))
