"""train.weight_average: the exported network is the mean of a stage's last steps (SWA)."""
import signal

import pytest
import torch
from torch import nn

from sim2real_perception.config import load_config
from sim2real_perception.model_io import load_depth_seg_net
from training import train
from training.weight_average import average_start, WeightAverage


def _small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_weight_average_by_hand():
    net = _small()
    avg = WeightAverage(net)
    assert avg.copy_to(net) is False   # nothing folded in yet: the net is left as it is
    seen = []
    for k in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(float(k + 1))
            net[1].running_mean.fill_(float(10 * k))
        net[1].num_batches_tracked.fill_(k)
        seen.append({n: t.clone() for n, t in net.state_dict().items()})
        avg.update(net)
    assert int(avg.count) == 3
    fresh = _small()
    assert avg.copy_to(fresh) is True
    state = fresh.state_dict()
    for name in ('0.weight', '0.bias', '1.weight', '1.running_mean', '1.running_var'):
        mean = sum(s[name] for s in seen) / 3
        torch.testing.assert_close(state[name], mean, atol=1e-6, rtol=0)
    assert int(state['1.num_batches_tracked']) == 2   # counters are copied, not averaged
    assert all(not p.requires_grad for p in avg.parameters())


def test_average_start_is_the_first_step_of_the_last_share():
    assert average_start({'weight_average': 0.0}, 850) is None
    assert average_start({}, 850) is None
    assert average_start({'weight_average': 0.5}, 850) == 425
    assert average_start({'weight_average': 0.25}, 4) == 3


def _sets(tiny_data, share, steps=4):
    return [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')] + [
        'data.eval.val_fraction=0.25', f'train.supervised_steps={steps}',
        'train.prior_frames=4', 'train.ckpt_every=1', 'train.monitor_frames=0',
        f'train.weight_average={share}']


def _export(summary):
    net = load_depth_seg_net(summary['export_dir'])[0]
    return {n: t.clone() for n, t in net.state_dict().items()}


def test_sim_only_exports_the_mean_of_its_last_steps_and_resumes_it(tiny_data, tmp_path,
                                                                    monkeypatch):
    folded, original = [], WeightAverage.update

    def recording(self, student):
        folded.append({n: p.detach().clone() for n, p in student.named_parameters()
                       if not n.startswith(('averaged.', 'teacher.'))})
        return original(self, student)
    monkeypatch.setattr(WeightAverage, 'update', recording)
    trainer = train.Trainer(load_config('test', _sets(tiny_data, 0.5)), tmp_path / 'a',
                            'sim_only')
    whole = trainer.run('all')
    trainer.close()
    assert len(folded) == 2   # steps 3 and 4 of 4
    exported = _export(whole)
    # Every deployed weight is the mean of the two folded states (the prior maps are fixed).
    averaged_any = False
    for name, value in trainer.net.named_parameters():
        if name.startswith(('averaged.', 'teacher.')):
            continue
        mean = (folded[0][name] + folded[1][name]) / 2
        torch.testing.assert_close(value.detach(), mean, atol=1e-6, rtol=0)
        averaged_any |= not torch.equal(folded[0][name], folded[1][name])
    assert averaged_any   # the two steps differ, so the mean is not the last step

    # Stopped after step 3 (the average holds one state), resumed: the same export.
    folded.clear()
    first = train.Trainer(load_config('test', _sets(tiny_data, 0.5)), tmp_path / 'b',
                          'sim_only')

    def stop_after_first_fold(self, student):
        out = recording(self, student)
        first.stop_signal = signal.SIGTERM
        return out
    monkeypatch.setattr(WeightAverage, 'update', stop_after_first_fold)
    with pytest.raises(SystemExit):
        first.run('all')
    first.close()
    monkeypatch.setattr(WeightAverage, 'update', recording)
    resumed = train.Trainer(load_config('test', _sets(tiny_data, 0.5)), tmp_path / 'b',
                            'sim_only', resume=True)
    again = resumed.run('all')
    resumed.close()
    assert int(resumed.net.averaged.count) == 2
    for name, value in _export(again).items():
        torch.testing.assert_close(value, exported[name], atol=1e-6, rtol=1e-5)


def test_weight_average_share_is_checked_at_start_up(tiny_data, tmp_path):
    for bad in ('1.0', '-0.1'):
        assert train.main(['--config', 'test', '--run-dir', str(tmp_path / bad), '--method',
                           'sim_only', '--set', *_sets(tiny_data, bad)]) == 2
