"""Checkpoint writes that fail halfway: disk full at each write, SIGKILL during each write.

Faults are injected at ``training.checkpoint._put``, the one place checkpoint bytes go to
disk: the faulty version writes half of the file for real, then raises ENOSPC or SIGKILLs
its own process. The previous checkpoint must stay loadable, bit for bit, and a real
``training.train --resume`` must continue from it and say which checkpoint it used.
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import checkpoint
from training.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
WRITES = ('safetensors', 'optim.pt', 'json')  # the order save_checkpoint writes them


def trained_net(seed):
    """Return a small conv net with BatchNorm and an Adam that took one step.

    (``test_train.py`` round-trips the real TwinVAE; here the net only has to be quick to
    build in every killed subprocess.)
    """
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
                              torch.nn.Conv2d(16, 4, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(2, 3, 24, 24)).sum().backward()
    opt.step()
    return net, opt


def saved_state(net, opt):
    """Return the tensors a checkpoint of ``(net, opt)`` must give back, by name."""
    state = {f'net.{k}': v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    for i, s in opt.state_dict()['state'].items():
        state[f'opt.{i}'] = s['exp_avg'].clone().contiguous()
    return state


def snapshot(ckpt_dir, tag='x_last'):
    """Return (record, weights, optimizer state) of a checkpoint, loaded as resume would."""
    net, opt = trained_net(99)
    record = load_checkpoint(ckpt_dir, tag, net, opt)
    return record, {k: v.clone() for k, v in net.state_dict().items()}, opt.state_dict()


def assert_same(a, b):
    assert a[0]['step'] == b[0]['step'] and a[0]['weights'] == b[0]['weights']
    assert a[1].keys() == b[1].keys()
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    sa, sb = a[2]['state'], b[2]['state']
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i]['exp_avg'], sb[i]['exp_avg']) for i in sa)


def half_then(fault):
    """Return a ``_put`` that writes half a file, then calls ``fault()``, at ``fault.at``."""
    real = checkpoint._put
    calls = []

    def put(fh, data):
        calls.append(fh.name)
        if fault.at is not None and fault.at in Path(fh.name).name:
            fh.write(data[:len(data) // 2])
            fh.flush()
            fault()
        return real(fh, data)
    put.calls = calls
    return put


@pytest.mark.parametrize('same_step', [False, True])
@pytest.mark.parametrize('which', WRITES)
def test_disk_full_at_each_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, which,
                                                               same_step):
    net, opt = trained_net(0)
    save_checkpoint(tmp_path, 'x_last', net, opt, {'step': 4})
    before = snapshot(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    net2, opt2 = trained_net(1)  # different weights and optimizer state

    def disk_full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    disk_full.at = which
    monkeypatch.setattr(checkpoint, '_put', half_then(disk_full))
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(tmp_path, 'x_last', net2, opt2, {'step': 4 if same_step else 6})
    message = str(err.value)
    assert 'No space left on device' in message and which in message
    assert f'previous checkpoint {tmp_path / "x_last.json"} (step 4) is intact' in message
    # Nothing half-written stays behind to keep the disk full, and nothing of the old is lost.
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert_same(snapshot(tmp_path), before)
    # The next save (space freed) works and replaces the old checkpoint entirely.
    monkeypatch.undo()
    save_checkpoint(tmp_path, 'x_last', net2, opt2, {'step': 4 if same_step else 6})
    after = snapshot(tmp_path)
    assert all(torch.equal(after[1][k], v) for k, v in net2.state_dict().items())
    assert len(list(tmp_path.iterdir())) == 3


KILLED_SAVE = r'''
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.join(sys.argv[1], 'test'))
from training import checkpoint
from safetensors.torch import save_file
from test_checkpoint_faults import half_then, saved_state, trained_net
ckpt, which, same_step = Path(sys.argv[2]), sys.argv[3], sys.argv[4] == '1'
net, opt = trained_net(0)
checkpoint.save_checkpoint(ckpt, 'x_last', net, opt, {'step': 4})
net2, opt2 = trained_net(1)
save_file(saved_state(net, opt), str(ckpt.parent / 'old.safetensors'))
save_file(saved_state(net2, opt2), str(ckpt.parent / 'new.safetensors'))
def die():
    os.kill(os.getpid(), signal.SIGKILL)
die.at = which if which != 'commit' else None
checkpoint._put = half_then(die)
if which == 'commit':  # killed after the JSON rename, before the directory fsync
    checkpoint._fsync_dir = lambda path: die()
checkpoint.save_checkpoint(ckpt, 'x_last', net2, opt2, {'step': 4 if same_step else 6})
print('not killed')
'''


@pytest.mark.parametrize('which, same_step', [(w, True) for w in WRITES + ('commit',)]
                         + [('optim.pt', False), ('commit', False)])
def test_sigkill_during_each_write_leaves_old_or_new_never_a_mix(tmp_path, which, same_step):
    proc = subprocess.run([sys.executable, '-c', KILLED_SAVE, str(REPO), str(tmp_path / 'c'),
                           which, '1' if same_step else '0'], capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == -9, proc.stdout + proc.stderr
    got = snapshot(tmp_path / 'c')
    want = load_file(str(tmp_path / ('new' if which == 'commit' else 'old')) + '.safetensors')
    assert got[0]['step'] == (4 if which != 'commit' or same_step else 6)
    assert all(torch.equal(got[1][k], want[f'net.{k}']) for k in got[1])
    assert all(torch.equal(s['exp_avg'], want[f'opt.{i}']) for i, s in got[2]['state'].items())
    # The next save clears what the killed one left (its temporary file).
    net, opt = trained_net(2)
    save_checkpoint(tmp_path / 'c', 'x_last', net, opt, {'step': 8})
    assert sorted(p.name for p in (tmp_path / 'c').iterdir()) == [
        'x_last.000000008.optim.pt', 'x_last.000000008.safetensors', 'x_last.json']


FAULTY_TRAIN = r'''
import errno, os, signal, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.join(sys.argv[1], 'test'))
from training import checkpoint, train
from test_checkpoint_faults import half_then
kind, at = sys.argv[2], sys.argv[3]
def fault():
    if kind == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
fault.at = at
checkpoint._put = half_then(fault)
sys.exit(train.main(sys.argv[4:]))
'''


def train_args(run_dir, data, *extra):
    return ['--config', 'test', '--stage', '1', '--run-dir', str(run_dir), '--no-progress',
            '--set', f'data.sim.root={data}', f'data.real.root={data}',
            f'data.eval.root={data}', 'train.stage1_steps=4', 'train.ckpt_every=1', *extra]


def run_train(args, fault=None, at=''):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'training.train', *args] if fault is None else \
        [sys.executable, '-c', FAULTY_TRAIN, str(REPO), fault, at, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('fault, at', [('disk_full', 'stage1_last.000000003.optim.pt'),
                                       ('kill', 'stage1_last.000000003.safetensors')])
def test_resume_continues_from_the_checkpoint_before_the_failed_write(tiny_data, tmp_path,
                                                                      fault, at):
    run = tmp_path / 'run'
    failed = run_train(train_args(run, tiny_data), fault, at)
    ck = run / 'checkpoints'
    record = json.loads((ck / 'stage1_last.json').read_text())
    assert record['step'] == 2 and not record['complete']
    if fault == 'kill':
        assert failed.returncode == -9, failed.stderr[-2000:]
    else:
        assert failed.returncode == 2, failed.stderr[-2000:]
        assert 'cannot write checkpoint' in failed.stderr
        assert f'previous checkpoint {ck / "stage1_last.json"} (step 2) is intact' \
            in failed.stderr
    assert load_file(str(ck / record['weights']))  # the step-2 weights, whole
    done = run_train(train_args(run, tiny_data, '--resume'))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f'[stage1] resuming at step 2/4 from {ck / "stage1_last.json"} '
            f'({record["weights"]})') in done.stderr
    final = json.loads((ck / 'stage1_last.json').read_text())
    assert final['step'] == 4 and final['complete']
    rows = (run / 'logs' / 'stage1.csv').read_text().splitlines()[1:]
    assert [int(r.split(',')[0]) for r in rows] == [1, 2, 3, 4]
