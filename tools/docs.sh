#!/usr/bin/env bash
# Build the docs site offline from the notebooks into a folder (default _site/, git-ignored):
#   bash tools/docs.sh [OUT]
# Pages: nbs/index.ipynb (front page), nbs/methods.md, every notebook of nbs/ and nbs/experiments/ (committed
# outputs, never executed), figures/quick/ (REPRODUCE.md and its figures) and an API reference from the docstrings.
# Renderer: mkdocs-material + mkdocs-jupyter + mkdocstrings (settings.ini dev_requirements; config in tools/docs/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-_site}"
# the Python that has the docs packages: $PYTHON, else the active virtualenv, else the checkout's .venv
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
if ! "$PY" -c 'import mkdocs, mkdocs_jupyter, mkdocstrings, material, jupyter_server_mathjax' 2>/dev/null; then
  echo "ERROR: $PY lacks the docs packages; run: $PY -m pip install -e '.[dev]'   (or bash tools/setup.sh)" >&2
  exit 1
fi
"$PY" tools/docs/build.py --out "$OUT"
