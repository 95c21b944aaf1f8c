#!/usr/bin/env bash
# Create .venv (once) and install dd_companion with its dev tools from the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dd-companion ] || [ settings.ini -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch .venv/.installed
fi
