"""Training throughput: images/s per stage and preset (synthetic batches, no data loading).

Times full optimisation steps (forward of every loss term, backward, Adam) of stage 1
(twin-VAE), stage 2 (heads) and the supervised baselines as the preset configures them (the
trainer's loss module, critic and trainable modules: lean stage 2, self-training, ...),
counting every input image (a stage-1/2 step consumes ``batch`` real + ``batch`` sim
images). Prints a table and writes ``bench/results/bench_train.json``.

    .venv/bin/python bench/bench_train.py                       # test + cpu presets, CPU
    .venv/bin/python bench/bench_train.py --presets paper --batch 2 --steps 1
    .venv/bin/python bench/bench_train.py --presets cpu --set loss.s2_kl_sim=0
    .venv/bin/python bench/bench_train.py --device cuda         # bf16 autocast on CUDA
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sim2real_perception.config import load_config  # noqa: E402
from sim2real_perception.model import ModelConfig  # noqa: E402
from training.losses import weighted_total  # noqa: E402
from training.train import build_net, set_trainable, stage_weights, StageLoss  # noqa: E402
from training.teacher import attach_teacher  # noqa: E402

STAGES = ('stage1', 'stage2', 'supervised')


def _batch(mc, b, device, gen):
    shape = (b, 3, mc.height, mc.width)
    return {'image': torch.rand(shape, generator=gen).mul_(2).sub_(1).to(device),
            'depth': (torch.rand((b, 1, mc.height, mc.width), generator=gen) * 60).to(device),
            'labels': torch.randint(0, mc.num_classes, (b, mc.height, mc.width),
                                    generator=gen).to(device)}


def bench_stage(net, cfg, stage, batch, steps, device, bf16):
    """Seconds per step (median of ``steps`` after one warm-up) and images per step."""
    mc, t = ModelConfig.from_dict(cfg['model']), cfg['train']
    gen = torch.Generator().manual_seed(0)
    a, b = _batch(mc, batch, device, gen), _batch(mc, batch, device, gen)
    teacher = attach_teacher(net, cfg['loss']) if stage == 'stage2' else None
    opt = torch.optim.Adam(set_trainable(net, stage, t, cfg['loss']), lr=1e-4)
    module = StageLoss(net, stage, mc, cfg['loss'], t['stage2_real_input'], t['stage2_lean'])
    weights = stage_weights(stage, cfg['loss'], t)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            terms, _ = module(a) if stage == 'supervised' else module(a, b)
        opt.zero_grad(set_to_none=True)
        weighted_total(terms, weights)[0].backward()
        opt.step()
        if teacher is not None:
            teacher.update(net)
        if device.type == 'cuda':
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    images = batch * (1 if stage == 'supervised' else 2)
    return times[len(times) // 2], images


def build_parser():
    """Return the command-line parser."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='\n'.join(__doc__.splitlines()[6:])
                                + '\nDocs: docs/benchmarks.md#training-throughput')
    p.add_argument('--presets', default='test,cpu',
                   help='comma-separated presets (test, cpu, paper); default test,cpu')
    p.add_argument('--batch', type=int, default=0,
                   help='frames per domain per step (0 = the preset train.batch_size)')
    p.add_argument('--steps', type=int, default=3, help='timed steps per stage (median)')
    p.add_argument('--device', default='cpu', help='cpu | cuda (bf16 autocast on CUDA)')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help='config overrides for every preset, e.g. loss.s2_kl_sim=0')
    p.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'bench_train.json'),
                   help='JSON output path')
    return p


def main(argv=None):
    """Run the benchmark (``--help`` for options)."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    bf16 = device.type == 'cuda'
    rows = []
    for preset in args.presets.split(','):
        cfg = load_config(preset, args.set)
        mc = ModelConfig.from_dict(cfg['model'])
        batch = args.batch or int(cfg['train']['batch_size'])
        torch.manual_seed(0)
        net = build_net(mc, cfg['loss']).to(device).train()
        for stage in STAGES:
            sec, images = bench_stage(net, cfg, stage, batch, args.steps, device, bf16)
            rows.append({'preset': preset, 'stage': stage, 'batch': batch,
                         'resolution': f'{mc.height}x{mc.width}', 's_per_step': round(sec, 4),
                         'images_per_s': round(images / sec, 2)})
            r = rows[-1]
            print(f"{preset:6s} {stage:10s} batch {batch:3d} {r['resolution']:>8s} "
                  f"{r['s_per_step']:9.3f} s/step {r['images_per_s']:9.2f} images/s",
                  flush=True)
    result = {'device': str(device), 'bf16': bf16, 'torch': torch.__version__,
              'overrides': args.set,
              'threads': torch.get_num_threads(), 'cpu': platform.processor() or
              platform.machine(), 'cpu_count': os.cpu_count(),
              'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
              'loadavg_1min': os.getloadavg()[0], 'rows': rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
