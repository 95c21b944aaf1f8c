"""`dd-companion tables` reads only files inside the output folder, and damaged result files are warnings, never
tracebacks (issue #20, item 9).

The index REPRODUCE.md copies a notebook's own markdown table and links its figures, with the names taken from the
runner's record `.reproduce/<notebook>.json`. A crafted record (or a symlink) must not bring any other local file into
the index; a results JSON or record that is cut short or of the wrong shape is named in a warning (stderr and the
index) and skipped, and `reproduce` reruns a notebook whose results file is damaged, replacing it."""
from __future__ import annotations
import json, os
from pathlib import Path

import pytest

from dd_companion.core import atomic_write_text, save_results
from dd_companion.papers import Entry
from dd_companion.report import Registry
from dd_companion.reproduce import main

from test_reproduce import OK_BODY, entry, write_notebook

SECRET = 'SECRET: a local file that must never reach REPRODUCE.md'


@pytest.fixture
def folder(tmp_path):
    "An output folder with the results of a figure notebook `fig` (its own fig.md, fig.png) and a secret file beside it."
    nb = write_notebook(tmp_path / 'nbs' / 'fig.ipynb', 'pass')
    reg = Registry([Entry('fig-F', 'project', 'figure', 'a figure', 'fig', path=str(nb))], presets={'fig': {'quick': {}}})
    out = tmp_path / 'figures'
    save_results(out, 'fig', {'ipc': 1, 'scale': 0.5, 'out_dir': 'x'}, {})
    (out / 'fig.md').write_text('OWN TABLE of the figure notebook')
    (out / 'fig.png').write_bytes(b'\x89PNG\r\n')
    (tmp_path / 'secret.md').write_text(SECRET)
    return {'tmp': tmp_path, 'out': out, 'reg': reg, 'secret': tmp_path / 'secret.md'}


def tables(folder, capsys) -> tuple:
    rc = main(['tables', '--preset', 'quick', '--out', str(folder['out'])], registry=folder['reg'])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err, (folder['out'] / 'REPRODUCE.md').read_text()


def record(folder, files):
    atomic_write_text(folder['out'] / '.reproduce' / 'fig.json', json.dumps({'notebook': 'fig', 'files': files}))


# --- crafted records and links: nothing from outside the output folder is read ----------------------------------
def _symlink_in_out(f):
    (f['out'] / 'fig_extra.md').symlink_to(f['secret']); return ['fig.md', 'fig_extra.md']


def _symlinked_subfolder(f):
    (f['out'] / 'sub').symlink_to(f['tmp']); return ['fig.md', 'sub/secret.md']


def _symlinked_record(f):
    (f['tmp'] / 'evil.json').write_text(json.dumps({'files': ['fig.md', '../secret.md']}))
    (f['out'] / '.reproduce').mkdir(exist_ok=True); (f['out'] / '.reproduce' / 'fig.json').symlink_to(f['tmp'] / 'evil.json')
    return None


def _symlink_without_record(f):
    (f['out'] / 'fig_notes.md').symlink_to(f['secret']); return None


CRAFTED = [   # (id, how: returns the record's files (None: no record written), what the warning names)
    ('relative path out', lambda f: ['fig.md', '../secret.md'], "'../secret.md'"),
    ('absolute path', lambda f: ['fig.md', str(f['secret'])], "/secret.md'"),
    ('dot-dot inside a subfolder name', lambda f: ['fig.md', 'tables/../../secret.md'], "'tables/../../secret.md'"),
    ('symlink in the output folder', _symlink_in_out, "'fig_extra.md'"),
    ('symlinked subfolder', _symlinked_subfolder, "'sub/secret.md'"),
    ('record itself a symlink out', _symlinked_record, '.reproduce/fig.json'),
    ('symlink found without a record', _symlink_without_record, "'fig_notes.md'"),
]


@pytest.mark.fault
@pytest.mark.parametrize('craft,named', [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_record_cannot_copy_a_file_from_outside_into_the_index(craft, named, folder, capsys):
    files = craft(folder)
    if files is not None: record(folder, files)
    rc, text, err, index = tables(folder, capsys)
    assert rc == 0, err
    assert SECRET not in index and SECRET not in text, 'a file outside the output folder was copied into REPRODUCE.md'
    assert 'OWN TABLE of the figure notebook' in index            # the notebook's own file is still shown
    assert err.startswith('warning: ') and named in err and 'output folder' in err, err
    assert str(folder['secret']) not in index.split('## Warnings')[0]  # not even linked


def test_the_notebooks_own_files_are_shown(folder, capsys):
    record(folder, ['fig.md', 'fig.png', 'fig.json'])
    rc, text, err, index = tables(folder, capsys)
    assert rc == 0 and err == '' and 'OWN TABLE of the figure notebook' in index and '![fig.png](fig.png)' in index, err


# --- damaged results and records: a warning, not a traceback ----------------------------------------------------
DAMAGED = [   # (id, file, content, words of the warning)
    ('results cut short', 'fig.json', '{"experiment": "fig", "params": {"ipc"', 'is unreadable (JSONDecodeError'),
    ('results not an object', 'fig.json', '[1, 2]', 'is not a results document'),
    ('results with params a list', 'fig.json', '{"params": [1], "config_hash": "x"}', 'is not a results document'),
    ('results edited by hand', 'fig.json', '{"params": {"ipc": 3}, "config_hash": "0000"}', 'does not match its params'),
    ('results binary', 'fig.json', b'\xff\xd8\xff\xe0' * 10, 'is unreadable (UnicodeDecodeError'),
    ('record cut short', '.reproduce/fig.json', '{"files": ["fig.md"', 'is damaged'),
    ('record not an object', '.reproduce/fig.json', '"fig.md"', 'is damaged'),
    ('record files not a list', '.reproduce/fig.json', '{"files": "fig.md"}', '"files" is not a list'),
    ('record files not names', '.reproduce/fig.json', '{"files": [1, null, {"a": 1}]}', 'does not resolve to a file inside'),
]


@pytest.mark.fault
@pytest.mark.parametrize('name,content,words', [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_a_damaged_results_file_is_a_warning_not_a_traceback(name, content, words, folder, capsys):
    path = folder['out'] / name; path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    rc, text, err, index = tables(folder, capsys)
    assert rc == 0 and 'Traceback' not in err, err
    assert f'warning: {path}' in err and words in err, err
    assert words in index.split('## Warnings')[-1]


@pytest.mark.fault
@pytest.mark.parametrize('content', ['[1, 2]', '{"params": {"ipc"'], ids=['not an object', 'cut short'])
def test_reproduce_reruns_a_notebook_whose_results_file_is_damaged(content, tmp_path, capsys):
    nb = write_notebook(tmp_path / 'nbs' / 'okay.ipynb', OK_BODY.format(name='okay'))
    reg = Registry([entry('okay', nb)], presets={'okay': {'quick': {'ipc': 4}}})
    out = tmp_path / 'figures'; out.mkdir()
    (out / 'okay.json').write_text(content)
    atomic_write_text(out / '.reproduce' / 'okay.json', content)
    rc = main(['reproduce', '--preset', 'quick', '--out', str(out), '--runs', str(tmp_path / 'runs'), '--no-progress'], registry=reg)
    text = capsys.readouterr().out
    assert rc == 0 and '1 ran, 0 cached, 0 failed' in text, text
    assert f'! {out / "okay.json"} ' in text and 'okay runs again and replaces it' in text, text
    assert json.loads((out / 'okay.json').read_text())['params']['ipc'] == 4
    assert json.loads((out / '.reproduce' / 'okay.json').read_text())['ok'] is True
