"""Convert between percent-format scripts and notebooks (a small authoring aid).

    python tools/nbpy.py py2nb src.py dst.ipynb   # `# %%` cells -> notebook (keeps ids and outputs of unchanged cells)
    python tools/nbpy.py nb2py src.ipynb dst.py   # notebook -> `# %%` cells (outputs not written)

Markdown cells are written `# %% [markdown]` followed by lines starting with `# `; a code cell may carry
tags: `# %% tags=["parameters"]`. Notebooks remain the source of truth; this only makes editing them in a
text editor painless. When `dst` exists, every cell whose source is unchanged keeps its id and outputs, and a
changed cell in place of an old one keeps the old id (so the `#cell-NNN` comments of the exported modules do not
move); its outputs are dropped — refresh them with `python tools/check_outputs.py --update dst.ipynb` (library
notebooks). Cells of a new notebook get ids from their position.
"""
import difflib, json, os, re, sys
import nbformat

HEADER = re.compile(r'^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$')

def py2nb(src, dst):
    cells, cur = [], None
    for line in open(src, encoding='utf-8').read().splitlines():
        m = HEADER.match(line)
        if m:
            cur = {'md': bool(m['md']), 'tags': json.loads(m['tags']) if m['tags'] else [], 'lines': []}
            cells.append(cur)
        elif cur is not None:
            cur['lines'].append(line)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    for i, c in enumerate(cells):
        lines = c['lines']
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if c['md']:
            text = '\n'.join(l[2:] if l.startswith('# ') else l.lstrip('#') for l in lines)
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell('\n'.join(lines))
        cell['id'] = f'cell-{i:03d}'
        if c['tags']: cell.metadata['tags'] = c['tags']
        nb.cells.append(cell)
    if os.path.exists(dst): _keep_old(nbformat.read(dst, as_version=4), nb)
    nbformat.write(nb, dst)

def _keep_old(old, nb):
    "Carry ids (and, for unchanged cells, outputs) from the notebook being replaced."
    sig = lambda c: (c.cell_type, c.source, tuple(c.get('metadata', {}).get('tags', [])))
    a, b = [sig(c) for c in old.cells], [sig(c) for c in nb.cells]
    taken = set()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        for k in range(j2 - j1):
            new = nb.cells[j1 + k]
            if op == 'equal' or (op == 'replace' and k < i2 - i1 and old.cells[i1 + k].cell_type == new.cell_type):
                prev = old.cells[i1 + k]
                new['id'] = prev.get('id', new['id'])
                if op == 'equal' and new.cell_type == 'code':
                    new['outputs'], new['execution_count'] = prev.get('outputs', []), prev.get('execution_count')
            taken.add(new['id'])
    used = set()
    for i, c in enumerate(nb.cells):                      # new cells: an id unused by any kept one
        if c['id'] in used or (c['id'] not in taken and any(c['id'] == x.get('id') for x in old.cells)):
            base, n = (nb.cells[i - 1]['id'] if i else 'cell'), 1
            base = re.match(r'cell-\d+', base).group(0) if re.match(r'cell-\d+', base) else base   # cell-034-2, not cell-034-1-1
            while f'{base}-{n}' in used or f'{base}-{n}' in taken: n += 1
            c['id'] = f'{base}-{n}'
        used.add(c['id'])

def nb2py(src, dst):
    nb = nbformat.read(src, as_version=4)
    out = []
    for c in nb.cells:
        tags = c.get('metadata', {}).get('tags')
        suffix = f' tags={json.dumps(tags)}' if tags else ''
        if c.cell_type == 'markdown':
            out.append('# %% [markdown]' + suffix)
            out += [('# ' + l) if l else '#' for l in c.source.splitlines()]
        else:
            out.append('# %%' + suffix)
            out += c.source.splitlines()
        out.append('')
    open(dst, 'w', encoding='utf-8').write('\n'.join(out))

if __name__ == '__main__':
    cmd, src, dst = sys.argv[1:4]
    {'py2nb': py2nb, 'nb2py': nb2py}[cmd](src, dst)
