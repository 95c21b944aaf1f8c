"""The tutorial as readers see it (issue 18): the front page, the method specification and the docs site.

- `nbs/index.ipynb` and README.md give the same two commands, and the index links every notebook in reading order;
- `nbs/methods.md` resolves every link, and its table of OPEN points names the options with the values the
  methods really use;
- no file of the repository points at a file that lives outside it;
- `bash tools/docs.sh` builds the site; every internal link and image of it resolves; the API reference holds every
  exported name; headless Chromium loads the front page, a notebook page and the reproduced figures page.
"""
from __future__ import annotations
import ast, html.parser, json, os, re, shutil, subprocess, sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / 'nbs'
INDEX = NBS / 'index.ipynb'
METHODS = NBS / 'methods.md'
LIB = 'dd_companion'
MD_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((<[^>]+>|[^)\s]+)(?:\s+"[^"]*")?\)')


def notebook_markdown(path: Path) -> str:
    nb = json.loads(path.read_text(encoding='utf-8'))
    return '\n\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')


def section(text: str, heading: str) -> str:
    "The text of a '## heading' section, up to the next '## ' heading."
    m = re.search(rf'^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)', text, re.M | re.S)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def first_bash_block(text: str) -> list[str]:
    m = re.search(r'^```bash\n(.*?)^```', text, re.M | re.S)
    assert m, 'no ```bash block'
    return [l.rstrip() for l in m.group(1).splitlines() if l.strip()]


def relative_links(text: str) -> list[str]:
    out = []
    for t in MD_LINK.findall(text):
        t = t.strip('<>')
        if re.match(r'^[a-z][a-z0-9+.-]*:', t, re.I) or t.startswith('#'): continue
        out.append(t.split('#')[0])
    return out


def library_notebooks() -> list[Path]:
    return sorted(p for p in NBS.glob('*.ipynb') if p.name != 'index.ipynb')


def experiment_notebooks() -> list[Path]:
    return sorted((NBS / 'experiments').glob('*.ipynb'))


# --- the front page -----------------------------------------------------------------------------------------------
def test_readme_and_index_give_the_same_two_commands():
    readme = first_bash_block(section((REPO / 'README.md').read_text(encoding='utf-8'), 'The two commands'))
    index = first_bash_block(section(notebook_markdown(INDEX), 'The two commands'))
    assert len(readme) == 2 and all(l.startswith('bash ') for l in readme), readme
    assert index == readme


def test_index_links_every_notebook_in_reading_order():
    text = notebook_markdown(INDEX)
    links = relative_links(text)
    for target in links:
        assert (NBS / target).is_file(), f'the index links {target!r}, which is not a file of nbs/'
    linked = [(NBS / t).resolve() for t in links]
    missing = [p.relative_to(NBS).as_posix() for p in library_notebooks() + experiment_notebooks() if p.resolve() not in linked]
    assert not missing, f'notebooks not linked from nbs/index.ipynb: {missing}'
    assert METHODS.resolve() in linked, 'the index does not link the method specification'
    lib = [p for p in linked if p.parent == NBS.resolve() and re.match(r'\d\d_', p.name)]
    first = list(dict.fromkeys(lib))
    assert first == sorted(first, key=lambda p: p.name), 'the library notebooks are not linked in reading order (00 … 17)'
    assert re.search(r'!\[[^\]]+\]\(\.\./figures/quick/[^)]+\.png\)', text), 'the index shows no figure of figures/quick/'


def test_index_runs_nothing():
    "nbdev_test executes the index: it has no code, and nbdev_export gets nothing from it."
    nb = json.loads(INDEX.read_text(encoding='utf-8'))
    assert [c for c in nb['cells'] if c['cell_type'] == 'code'] == []
    assert 'default_exp' not in INDEX.read_text(encoding='utf-8')


# --- the method specification -------------------------------------------------------------------------------------
SPEC_SECTIONS = ['Expert trajectories', 'Trajectory matching (MTT)', 'DATM', 'DATM-CLR', 'SelMatch', 'Evaluation protocols',
                 'Reported numbers', 'OPEN points']
SOURCE_TAGS = {'MTT-code', 'DATM-code', 'SelMatch-code', 'paper', '2nd'}


def test_method_specification_sections_links_and_tags():
    text = METHODS.read_text(encoding='utf-8')
    headings = re.findall(r'^## (.*)$', text, re.M)
    for s in SPEC_SECTIONS:
        assert any(s in h for h in headings), f'methods.md has no section on {s!r}: {headings}'
    for target in relative_links(text):
        assert (NBS / target).exists(), f'methods.md links {target!r}, which does not exist'
    tags = set(re.findall(r'\[((?:MTT|DATM|SelMatch)-code|paper|2nd)\]', text))
    assert tags == SOURCE_TAGS, f'source tags used: {sorted(tags)}'
    for t in re.findall(r'\[(?=[^\]]*[A-Za-z])([\w-]+(?:, [\w-]+)*)\](?![(:])', text):   # every [tag], [tag, tag]
        assert all(part in SOURCE_TAGS for part in t.split(', ')), f'unknown source tag [{t}]'


def open_table_rows(text: str) -> list[list[str]]:
    body = section(text, next(h for h in re.findall(r'^## (.*)$', text, re.M) if 'OPEN points' in h))
    rows = [[c.strip() for c in l.strip().strip('|').split('|')] for l in body.splitlines() if l.startswith('| ')]
    assert rows[0] == ['OPEN point', "this project's choice", 'option'], rows[0]
    return rows[1:]


def test_open_table_states_the_options_the_methods_use():
    "Each `option=value` of the OPEN table is the value of that option in the method the row is about."
    from dataclasses import fields
    from dd_companion.config import DistillConfig
    from dd_companion.methods import distill_config
    names = {f.name for f in fields(DistillConfig)}
    method_of = {'DATM-CLR': 'datm-clr', 'SelMatch': 'selmatch', 'DATM': 'datm', 'MTT': 'mtt', 'MTT/DATM': 'datm'}
    rows = open_table_rows(METHODS.read_text(encoding='utf-8'))
    assert len(rows) >= 15
    checked = 0
    for point, choice, option in rows:
        assert point and choice and option, (point, choice, option)
        m = re.match(r'`(\w+)=([^`]+)`', option)
        if not m or m.group(1) not in names: continue
        paper = point.split(':')[0].split(' at ')[0]
        cfg = distill_config('quick', method_of[paper])
        assert repr(getattr(cfg, m.group(1))) == repr(ast.literal_eval(m.group(2))), \
            f'{point}: methods.md says {m.group(0)}, {method_of[paper]} uses {m.group(1)}={getattr(cfg, m.group(1))!r}'
        checked += 1
    assert checked >= 10, f'only {checked} options checked'


# names of files that live outside the repository (spelled in parts so that this file does not name them itself)
OUTSIDE = ['METHODS' + '.md', 'datm-clr-' + 'abstract.txt', 'selmatch-' + 'abstract.txt', '../' + 'shared', 'shared/' + 'papers']


def test_no_reference_to_files_outside_the_repository():
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    hits = []
    for f in files:
        p = REPO / f
        if p.suffix not in ('.md', '.ipynb', '.py', '.sh', '.ini', '.toml', '.txt', '.yml', '.yaml') or not p.is_file(): continue
        text = p.read_text(encoding='utf-8', errors='replace')
        hits += [f'{f}: {name}' for name in OUTSIDE if name in text]
    assert not hits, 'references to files that are not in the repository:\n' + '\n'.join(hits)


# --- the docs site --------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / '_site'
    env = {**os.environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(['bash', str(REPO / 'tools' / 'docs.sh'), str(out)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f'tools/docs.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}'
    assert (out / 'index.html').is_file()
    return out


class Refs(html.parser.HTMLParser):
    "Every href/src of a page, the <img> sources, the <title> and the ids."
    def __init__(self):
        super().__init__(); self.refs, self.imgs, self.ids, self.title, self._in_title = [], [], set(), '', False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        for k in ('href', 'src'):
            if a.get(k) is not None and not (tag == 'a' and k == 'href' and a.get('class') == 'md-skip'): self.refs.append(a[k])
        if tag == 'img': self.imgs.append(a.get('src', ''))
        if tag == 'title': self._in_title = True
    def handle_endtag(self, tag):
        if tag == 'title': self._in_title = False
    def handle_data(self, data):
        if self._in_title: self.title += data


def parse(text: str) -> Refs:
    p = Refs(); p.feed(text); return p


def internal(ref: str) -> str | None:
    "The path part of an internal reference, or None for an external one, a data: URI or a same-page anchor."
    u = urlsplit(ref)
    if u.scheme or u.netloc or ref.startswith('#') or not u.path: return None
    return unquote(u.path)


def test_site_has_every_page(site):
    expected = ['index.html', 'methods.html', 'figures/quick/REPRODUCE.html', 'api/index.html']
    expected += [p.relative_to(NBS).with_suffix('.html').as_posix() for p in library_notebooks() + experiment_notebooks()]
    missing = [e for e in expected if not (site / e).is_file()]
    assert not missing, f'pages missing from the site: {missing}'
    for png in (REPO / 'figures' / 'quick').glob('*.png'):
        assert (site / 'figures' / 'quick' / png.name).read_bytes() == png.read_bytes()


def test_site_api_reference_holds_every_exported_name(site):
    for py in sorted((REPO / LIB).glob('*.py')):
        if py.stem in ('__init__', '_modidx'): continue
        tree = ast.parse(py.read_text(encoding='utf-8'))
        names = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                      and any(getattr(t, 'id', '') == '__all__' for t in n.targets)), [])
        page = site / 'api' / f'{py.stem}.html'
        assert page.is_file(), f'no API page for {LIB}.{py.stem}'
        ids = parse(page.read_text(encoding='utf-8')).ids
        missing = [n for n in names if f'{LIB}.{py.stem}.{n}' not in ids]
        assert not missing, f'{LIB}.{py.stem}: exported names without an entry in the API reference: {missing}'
    text = (site / 'api' / 'contrastive.html').read_text(encoding='utf-8')
    assert 'Supervised contrastive loss' in text and 'supcon_loss' in text        # a docstring, rendered


def test_site_links_and_images_resolve(site):
    broken, pages = [], sorted(site.rglob('*.html'))
    assert len(pages) > 40
    for page in pages:
        p = parse(page.read_text(encoding='utf-8'))
        for ref in p.refs:
            if not ref.strip():
                broken.append(f'{page.relative_to(site)}: an empty href/src'); continue
            path = internal(ref)
            if path is None: continue
            target = (site / path.lstrip('/') if path.startswith('/') else page.parent / path).resolve()   # '/': the site root
            if path.endswith('/'): target = target / 'index.html'
            if not target.exists() or site.resolve() not in (target, *target.parents):
                broken.append(f'{page.relative_to(site)}: {ref}')
    assert not broken, f'{len(broken)} internal links or images do not resolve:\n' + '\n'.join(broken[:40])


def chromium() -> str:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name): return shutil.which(name)
    if os.environ.get('CI'): pytest.fail('no chromium on this machine: .ci/run installs it (apt-get install chromium)')
    pytest.skip('no chromium on this machine (apt-get install chromium)')


def rendered_dom(browser: str, page: Path, profile: Path) -> str:
    "The DOM of `page` after headless Chromium has loaded it and run its scripts."
    r = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                        f'--user-data-dir={profile}', '--virtual-time-budget=5000', '--dump-dom', page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '<html' in r.stdout, f'chromium failed on {page}: {r.stderr[-2000:]}'
    return r.stdout


def image_outputs(nb_path: Path) -> int:
    "How many PNG outputs a notebook page shows (the cells nbdev hides show none)."
    sys.path.insert(0, str(REPO / 'tools' / 'docs'))
    try: from build import nbdev_cell
    finally: sys.path.pop(0)
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    cells = [nbdev_cell(c) for c in nb['cells'] if c['cell_type'] == 'code']
    return sum('image/png' in o.get('data', {}) for c in cells if c for o in c.get('outputs', []))


def assert_images_load(page: Path, dom: Refs, site: Path, at_least: int):
    files = [s for s in dom.imgs if internal(s)]
    assert len(files) >= at_least, f'{page.name}: {len(files)} <img> of files, expected at least {at_least}'
    for src in files:
        f = (page.parent / internal(src)).resolve()
        assert f.is_file() and f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', f'{page.name}: image {src} is not a PNG file'


def test_site_in_a_headless_browser(site, tmp_path):
    browser = chromium()
    # the front page: its title, its figure
    front = parse(rendered_dom(browser, site / 'index.html', tmp_path / 'profile'))
    assert front.title.strip() == 'dd_companion'
    assert any(s.endswith('figures/quick/datmclr_table1_main.png') for s in front.imgs), front.imgs
    assert_images_load(site / 'index.html', front, site, 1)
    # a notebook page: the library notebook with the most figures (every one of its PNG outputs is an <img>)
    nb = max(library_notebooks(), key=lambda p: (image_outputs(p), p.name == '05_buffers.ipynb'))
    page = site / nb.with_suffix('.html').name
    dom_text = rendered_dom(browser, page, tmp_path / 'profile')
    dom = parse(dom_text)
    assert dom.title.strip() == f'{nb.stem} - dd_companion', dom.title
    h1 = re.search(r'^# (.+)$', notebook_markdown(nb), re.M).group(1)
    assert h1.split(' — ')[0] in dom_text, 'the notebook page does not show the notebook'
    inline = [s for s in dom.imgs if s.startswith('data:image/png')]
    assert len(inline) + len([s for s in dom.imgs if internal(s)]) >= image_outputs(nb), \
        f'{page.name}: {len(inline)} figures shown, the notebook has {image_outputs(nb)}'
    # the reproduced tables and figures: every PNG the page names is an <img> that loads
    repro = site / 'figures' / 'quick' / 'REPRODUCE.html'
    named = set(re.findall(r'!\[[^\]]*\]\(([^)]+\.png)\)', (REPO / 'figures' / 'quick' / 'REPRODUCE.md').read_text(encoding='utf-8')))
    dom = parse(rendered_dom(browser, repro, tmp_path / 'profile'))
    assert named and named <= {internal(s) for s in dom.imgs}, sorted(named - {internal(s) for s in dom.imgs})
    assert_images_load(repro, dom, site, len(named))
