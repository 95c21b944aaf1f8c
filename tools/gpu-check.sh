#!/usr/bin/env bash
# A few distillation iterations of every paper configuration of both papers (papers.paper_configurations()), on the
# full-size networks, printing seconds per iteration and peak memory — so a configuration that does not fit is found
# in minutes, not after a night of GPU time. Real datasets are used when their files are present (never downloaded);
# otherwise random stand-in images of the right shape and count. The experts are stand-ins too
# (buffers.stand_in_buffer: real initial networks, random-walk snapshots): timing only, never results. Because such
# trajectories carry no signal, the outer steps run with learning rates 0 and no loss gate (the same computation).
#
#   tools/gpu-check.sh                       # every configuration on the GPU
#   tools/gpu-check.sh --only datm-clr:cifar100 SelMatch:selmatch:tinyimagenet:100
#   tools/gpu-check.sh --cpu --tiny          # a quick sanity run of the same code paths on the CPU (shrunk: not a measurement)
#   tools/gpu-check.sh --list                # the configurations, without running anything
#
# Options: --iterations N (default 3; the first is warm-up), --eval-epochs N (epochs of the evaluation protocol to
# time; default 1, 0 with --tiny), --json FILE (write the measurements), --stand-in (ignore datasets that are present).
# Exit code 1 if a configuration failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" - "$@" <<'PYTHON'
import argparse, json, math, shutil, sys, tempfile, time, traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dd_companion.core import DDError, peak_rss_mb
from dd_companion.data import DATASETS, RealData, Split, load_dataset
from dd_companion.buffers import stand_in_buffer
from dd_companion.evaluate import protocol, train_module
from dd_companion.methods import Distiller
from dd_companion.experiments import timing_only
from dd_companion.papers import paper_configurations, format_paper_configurations

ap = argparse.ArgumentParser(prog='tools/gpu-check.sh', description='A few iterations of every paper configuration: seconds per iteration, peak memory.')
ap.add_argument('--cpu', action='store_true', help='run on the CPU (default: CUDA, which must be available)')
ap.add_argument('--tiny', action='store_true', help='shrink every configuration (IPC <= 2, 2 inner steps, ConvNet width 8, IPC+1 images per class): checks the code paths, measures nothing')
ap.add_argument('--only', nargs='+', default=[], metavar='ID', help='configuration ids, or substrings of ids (default: all); see --list')
ap.add_argument('--iterations', type=int, default=3, help='outer iterations per configuration (the first is warm-up)')
ap.add_argument('--eval-epochs', type=int, default=None, help='epochs of the evaluation protocol to time (default 1; 0 with --tiny)')
ap.add_argument('--stand-in', action='store_true', help='use random stand-in images even where a dataset is present')
ap.add_argument('--json', help='write the measurements to this JSON file')
ap.add_argument('--list', action='store_true', help='list the configurations and exit')
args = ap.parse_args(sys.argv[1:])

rows = paper_configurations()
if args.only:
    ids = [r['id'] for r in rows]
    pick = set()
    for pat in args.only:
        hit = [i for i in ids if i == pat] or [i for i in ids if pat.lower() in i.lower()]
        if not hit: sys.exit(f'error: --only {pat!r} matches no configuration id (see --list)')
        pick.update(hit)
    rows = [r for r in rows if r['id'] in pick]
if args.list:
    print(format_paper_configurations(rows)); sys.exit(0)
if args.iterations < 1: sys.exit('error: --iterations must be at least 1')
device = 'cpu' if args.cpu else 'cuda'
if device == 'cuda' and not torch.cuda.is_available(): sys.exit('error: no CUDA device; use --cpu (with --tiny for a quick sanity run)')
eval_epochs = args.eval_epochs if args.eval_epochs is not None else (0 if args.tiny else 1)
print(f"gpu-check: {len(rows)} configurations on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, torch {torch.__version__}"
      f"{', TINY (shrunk, not a measurement)' if args.tiny else ''}; {args.iterations} iterations each, {eval_epochs} evaluation epoch(s)")

def shrink(cfg):
    "The configuration at toy size: same options and code paths, IPC <= 2, 2 inner steps, width-8 ConvNet experts."
    return replace(cfg, ipc=min(cfg.ipc, 2), syn_steps=min(cfg.syn_steps, 2), expert_overrides={**cfg.expert_overrides, 'width': 8})

def stand_in_data(name: str, train_per_class: int, test_per_class: int) -> RealData:
    "Random normal images with balanced labels, shaped like `name` (index = position: valid for the shipped scores)."
    info, g = DATASETS[name], torch.Generator().manual_seed(0)
    def split(n):
        y = torch.arange(info.num_classes).repeat_interleave(n)
        return Split(torch.randn(len(y), info.channels, info.image_size, info.image_size, generator=g), y, torch.arange(len(y)))
    return RealData(info, [f'class {c}' for c in range(info.num_classes)], split(train_per_class), split(test_per_class), None)

_data = {}
def data_for(cfg):
    "The dataset of a configuration: the real one when present (and not --tiny/--stand-in), else a stand-in (one kept at a time)."
    key = (cfg.dataset, cfg.zca, cfg.ipc if args.tiny else None)
    if key not in _data:
        _data.clear()
        info, data, what = DATASETS[cfg.dataset], None, 'stand-in'
        if not (args.tiny or args.stand_in):
            try: data, what = load_dataset(cfg.dataset, zca=cfg.zca, download=False), 'real'
            except DDError: pass
        if data is None:
            per = cfg.ipc + 1 if args.tiny else info.train_size // info.num_classes
            data = stand_in_data(cfg.dataset, per, 1 if args.tiny else 10)
        _data[key] = (data, what)
    return _data[key]

work = Path(tempfile.mkdtemp(prefix='dd-gpu-check-'))
_buffers = {}
def buffer_for(cfg, data):
    "A stand-in buffer of the configuration's experts with enough epochs for every selected configuration using them."
    ecfg = cfg.expert_cfg()
    need = cfg.max_start_epoch - 1 + cfg.expert_epochs
    key = (ecfg.key, len(data.train))
    if key not in _buffers or _buffers[key].epochs < need:
        most = max([need] + [c.max_start_epoch - 1 + c.expert_epochs for c in configs if c.expert_cfg().key == ecfg.key])
        folder = work / 'buffers' / f'{ecfg.key}-{len(data.train)}'
        shutil.rmtree(folder, ignore_errors=True)
        _buffers[key] = stand_in_buffer(ecfg, data, folder, num_experts=1, epochs=most)
    return _buffers[key]

rows = sorted(rows, key=lambda r: list(DATASETS).index(r['dataset']))      # one stand-in dataset after the other
configs = [replace(timing_only(shrink(r['config']) if args.tiny else r['config']), device=device) for r in rows]
results, failed = [], []
for r, cfg in zip(rows, configs):
    rec = {'id': r['id'], 'ipc': cfg.ipc, 'syn_steps': cfg.syn_steps, 'batch_syn': cfg.batch_syn, 'experts': cfg.experts,
           'meta_grad': cfg.meta_grad, 'iterations_full': cfg.iterations}
    try:
        data, rec['data'] = data_for(cfg)
        buf = buffer_for(cfg, data)
        if device == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        d = Distiller(cfg, data=data, buffer=buf, out_dir=work / 'runs' / r['id'].replace(':', '_').replace('/', '_'),
                      progress=False, resume=False)
        rec['init_s'] = time.perf_counter() - t0
        for _ in range(args.iterations): d.step()
        if device == 'cuda': torch.cuda.synchronize()
        secs = [h['seconds'] for h in d.history]
        rec['s_per_it'] = float(np.median(secs[1:] if len(secs) > 1 else secs))
        rec['hours_full'] = rec['s_per_it'] * cfg.iterations / 3600
        rec['loss_tm'] = d.history[-1]['loss_tm']
        if not all(math.isfinite(h['loss_tm']) for h in d.history): raise DDError(f"non-finite matching loss: {[h['loss_tm'] for h in d.history]}")
        if eval_epochs:
            p = protocol(cfg.eval_protocol, **cfg.eval_overrides)
            pe = replace(p, epochs=eval_epochs, runs=1)
            t1 = time.perf_counter()
            train_module(d.images.detach(), d.labels.detach(), d.data, pe, pe.lr if pe.lr is not None else d.syn_lr.item(),
                         is_real=d.comps.is_real, device=device)
            if device == 'cuda': torch.cuda.synchronize()
            rec.update(eval_model=p.model, eval_s_per_epoch=(time.perf_counter() - t1) / eval_epochs, eval_epochs_full=p.epochs)
            rec['eval_min_per_network'] = rec['eval_s_per_epoch'] * p.epochs / 60
        rec['peak_mib'] = torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else peak_rss_mb()
        rec['ok'] = True
        ev = (f"  eval {rec['eval_model']} {rec['eval_s_per_epoch']:.2f} s/epoch ≈ {rec['eval_min_per_network']:.1f} min/network"
              if eval_epochs else '')
        print(f"ok      {r['id']:<50} {rec['s_per_it']:8.3f} s/it ≈ {rec['hours_full']:6.2f} h for {cfg.iterations} it  "
              f"peak {rec['peak_mib']:8.0f} MiB {'GPU' if device == 'cuda' else 'RSS'}  init {rec['init_s']:.1f} s  ({rec['data']} data){ev}")
        del d
    except Exception as e:
        rec.update(ok=False, error=f'{type(e).__name__}: {e}')
        failed.append(r['id'])
        print(f"FAILED  {r['id']:<50} {type(e).__name__}: {str(e)[:400]}")
        traceback.print_exc(file=sys.stderr)
    results.append(rec)
    if device == 'cuda': torch.cuda.empty_cache()

shutil.rmtree(work, ignore_errors=True)
if args.json: Path(args.json).write_text(json.dumps({'device': device, 'tiny': args.tiny, 'results': results}, indent=1, default=str))
print(f"gpu-check: {len(results) - len(failed)} ok, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ''))
sys.exit(1 if failed else 0)
PYTHON
