"""Training throughput: images/s per stage and preset (synthetic batches, no data loading).

Times full optimisation steps (forward of every loss term, backward, Adam) of stage 1
(twin-VAE), stage 2 (heads) and the supervised baselines, counting every input image (a
stage-1/2 step consumes ``batch`` real + ``batch`` sim images). Prints a table and writes
``bench/results/bench_train.json``.

    .venv/bin/python bench/bench_train.py                       # test + cpu presets, CPU
    .venv/bin/python bench/bench_train.py --presets paper --batch 2 --steps 1
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
from sim2real_perception.model import ModelConfig, TwinVAE  # noqa: E402
from training import losses  # noqa: E402

STAGES = ('stage1', 'stage2', 'supervised')


def _batch(mc, b, device, gen):
    shape = (b, 3, mc.height, mc.width)
    return {'image': torch.rand(shape, generator=gen).mul_(2).sub_(1).to(device),
            'depth': (torch.rand((b, 1, mc.height, mc.width), generator=gen) * 60).to(device),
            'labels': torch.randint(0, mc.num_classes, (b, mc.height, mc.width),
                                    generator=gen).to(device)}


def bench_stage(net, mc, stage, batch, steps, device, bf16):
    """Seconds per step (median of ``steps`` after one warm-up) and images per step."""
    gen = torch.Generator().manual_seed(0)
    a, b = _batch(mc, batch, device, gen), _batch(mc, batch, device, gen)
    trainable = {'stage1': [net.enc_real, net.enc_sim, net.dec_real, net.dec_sim],
                 'stage2': [net.dec_depth, net.dec_seg, net.enc_real, net.enc_sim],
                 'supervised': [net.enc_real, net.dec_depth, net.dec_seg]}[stage]
    for p in net.parameters():
        p.requires_grad_(False)
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]   # shared layers once
    opt = torch.optim.Adam(params, lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if stage == 'stage1':
                terms, _ = losses.stage1_terms(net, a['image'], b['image'])
            elif stage == 'stage2':
                terms, _ = losses.stage2_terms(net, a, b['image'], mc)
            else:
                terms, _ = losses.supervised_terms(net, a, mc)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
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
        cfg = load_config(preset)
        mc = ModelConfig.from_dict(cfg['model'])
        batch = args.batch or int(cfg['train']['batch_size'])
        torch.manual_seed(0)
        net = TwinVAE(mc).to(device).train()
        for stage in STAGES:
            sec, images = bench_stage(net, mc, stage, batch, args.steps, device, bf16)
            rows.append({'preset': preset, 'stage': stage, 'batch': batch,
                         'resolution': f'{mc.height}x{mc.width}', 's_per_step': round(sec, 4),
                         'images_per_s': round(images / sec, 2)})
            r = rows[-1]
            print(f"{preset:6s} {stage:10s} batch {batch:3d} {r['resolution']:>8s} "
                  f"{r['s_per_step']:9.3f} s/step {r['images_per_s']:9.2f} images/s",
                  flush=True)
    result = {'device': str(device), 'bf16': bf16, 'torch': torch.__version__,
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
