#!/usr/bin/env bash
# The main job on the embedded data: set up (once), then regenerate the quick tables and figures into figures/quick/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
mkdir -p runs/quick
.venv/bin/papermill nbs/experiments/random_real.ipynb runs/quick/random_real.ipynb --cwd nbs/experiments \
  -y "{ipcs: [1, 10, 50], runs: 3, epochs: 300, width: 128, train_per_class: 0, test_per_class: 0, out_dir: '$PWD/figures/quick'}"
cat figures/quick/random_real.md
