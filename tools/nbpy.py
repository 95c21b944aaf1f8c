"""Convert between percent-format scripts and notebooks (a small authoring aid).

    python tools/nbpy.py py2nb src.py dst.ipynb   # `# %%` cells -> notebook, deterministic cell ids
    python tools/nbpy.py nb2py src.ipynb dst.py   # notebook -> `# %%` cells (outputs dropped)

Markdown cells are written `# %% [markdown]` followed by lines starting with `# `; a code cell may carry
tags: `# %% tags=["parameters"]`. Notebooks remain the source of truth; this only makes editing them in a
text editor painless. Cell ids are derived from the cell position so regenerating a notebook is stable.
"""
import json, re, sys
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
    nbformat.write(nb, dst)

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
