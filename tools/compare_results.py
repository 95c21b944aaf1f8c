"""Compare the numbers of two folders of results JSONs (e.g. figures/lite before and after a refactor): every numeric
leaf of each `results` except timings, paths and keys.   python tools/compare_results.py BEFORE_DIR AFTER_DIR"""
import json, sys, math
from pathlib import Path
SKIP = ('seconds', 'sec_per_it', 'environment', 'finished', 'folder', 'config_key', 'key', 'config_hash', 'cost_vs', 'ratio',
        'distill s', 'eval s', 'build_seconds', 'distill_seconds', 'out_dir', 'peak_rss', 'torch_threads', 's/iteration', 'cost')
def leaves(o, path=''):
    if isinstance(o, dict):
        for k, v in o.items():
            if any(s in str(k) for s in SKIP): continue
            yield from leaves(v, f'{path}/{k}')
    elif isinstance(o, list):
        for i, v in enumerate(o): yield from leaves(v, f'{path}[{i}]')
    elif isinstance(o, (int, float)) and not isinstance(o, bool): yield path, float(o)
a, b = Path(sys.argv[1]), Path(sys.argv[2])
T = {'n': 0, 'exact': 0, 'f32': 0, 'diff': 0}
for fa in sorted(a.glob('*.json')):
    fb = b / fa.name
    if not fb.exists(): print('MISSING', fa.name); continue
    la, lb = dict(leaves(json.loads(fa.read_text())['results'])), dict(leaves(json.loads(fb.read_text())['results']))
    c = {'n': 0, 'exact': 0, 'f32': 0, 'diff': 0}
    for k in sorted(set(la) & set(lb)):
        c['n'] += 1
        if la[k] == lb[k] or (math.isnan(la[k]) and math.isnan(lb[k])): c['exact'] += 1
        elif abs(la[k] - lb[k]) < 1e-7: c['f32'] += 1
        else:
            c['diff'] += 1
            if c['diff'] <= 5: print(f'  {fa.name}{k}: {la[k]} vs {lb[k]}')
    print(f"{fa.name}: {c['n']} numbers: {c['exact']} identical, {c['f32']} equal up to float32 rounding (<1e-7), {c['diff']} differ; "
          f"{len(set(la) ^ set(lb))} only on one side")
    for k in T: T[k] += c[k]
print(f"TOTAL {T['n']} numbers: {T['exact']} identical, {T['f32']} float32-rounding, {T['diff']} differ")
