#!/usr/bin/env bash
# The main job: set up (once), then regenerate the 'lite' subset of both papers' tables and figures with the
# reproduction runner (dd-companion reproduce) into figures/lite/, and print the rendered tables.
# A second invocation is served from the cache. The full quick run (every table and figure on the embedded data,
# CPU, hours) is one flag away:   bash tools/run-main.sh --preset quick
# Other options: bash tools/run-main.sh --list | --dry-run | --jobs 2 | --only ID ... (see dd-companion reproduce -h)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec .venv/bin/dd-companion reproduce --preset lite --print-tables "$@"
