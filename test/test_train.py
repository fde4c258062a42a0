"""Baselines by the same trainer, the CLI surface and checkpoint files (in-process, tiny)."""
import copy

import pytest
import torch

from sim2real_perception.config import load_config
from sim2real_perception.model import TwinVAE
from sim2real_perception.model_io import load_depth_seg_net
from training import train
from training.checkpoint import load_checkpoint, read_record, save_checkpoint


@pytest.fixture(scope='module')
def tiny_cfg(tmp_path_factory):
    from training.data.make_procedural import generate
    data = tmp_path_factory.mktemp('procedural')
    generate(data, sim_frames=8, real_frames=8, height=128, width=128, seed=5,
             frames_per_sequence=4, workers=1)
    return load_config('test', [f'data.sim.root={data}', f'data.real.root={data}',
                                f'data.eval.root={data}', 'data.eval.val_fraction=0.25',
                                'train.supervised_steps=2'])


@pytest.mark.parametrize('method', ['sim_only', 'oracle'])
def test_baselines_train_and_export(tiny_cfg, tmp_path, method):
    summary = train.run(tiny_cfg, tmp_path, method=method)
    assert summary['stages'] == ['supervised'] and summary['steps'] == {'supervised': 2}
    net, config = load_depth_seg_net(summary['export_dir'])
    assert config['metadata']['method'] == method
    assert config['metadata']['bn_recalibration_batches'] == 0   # no adaptation
    depth, labels = net(torch.zeros(1, 128, 128, 3, dtype=torch.uint8))
    assert depth.shape == (1, 128, 128) and labels.dtype == torch.uint8
    rows = (tmp_path / 'logs' / 'supervised.csv').read_text().splitlines()
    assert rows[0].split(',')[-2:] == ['depth', 'ce'] and len(rows) == 3
    assert list((tmp_path / 'samples').glob('supervised_epoch*.png'))
    # Only the real encoder and the heads train: the sim branch keeps its initial weights.
    torch.manual_seed(tiny_cfg['train']['seed'])
    init = TwinVAE(tiny_cfg['model'])
    trained = TwinVAE(tiny_cfg['model'])
    load_checkpoint(tmp_path / 'checkpoints', 'supervised_last', trained)
    assert torch.equal(init.dec_sim.layers[-1][0].weight, trained.dec_sim.layers[-1][0].weight)
    assert not torch.equal(init.dec_depth.layers[-1][0].weight,
                           trained.dec_depth.layers[-1][0].weight)


class _CountingFrames:
    """A dataset wrapper that records every frame read."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.dataset[index]


def test_learning_curve_reads_its_frames_once(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)
    cfg['train'].update(supervised_steps=3, monitor_every=1, monitor_frames=2)
    trainer = train.Trainer(cfg, tmp_path, 'sim_only')
    frames = _CountingFrames(trainer.dataset('eval_val'))
    trainer._datasets['eval_val'] = frames
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    rows = (tmp_path / 'logs' / 'monitor.csv').read_text().splitlines()
    assert rows[0] == 'stage,step,abs_rel,miou'
    assert [r.split(',')[1] for r in rows[1:]] == ['1', '2', '3']
    scores = [float(v) for r in rows[1:] for v in r.split(',')[2:]]
    assert all(0.0 < v < 10.0 for v in scores)
    # Four scorings (three steps and the epoch end), one read of each of the two frames.
    assert len(frames.reads) == 2 and len(set(frames.reads)) == 2
    assert summary['monitor']['supervised']['miou'] == float(rows[-1].split(',')[3])


def test_stage_plan_rejects_bad_combinations():
    assert train.stage_plan('twin_vae', 'all') == ['stage1', 'stage2']
    assert train.stage_plan('twin_vae', '2') == ['stage2']
    with pytest.raises(ValueError):
        train.stage_plan('sim_only', '1')


@pytest.mark.parametrize('key, value', [('batch_size', 0), ('batch_size', -1),
                                        ('num_workers', -1), ('stage2_steps', -3),
                                        ('lr', 0.0)])
def test_unusable_train_values_stop_start_up_naming_the_key(tiny_cfg, tmp_path, key, value):
    cfg = copy.deepcopy(tiny_cfg)
    cfg['train'][key] = value
    with pytest.raises(ValueError, match=f'train.{key}='):
        train.Trainer(cfg, tmp_path / 'run', 'sim_only')
    assert not (tmp_path / 'run').exists()
    assert train.main(['--config', 'test', '--run-dir', str(tmp_path / 'cli'),
                       '--set', f'train.{key}={value}']) == 2


def test_stage2_alone_needs_stage1(tiny_cfg, tmp_path):
    assert train.main(['--config', 'test', '--run-dir', str(tmp_path), '--stage', '2',
                       '--set', f'data.sim.root={tiny_cfg["data"]["sim"]["root"]}']) == 2


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        train.main(['--help'])
    text = capsys.readouterr().out
    for opt in ('--config', '--stage', '--method', '--seed', '--run-dir', '--resume', '--set',
                '--device', '--deterministic', '--no-progress'):
        assert opt in text
    assert train.main(['--config', 'test', '--set', 'train.no_such_key=1']) == 2


def test_checkpoint_round_trip_keeps_shared_layers_and_optimizer(tmp_path):
    cfg = load_config('test')
    net = TwinVAE(cfg['model'])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.zeros(1, 3, 128, 128))[0].sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 'x_last', net, opt, {'step': 7, 'note': [1, 2]})
    save_checkpoint(tmp_path, 'x_last', net, opt, {'step': 8})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'x_last.000000008.optim.pt', 'x_last.000000008.safetensors', 'x_last.json']
    other = TwinVAE(cfg['model'])
    opt2 = torch.optim.Adam(other.parameters(), lr=1e-3)
    record = load_checkpoint(tmp_path, 'x_last', other, opt2)
    assert record['step'] == 8 and read_record(tmp_path, 'x_last')['tag'] == 'x_last'
    # Shared layers are still one module after loading.
    assert other.enc_real.layers[-1] is other.enc_sim.layers[-1]
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.state_dict()['state'].keys() == opt.state_dict()['state'].keys()
