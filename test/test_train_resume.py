"""Resume exactness (SIGKILL mid-epoch, SIGTERM), NaN handling: real training subprocesses."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent


def _overrides(data):
    return ['--set', f'data.sim.root={data}', f'data.real.root={data}',
            f'data.eval.root={data}', 'data.eval.val_fraction=0.25',
            'train.stage1_steps=4', 'train.stage2_steps=5', 'train.ckpt_every=1',
            'train.bn_recalibration_batches=1']


def _cmd(run_dir, data, *extra):
    return [sys.executable, '-m', 'training.train', '--config', 'test', '--deterministic',
            '--run-dir', str(run_dir), *_overrides(data), *extra]


def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}


def _weights(run_dir, tag='stage2_last'):
    record = json.loads((run_dir / 'checkpoints' / f'{tag}.json').read_text())
    return record, load_file(str(run_dir / 'checkpoints' / record['weights']))


def _wait_for(predicate, proc, timeout=120):
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, 'timed out waiting for a checkpoint'
        time.sleep(0.05)


def _record(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_killed_and_resumed_run_matches_uninterrupted(tiny_data, tmp_path):
    ref = tmp_path / 'ref'
    subprocess.run(_cmd(ref, tiny_data, '--no-progress'), cwd=REPO, env=_env(), check=True,
                   capture_output=True)

    run = tmp_path / 'run'
    ck = run / 'checkpoints'
    proc = subprocess.Popen(_cmd(run, tiny_data), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # SIGKILL in stage 1 once step 1 is checkpointed: mid-epoch (4 steps per epoch).
    _wait_for(lambda: (_record(ck / 'stage1_last.json') or {}).get('step', 0) >= 1, proc)
    proc.kill()
    proc.communicate()
    killed_at = _record(ck / 'stage1_last.json')
    assert killed_at['step'] < 4 and not killed_at['complete']

    # Resume, then stop it politely with SIGTERM once stage 2 has a checkpoint.
    proc = subprocess.Popen(_cmd(run, tiny_data, '--resume'), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (ck / 'stage2_last.json').is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 'stopped by signal' in err
    stopped = _record(ck / 'stage2_last.json')
    assert 1 <= stopped['step'] < 5

    done = subprocess.run(_cmd(run, tiny_data, '--resume', '--no-progress'), cwd=REPO,
                          env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'stage1] complete' in done.stderr and 'resuming at step' in done.stderr

    rec_ref, w_ref = _weights(ref)
    rec_run, w_run = _weights(run)
    assert rec_ref['step'] == rec_run['step'] == 5 and rec_run['complete']
    assert w_ref.keys() == w_run.keys()
    different = [k for k in w_ref if not torch.equal(w_ref[k], w_run[k])]
    assert not different, f'weights differ after resume: {different[:5]}'
    # The logs read as one run: every step once.
    rows = (run / 'logs' / 'stage1.csv').read_text().splitlines()[1:]
    assert [int(r.split(',')[0]) for r in rows] == list(range(1, 5))
    from sim2real_perception.model_io import load_depth_seg_net
    net, config = load_depth_seg_net(run / 'export')
    assert config['metadata']['method'] == 'twin_vae'
    assert config['metadata']['steps'] == {'stage1': 4, 'stage2': 5}

    # A NaN loss stops stage 2 naming the term and the last good checkpoint.
    bad = subprocess.run(_cmd(run, tiny_data, '--stage', '2', '--no-progress', '--set',
                              'loss.ce_real=.nan'),
                         cwd=REPO, env=_env(), capture_output=True, text=True)
    assert bad.returncode == 3, bad.stderr
    assert "loss term 'ce_real' is nan" in bad.stderr
    assert 'stage1_last.json' in bad.stderr
