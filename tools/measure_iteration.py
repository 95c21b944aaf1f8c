"""Seconds per outer iteration and peak resident memory of the P-quick distillation step at IPC 1 (batch_syn 10) and
IPC 10 (batch_syn 100), syn_steps 20, ConvNet-128, for each meta-gradient engine, each in a fresh process
(`performance.measure_in_subprocess`), one engine after another. Writes a results JSON (default figures/quick/iteration_cost.json).

    .venv/bin/python tools/measure_iteration.py [--threads 2] [--reps 3] [--engines unrolled checkpointed fast] [--out PATH]
"""
import argparse, json, time
from pathlib import Path
from dd_companion.core import atomic_save_json, environment_info
from dd_companion.performance import measure_in_subprocess

ap = argparse.ArgumentParser()
ap.add_argument('--threads', type=int, default=2)
ap.add_argument('--reps', type=int, default=3, help='iterations measured per process (after the first, which is warm-up)')
ap.add_argument('--engines', nargs='+', default=['unrolled', 'checkpointed', 'fast'])
ap.add_argument('--ipcs', nargs='+', type=int, default=[1, 10])
ap.add_argument('--out', default='figures/quick/iteration_cost.json')
a = ap.parse_args()
rows = []
for ipc in a.ipcs:
    for engine in a.engines:
        r = measure_in_subprocess(engine, ipc, 20, 10 * ipc, iterations=a.reps + 1, threads=a.threads)
        secs = r['seconds'][1:]
        row = {'engine': engine, 'ipc': ipc, 'batch_syn': 10 * ipc, 'syn_steps': 20, 'threads': r['threads'],
               'sec_per_it': sum(secs) / len(secs), 'seconds': r['seconds'], 'peak_rss_mb': r['peak_rss_mb'],
               'iteration_peak_mb': r['iteration_peak_mb'], 'loss': r['loss']}
        rows.append(row); print(json.dumps(row), flush=True)
Path(a.out).parent.mkdir(parents=True, exist_ok=True)
atomic_save_json(a.out, {'rows': rows, 'args': vars(a), 'finished': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                         'environment': environment_info()})
print('wrote', a.out)
