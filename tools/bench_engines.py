"""Time meta-gradient engines interleaved against `unrolled` on one benchmark problem, and print each one's ratio.

    python tools/bench_engines.py --ipc 1 --batch-syn 10 --syn-steps 20 --threads 1 --reps 3 \
        --engines unrolled,checkpointed,fast,fast_convnet,fast_convnet_bf16

A thin command-line wrapper around `performance.benchmark_problem` and `performance.time_engines` (the machinery of
the benchmark notebook: repetitions run every engine once, in alternating order; each engine's time is divided by
`unrolled`'s of the same repetition; every exact engine's loss and gradient are checked against `unrolled`'s, an
inexact one's are reported). Only ratios of one run mean anything on a shared machine. `--json` also writes the
raw result.

`--peak` also measures the machine's peak arithmetic rate (`performance.machine_peak`: large fp32 and bf16 matrix
products, same thread count) just before and just after the engines (the higher of the two is the peak), counts
each engine's operations (`performance.iteration_flops`) and prints the achieved GFLOP/s as a fraction of that
peak: the bound on how much faster any implementation of the same arithmetic in that precision could be.
"""
import argparse, json, os, sys, time

import torch

from dd_companion.data import load_dataset
from dd_companion.performance import achieved_rate, benchmark_problem, iteration_flops, machine_peak, time_engines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--ipc', type=int, default=1)
    ap.add_argument('--batch-syn', type=int, default=None, help='images per inner step (default: all)')
    ap.add_argument('--syn-steps', type=int, default=20)
    ap.add_argument('--width', type=int, default=128)
    ap.add_argument('--engines', default='unrolled,checkpointed,fast,fast_convnet,fast_convnet_bf16')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--chunk', type=int, default=0, help="micro-batch of the fast engines (0: each engine's own default)")
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: torch default)')
    ap.add_argument('--train-per-class', type=int, default=20, help='training images per class loaded (the problem draws ipc of them)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--peak', action='store_true', help="also measure the machine's peak matmul rate and each engine's fraction of it")
    ap.add_argument('--json', default='', help='also write the result here')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    data = load_dataset(train_per_class=a.train_per_class, test_per_class=1)
    engines = a.engines.split(',')
    prob = benchmark_problem(a.ipc, a.batch_syn, a.syn_steps, a.width, data, a.seed)
    kw = {e: {'chunk': a.chunk} for e in engines if e.startswith('fast') and a.chunk}
    load0, t0 = os.getloadavg(), time.perf_counter()
    peaks = [machine_peak()] if a.peak else []
    res = time_engines(prob, engines, reps=a.reps, warmup=a.warmup, engine_kw=kw)
    if a.peak: peaks.append(machine_peak())
    print(f"IPC {a.ipc}, batch {a.batch_syn}, syn_steps {a.syn_steps}, ConvNet-{a.width}, {torch.get_num_threads()} thread(s), "
          f"chunk {a.chunk or 'engine default'}, "
          f"{a.reps} reps after {a.warmup} warm-up, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}, {time.perf_counter() - t0:.0f} s")
    print(f"{'engine':20s} {'ratio':>7s}  {'per repetition':28s} {'mean s':>8s}  exact  {'loss diff':>9s}  {'grad rel diff':>13s}")
    for e, v in res.items():
        print(f"{e:20s} {v['ratio']:7.3f}  {' '.join(f'{r:.2f}' for r in v['ratios']):28s} {v['mean']:8.2f}  {'yes' if v['exact'] else 'no ':5s}"
              f"  {v['loss_diff']:9.1e}  {v['grad_rel_diff']:13.1e}")
    achieved = {}
    if a.peak:
        fp32 = [p['float32']['gflops_per_s'] for p in peaks]
        peak = max(peaks, key=lambda p: p['float32']['gflops_per_s'])
        print(f"peak: fp32 {' then '.join(f'{g:.0f}' for g in fp32)} GFLOP/s (before, after; the higher is the reference: load only lowers a peak); {peaks[0]['note']}")
        print(f"{'engine':20s} {'GFLOP':>7s} {'GFLOP/s':>8s}  {'of fp32 peak':>12s}  {'fastest same-precision time':>27s}")
        for e, v in res.items():
            achieved[e] = achieved_rate(iteration_flops(e, a.ipc, a.batch_syn, a.syn_steps, a.width, data), v['mean'], peak)
            r = achieved[e]
            print(f"{e:20s} {r['gflop']:7.1f} {r['gflops_per_s']:8.1f}  {r['fraction_of_fp32_peak']:12.1%}  "
                  f"{r['fraction_of_fp32_peak'] * v['ratio']:21.2f} × unrolled")
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'args': vars(a), 'threads': torch.get_num_threads(), 'load_average': load0, 'result': res, 'peaks': peaks,
                       'achieved': achieved}, f, indent=1)


if __name__ == '__main__':
    sys.exit(main())
