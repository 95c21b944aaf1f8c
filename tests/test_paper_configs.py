"""Every paper configuration of both papers can run (issue #16, "Proof it runs"), checked without training.

`papers.paper_configurations()` builds each distillation of the `paper` presets the way the notebooks build it. For
every one this checks what would otherwise stop a GPU run after its experts were trained: the options validate, the
expert preset is for the same dataset and holds enough epochs for the start-epoch window (the Distiller's own buffer
check, run against a stand-in for the preset's buffer), a sequential window reaches its end within the run, and the
evaluation protocol (with the configuration's overrides) is valid and builds for the dataset. The paper presets of
the experiment notebooks only ask for configurations that exist, and the CPU sanity path of `tools/gpu-check.sh`
runs a few configurations end to end (stand-in data and experts, shrunk). Nothing here needs a GPU."""
from __future__ import annotations
import os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dd_companion.core import DDError
from dd_companion.buffers import EXPERT_PRESETS
from dd_companion.data import DATASETS
from dd_companion.evaluate import protocol
from dd_companion.models import MODELS, model_for
from dd_companion.methods import validate, distill_config
from dd_companion.papers import paper_configurations, NOTEBOOK_PRESETS
from dd_companion.datm import DATM_PUBLISHED, MTT_PUBLISHED
from dd_companion.selmatch import PAPER_ALPHA_BETA, PAPER_IPCS

REPO = Path(__file__).resolve().parents[1]
ROWS = paper_configurations()


def preset_buffer(cfg, epochs=None):
    "What the Distiller checks of a buffer (epochs, the experts' identity), for the expert preset of `cfg`, without training it."
    e = cfg.expert_cfg()
    return SimpleNamespace(epochs=epochs or e.epochs, config=e.identity(), folder=Path('buffers') / e.key)


def test_both_papers_have_every_published_configuration():
    have = {(r['method'], r['dataset'], r['ipc']) for r in ROWS}
    assert {('mtt', *k) for k in MTT_PUBLISHED} <= have
    assert {(m, *k) for k in DATM_PUBLISHED if k[1] <= 50 for m in ('datm', 'datm+fusion', 'datm+update', 'datm-clr')} <= have
    assert {('selmatch', *k) for k in PAPER_ALPHA_BETA} <= have
    variants = {(r['variant'], r['dataset'], r['ipc']) for r in ROWS if r['paper'] == 'SelMatch' and r['method'] == 'selmatch'}
    assert {(v, *k) for k in PAPER_ALPHA_BETA for v in ('', 'random_partial', 'window_full')} <= variants
    assert len({r['id'] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize('row', ROWS, ids=[r['id'] for r in ROWS])
def test_configuration_fits_its_experts_window_and_protocol(row):
    cfg = row['config']
    assert (cfg.dataset, cfg.ipc) == (row['dataset'], row['ipc'])
    validate(cfg)                                                     # every option, as the Distiller checks them first
    assert cfg.experts in EXPERT_PRESETS and EXPERT_PRESETS[cfg.experts].dataset == cfg.dataset
    e = cfg.expert_cfg()
    assert cfg.max_start_epoch - 1 + cfg.expert_epochs <= e.epochs, (cfg.max_start_epoch, cfg.expert_epochs, e.epochs)
    validate(cfg, buffer=preset_buffer(cfg))                          # the Distiller's buffer check (epochs, data, ZCA, model)
    if cfg.start_sampler == 'sequential':
        assert cfg.min_start_epoch < cfg.current_max_start_epoch < cfg.max_start_epoch
        assert (cfg.expansion_end_epoch or cfg.iterations) <= cfg.iterations
    p = protocol(cfg.eval_protocol, **cfg.eval_overrides)
    assert p.model in MODELS and p.epochs >= 1
    assert cfg.ipc <= DATASETS[cfg.dataset].train_size // DATASETS[cfg.dataset].num_classes
    if row['method'] in ('datm', 'datm+fusion', 'datm+update', 'datm-clr'):
        assert e.optimizer == 'gsam' and e.epochs == 100 and p.batch_size == 128 and cfg.zca


@pytest.mark.parametrize('dataset, ipc', [('cifar100', 10), ('cifar100', 50), ('tinyimagenet', 10), ('tinyimagenet', 50)])
def test_the_four_datm_configurations_need_the_100_epoch_experts(dataset, ipc):
    cfg = distill_config('paper', 'datm', dataset=dataset, ipc=ipc)
    validate(cfg, buffer=preset_buffer(cfg))
    mtt = distill_config('paper', 'datm', dataset=dataset, ipc=ipc, experts={'cifar100': 'mtt-cifar100', 'tinyimagenet': 'mtt-tiny'}[dataset])
    with pytest.raises(DDError, match='needs experts with at least'):
        validate(mtt, buffer=preset_buffer(mtt))                      # MTT's 50-epoch experts cannot serve them


def test_every_evaluation_network_builds_for_its_dataset():
    pairs = {(protocol(r['config'].eval_protocol, **r['config'].eval_overrides).model, r['dataset']) for r in ROWS}
    archs = NOTEBOOK_PRESETS['selmatch_table_crossarch']['paper']['archs'] + NOTEBOOK_PRESETS['selmatch_fig4_ablations']['paper']['eval_models']
    pairs |= {(a, NOTEBOOK_PRESETS['selmatch_table_crossarch']['paper']['dataset']) for a in archs}
    for model, ds in sorted(pairs):
        info = DATASETS[ds]
        net = model_for(SimpleNamespace(image_shape=(info.channels, info.image_size, info.image_size), num_classes=info.num_classes), model)
        assert net.classifier.out_features == info.num_classes, (model, ds)


def _preset_pairs(nb: str, p: dict) -> set:
    "(dataset, ipc) pairs a notebook's paper preset distils."
    datasets = p.get('datasets') or [p['dataset']]
    ipcs = (p.get('ipcs') or []) + [p[k] for k in ('ipc', 'ablation_ipc', 'track_ipc') if k in p] + p.get('alpha_ipcs', [])
    if nb == 'selmatch_table_main' and not ipcs: return {(d, i) for d in datasets for i in PAPER_IPCS[d]}
    return {(d, i) for d in datasets for i in ipcs}


@pytest.mark.parametrize('nb', [nb for nb in NOTEBOOK_PRESETS if nb.startswith(('datmclr_t', 'datmclr_grids', 'datmclr_fig3', 'selmatch'))
                                and nb != 'selmatch_fig3_window'])
def test_notebook_paper_presets_ask_for_existing_configurations(nb):
    p = NOTEBOOK_PRESETS[nb]['paper']
    paper = 'DATM-CLR' if nb.startswith('datmclr') else 'SelMatch'
    have = {(r['dataset'], r['ipc']) for r in ROWS if r['paper'] == paper}
    want = _preset_pairs(nb, p)
    assert want and want <= have, sorted(want - have)
    for key in ('archs', 'eval_models'):
        assert set(p.get(key, [])) <= set(MODELS), (key, p.get(key))


def test_gpu_check_cpu_sanity_path():
    ids = ['DATM-CLR:datm-clr:cifar100:10', 'DATM-CLR:datm:cifar100:50', 'SelMatch:selmatch/random_partial:tinyimagenet:50',
           'DATM-CLR:mtt:cifar10:1']
    env = {**os.environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    out = subprocess.run(['bash', str(REPO / 'tools' / 'gpu-check.sh'), '--cpu', '--tiny', '--iterations', '2', '--only', *ids],
                         capture_output=True, text=True, env=env, timeout=300)
    print(out.stdout[-3000:], out.stderr[-3000:], sep='\n')
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ok = [l.split()[1] for l in out.stdout.splitlines() if l.startswith('ok ')]
    assert sorted(ok) == sorted(ids) and 's/it' in out.stdout and 'gpu-check: 4 ok, 0 failed' in out.stdout
    bad = subprocess.run(['bash', str(REPO / 'tools' / 'gpu-check.sh'), '--cpu', '--only', 'no-such-configuration'],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and 'matches no configuration id' in bad.stderr
