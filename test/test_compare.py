# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""``training.compare``: aggregation over seeds, gap fraction, run reuse, and a real training."""
import json

import numpy as np
import pytest
import torch

from sim2real_perception.config import load_config
from sim2real_perception.model import build_model
from sim2real_perception.model_io import export_model_dir
from training.compare import gap_closed, main, parse_variant, run_request, train_command
from training.data.make_procedural import generate

ROWS = ('twin_vae', 'sim_only', 'oracle')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('procedural')
    generate(root, sim_frames=8, real_frames=8, height=48, width=96, seed=0,
             frames_per_sequence=8, workers=1)  # val: 1 frame
    return root


def finished_run(out, row, seed, data_root, config='test'):
    """Put an exported random model where compare expects a finished run of ``row``."""
    run_dir = out / 'runs' / f'{row}_s{seed}'
    torch.manual_seed(100 * seed + ROWS.index(row))
    export_model_dir(build_model(load_config(config)['model']).eval(), run_dir / 'export')
    overrides = [f'data.{s}.root={data_root.resolve()}' for s in ('sim', 'real', 'eval')]
    request = run_request(config, row, seed, overrides)
    (run_dir / 'compare_run.json').write_text(json.dumps({'request': request, 'done': True,
                                                          'seconds': 1.0}))


def test_aggregates_seeds_and_reuses_finished_runs(tmp_path, data_root, capsys):
    out = tmp_path / 'cmp'
    for row in ROWS:
        for seed in (0, 1):
            finished_run(out, row, seed, data_root)
    args = ['--config', 'test', '--seeds', '0', '1', '--out', str(out), '--quiet',
            '--methods', *ROWS, '--data-root', str(data_root), '--max-frames', '1',
            '--backend', 'torch',
            '--set', 'eval.max_depth=50']  # scoring-only settings do not block reuse
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert 'twin_vae (n=2)' in printed and ' ± ' in printed and 'gap closed' in printed
    report = json.loads((out / 'compare.json').read_text())
    assert all(r['reused'] for r in report['runs'].values()) and len(report['runs']) == 6
    assert set(report['splits']) == {'real', 'sim'}
    real = report['splits']['real']
    assert real['data']['section'] == 'eval' and real['data']['frames'] == 1
    assert real['runs']['oracle_s1']['depth']['max_depth'] == 50.0
    for row in ROWS:
        per_seed = [real['runs'][f'{row}_s{s}']['depth']['abs_rel'] for s in (0, 1)]
        cell = real['summary'][row]['depth.abs_rel']
        assert cell['values'] == pytest.approx(per_seed)
        assert cell['mean'] == pytest.approx(np.mean(per_seed))
        assert cell['std'] == pytest.approx(np.std(per_seed, ddof=1))
    s = real['summary']
    want = (s['twin_vae']['depth.abs_rel']['mean'] - s['sim_only']['depth.abs_rel']['mean']) / \
        (s['oracle']['depth.abs_rel']['mean'] - s['sim_only']['depth.abs_rel']['mean'])
    assert real['gap_closed']['twin_vae']['abs_rel'] == pytest.approx(want)
    md = (out / 'compare.md').read_text()
    assert '| twin_vae (n=2) |' in md and 'eval_real.png' in md
    assert (out / 'eval_real.png').stat().st_size > 0 and (out / 'eval_sim.png').is_file()
    # Asking for different training settings must not silently reuse those runs.
    assert main(args + ['--set', 'train.lr=0.5']) == 3
    assert 'different settings (config.train.lr)' in capsys.readouterr().err


def test_gap_fraction_direction():
    def summary(**means):
        return {k: {'depth.abs_rel': {'mean': a}, 'segmentation.miou': {'mean': m}}
                for k, (a, m) in means.items()}
    gaps = gap_closed(summary(sim_only=(0.4, 0.2), oracle=(0.2, 0.6), ours=(0.3, 0.5),
                              worse=(0.5, 0.1)))
    assert gaps['ours'] == pytest.approx({'abs_rel': 0.5, 'miou': 0.75})
    assert gaps['worse'] == pytest.approx({'abs_rel': -0.5, 'miou': -0.25})
    assert gap_closed(summary(sim_only=(0.4, 0.2), ours=(0.3, 0.5))) == {}
    # An oracle no better than sim-only leaves no gap to close: n/a, not a misleading sign.
    assert gap_closed(summary(sim_only=(0.4, 0.2), oracle=(0.5, 0.6),
                              ours=(0.3, 0.5)))['ours'] == {'abs_rel': None, 'miou': 0.75}
    assert gap_closed(summary(sim_only=(0.4, 0.2), oracle=(0.4, 0.2),
                              ours=(0.3, 0.5)))['ours'] == {'abs_rel': None, 'miou': None}


def test_trains_through_training_train(tmp_path, data_root):
    out = tmp_path / 'cmp'
    args = ['--config', 'test', '--seeds', '3', '--methods', 'sim_only', '--out', str(out),
            '--data-root', str(data_root), '--quiet', '--max-frames', '1', '--set',
            'train.supervised_steps=1', 'train.monitor_frames=0', 'train.sample_rows=0',
            'eval.figure_rows=0']
    assert main(args) == 0
    report = json.loads((out / 'compare.json').read_text())
    run = report['runs']['sim_only_s3']
    assert not run['reused'] and run['seconds'] > 0
    meta = report['splits']['real']['runs']['sim_only_s3']['metadata']
    assert meta['method'] == 'sim_only' and meta['seed'] == 3
    assert (out / 'runs' / 'sim_only_s3' / 'train.log').is_file()
    assert main(args) == 0  # second time: the finished run is reused, not retrained
    assert json.loads((out / 'compare.json').read_text())['runs']['sim_only_s3']['reused']


def test_variant_rows_and_train_command(tmp_path):
    assert parse_variant('mix=sim_only,train.style_mix_layers=[0, 1, 2],data.sim.relabel={van: '
                         'car, truck: car},train.style_mix=1.0') == (
        'mix', 'sim_only', ['train.style_mix_layers=[0, 1, 2]',
                            'data.sim.relabel={van: car, truck: car}', 'train.style_mix=1.0'])
    name, method, extra = parse_variant('frozen=twin_vae,train.stage2_freeze_encoders=true')
    assert (name, method, extra) == ('frozen', 'twin_vae', ['train.stage2_freeze_encoders=true'])
    for bad in ('frozen', 'x=nomethod', 'x=twin_vae,novalue'):
        with pytest.raises(ValueError):
            parse_variant(bad)
    cmd = train_command('cpu', 'oracle', 2, tmp_path, ['a.b=1', 'c=2'], resume=True)
    assert cmd[1:3] == ['-m', 'training.train']
    from training.train import build_parser  # the command must parse as training.train's CLI
    args = build_parser().parse_args(cmd[3:])
    assert (args.config, args.method, args.seed, args.run_dir) == ('cpu', 'oracle', 2,
                                                                   str(tmp_path))
    assert args.resume and args.no_progress and args.overrides == [['a.b=1', 'c=2']]


def test_a_twin_vae_setting_does_not_make_baseline_runs_stale(tmp_path):
    from training.compare import _differences, relevant_request
    old = run_request('test', 'sim_only', 0, [])
    new = run_request('test', 'sim_only', 0, ['train.stage2_steps=99', 'loss.s2_adv=0.5'])
    assert _differences(relevant_request(old), relevant_request(new)) == []
    twin_old = run_request('test', 'twin_vae', 0, [])
    twin_new = run_request('test', 'twin_vae', 0, ['train.stage2_steps=99'])
    assert _differences(relevant_request(twin_old), relevant_request(twin_new)) == [
        'config.train.stage2_steps']
    # What sim_only does read still counts.
    aug = run_request('test', 'sim_only', 0, ['data.sim.appearance_aug=0.5'])
    assert _differences(relevant_request(old), relevant_request(aug)) == [
        'config.data.sim.appearance_aug']
    # A key added to defaults.yaml after a run was trained: equal when it is the default.
    del old['config']['train']['lr_schedule']
    assert _differences(old, run_request('test', 'sim_only', 0, [])) == []
    assert _differences(old, run_request('test', 'sim_only', 0, [
        'train.lr_schedule=cosine'])) == ['config.train.lr_schedule']


def test_a_key_added_to_defaults_while_a_compare_runs_keeps_old_runs_valid(monkeypatch):
    """A long benchmark may see defaults.yaml gain a key between two of its runs."""
    import training.compare as compare
    old = run_request('test', 'sim_only', 0, [])
    assert compare._default('config.train.lr') > 0   # the defaults were read once already
    real_load = compare.load_config

    def with_new_key(preset=None, overrides=()):
        cfg = real_load(preset, overrides)
        cfg['train']['a_new_option'] = 0.0
        return cfg
    monkeypatch.setattr(compare, 'load_config', with_new_key)
    new = run_request('test', 'sim_only', 0, [])
    assert new['config']['train']['a_new_option'] == 0.0
    assert compare._differences(old, new) == []
    new['config']['train']['a_new_option'] = 0.5
    assert compare._differences(old, new) == ['config.train.a_new_option']
