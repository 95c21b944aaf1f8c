"""Child processes of the kill -9 tests (not a test module). Each mode prints progress lines the parent parses:

    python tests/fault_child.py experts <root> <num_experts> <epochs>
        build_experts('smoke', width 16, 20 images/class) into <root>; prints START <epoch> <until> when an expert's
        training (re)starts, TRAINED <n> <epoch> when epoch <epoch> of the current expert is computed (n counts all
        epochs trained by this process), SAVED <n> <epoch> once its checkpoint is on disk, DONE at the end.
    python tests/fault_child.py distill <out_dir> <iterations> <checkpoint_every> <seed>
        Distiller(distill_config('smoke', ...)).run(); prints RESUMED <iteration> after construction (0 = fresh),
        ITER <i> after every iteration, CKPT <i> after every checkpoint, DONE at the end.
    python tests/fault_child.py reproduce <out> <runs> <slow notebook> [--force]
        `dd-companion reproduce --preset quick` over a batch of two notebooks: the real random_real notebook at a
        smoke-sized override, and <slow notebook> (written by the test; it writes figures, a table and its results
        JSON over a few seconds); exits with the runner's exit code.
"""
import json, sys

mode = sys.argv[1]
if mode == 'experts':
    root, num_experts, epochs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    import dd_companion.buffers as B
    original, trained = B.train_expert_epochs, [0]

    def traced(cfg, data, state, until, *args, on_epoch=None, **kw):
        print(f"START {state['epoch']} {until}", flush=True)
        def after_epoch(st):
            trained[0] += 1
            print(f"TRAINED {trained[0]} {st['epoch']}", flush=True)
            if on_epoch is not None: on_epoch(st)
            print(f"SAVED {trained[0]} {st['epoch']}", flush=True)
        return original(cfg, data, state, until, *args, on_epoch=after_epoch, **kw)

    B.train_expert_epochs = traced
    buf = B.build_experts('smoke', root=root, num_experts=num_experts, epochs=epochs, progress=False)
    print('DONE', len(buf), buf.epochs, trained[0], flush=True)

elif mode == 'distill':
    out_dir, iterations, every, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    from dd_companion.methods import Distiller, distill_config
    step, save = Distiller.step, Distiller.save_checkpoint

    def traced_step(self):
        rec = step(self); print(f'ITER {self.iteration}', flush=True); return rec

    def traced_save(self):
        save(self); print(f'CKPT {self.iteration}', flush=True)

    Distiller.step, Distiller.save_checkpoint = traced_step, traced_save
    d = Distiller(distill_config('smoke', iterations=iterations, checkpoint_every=every, seed=seed), out_dir=out_dir, progress=False)
    print(f'RESUMED {d.iteration}', flush=True)
    summary = d.run()
    print('DONE', json.dumps({'iterations': summary['iterations'], 'syn_lr': summary['syn_lr']}), flush=True)

elif mode == 'reproduce':
    from pathlib import Path
    from dd_companion.papers import Entry
    from dd_companion.report import Registry
    from dd_companion.reproduce import main
    out, runs, slow = sys.argv[2:5]
    random_real = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'random_real.ipynb'
    reg = Registry([Entry('random-real', 'project', 'table', 'random real', 'random_real', path=str(random_real)),
                    Entry('slow-T', 'project', 'table', 'a slow notebook', 'slow', path=slow)],
                   presets={'random_real': {'quick': {'ipcs': [1, 2], 'runs': 1, 'epochs': 2}}, 'slow': {'quick': {'steps': 4}}})
    raise SystemExit(main(['reproduce', '--preset', 'quick', '--out', out, '--runs', runs, '--no-progress', *sys.argv[5:]], registry=reg))

else:
    raise SystemExit(f'unknown mode {mode!r}')
