"""DDP: two gloo CPU processes under torchrun train to identical weights on disjoint shards."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.train_data import global_batch, rank_batch

REPO = Path(__file__).resolve().parent.parent
#: For the torchrun children; faulthandler: a worker that aborts prints where (Python stacks
#: of every thread).
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'PYTHONFAULTHANDLER': '1'}

SCRIPT = '''
import json, sys
import torch.distributed as dist
from safetensors.torch import save_file
from sim2real_perception.config import load_config
from training.checkpoint import _state_tensors
from training.train import Trainer, exit_process
from training.train_data import rank_batch

data, run_dir = sys.argv[1], sys.argv[2]
cfg = load_config('test', [f'data.sim.root={data}', f'data.real.root={data}',
                           f'data.eval.root={data}', 'data.eval.val_fraction=0.25',
                           'train.stage1_steps=3', 'train.stage2_steps=2',
                           'train.bn_recalibration_batches=0'])
trainer = Trainer(cfg, run_dir, 'twin_vae')
summary = trainer.run('all')
rank = dist.get_rank()
save_file(_state_tensors(trainer.net), f'{run_dir}/rank{rank}.safetensors')
shards = [None, None]
dist.all_gather_object(shards, [i for _, i in rank_batch(8, 2, 2, rank, 0, 1, 1)])
if rank == 0:
    json.dump({'shards': shards, 'summary': summary}, open(f'{run_dir}/ddp.json', 'w'))
trainer.close()
exit_process(0)
'''


def test_round_robin_shards_partition_the_global_batch():
    for step in range(7):
        _, glob = global_batch(10, 2, 2, 0, 1, step)
        parts = [[i for _, i in rank_batch(10, 2, 2, r, 0, 1, step)] for r in range(2)]
        assert sorted(parts[0] + parts[1]) == sorted(glob)
        assert not set(parts[0]) & set(parts[1])
    # One epoch (2 steps of 4 over 10 items, drop-last) visits 8 distinct items.
    seen = [i for s in range(2) for i in global_batch(10, 2, 2, 0, 1, s)[1]]
    assert len(set(seen)) == 8


def test_torchrun_two_gloo_processes(tmp_path):
    from training.data.make_procedural import generate
    data = tmp_path / 'data'
    generate(data, sim_frames=8, real_frames=8, height=128, width=128, seed=4,
             frames_per_sequence=4, workers=1)
    script = tmp_path / 'ddp_run.py'
    script.write_text(SCRIPT)
    run_dir = tmp_path / 'run'
    torchrun = Path(sys.executable).with_name('torchrun')
    proc = subprocess.run([str(torchrun), '--standalone', '--nproc_per_node=2', str(script),
                           str(data), str(run_dir)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (load_file(str(run_dir / f'rank{r}.safetensors')) for r in range(2))
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), 'ranks diverged'
    info = json.loads((run_dir / 'ddp.json').read_text())
    a, b = info['shards']
    assert len(a) == len(b) == 2 and not set(a) & set(b)
    # Rank 0 alone logs: every step appears once.
    rows = (run_dir / 'logs' / 'stage1.csv').read_text().splitlines()[1:]
    assert [int(r.split(',')[0]) for r in rows] == [1, 2, 3]
    from sim2real_perception.model_io import load_depth_seg_net
    load_depth_seg_net(run_dir / 'export')


def test_torchrun_cli_exits_with_the_run_status_and_prints_one_summary(tmp_path):
    from training.data.make_procedural import generate
    data = tmp_path / 'data'
    generate(data, sim_frames=8, real_frames=8, height=128, width=128, seed=5,
             frames_per_sequence=4, workers=1)
    torchrun = Path(sys.executable).with_name('torchrun')
    common = [str(torchrun), '--standalone', '--nproc_per_node=2', '-m', 'training.train',
              '--config', 'test', '--method', 'sim_only', '--no-progress']
    sets = ['--set', f'data.sim.root={data}', f'data.real.root={data}',
            f'data.eval.root={data}', 'data.eval.val_fraction=0.25', 'train.supervised_steps=2',
            'train.bn_recalibration_batches=0']
    proc = subprocess.run(common + ['--run-dir', str(tmp_path / 'run')] + sets, cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    assert len(summaries) == 1 and summaries[0]['method'] == 'sim_only'
    assert (tmp_path / 'run' / 'export' / 'model.safetensors').is_file()
    # A bad config is still exit code 2 from every worker, not a finalisation crash.
    bad = subprocess.run(common + ['--run-dir', str(tmp_path / 'bad')] + sets
                         + ['train.batch_size=-1'], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and 'error:' in bad.stderr
