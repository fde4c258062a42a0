"""Label-learning speed: which part of the twin-VAE recipe slows its segmentation head.

In the transfer benchmark the previous default twin-VAE's labels learned slower than
sim_only's on the same sim frames (mIoU on the sim val split 0.360 against 0.447, and still
rising at its last step). This script trains short stage-2 runs of the ``cpu`` preset's
twin-VAE on the benchmark's data, each with one part of the recipe switched on or off, and
reports the
monitor mIoU / AbsRel (16 real-style val frames) every ``--every`` steps and the training
cross entropy of the sim frames (``ce_real``). Every run sees the same batches in the same
order (same seed), so the cross entropies are comparable step by step.

Variants (overrides on top of the preset; ``bare`` = the lean stage 2 with none of them):

- ``previous``: the previous default (a 20-step stage-1 warm start and the latent MMD of
  eq 13 on top of the shipped recipe);
- ``default``: the preset as shipped (1-step stage 1, no latent MMD, critic and
  self-training on);
- ``bare``: a 1-step stage 1 and no self-training, critic or latent MMD;
- ``bare_warm``, ``bare_pseudo_depth``, ``bare_pseudo_ce``, ``bare_adv``, ``bare_mmd``: bare
  with that one part back.

``python bench/diagnose_label_speed.py`` needs the benchmark's data (``python
bench/bench_transfer.py`` makes it), writes ``bench/results/label_speed.json`` and ``.md``
and takes about 1.5 min per variant at 60 steps on 2 CPU cores. See docs/benchmarks.md.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Everything off but the heads' supervision on the sim frames (and the tiny KL terms).
BARE = ['train.stage1_steps=1', 'loss.s2_pseudo_ce=0.0', 'loss.s2_pseudo_depth=0.0',
        'loss.s2_adv=0.0', 'loss.s2_mmd_s2r=0.0']
VARIANTS = {
    'previous': ['train.stage1_steps=20', 'loss.s2_mmd_s2r=1.0'],
    'default': [],
    'bare': BARE,
    'bare_warm': BARE + ['train.stage1_steps=20'],
    'bare_pseudo_depth': BARE + ['loss.s2_pseudo_depth=1.0'],
    'bare_pseudo_ce': BARE + ['loss.s2_pseudo_ce=1.0'],
    'bare_adv': BARE + ['loss.s2_adv=0.1'],
    'bare_mmd': BARE + ['loss.s2_mmd_s2r=1.0'],
}


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/diagnose_label_speed.py',
        description="Which part of the twin-VAE recipe slows its label learning: short "
                    'stage-2 runs on the transfer benchmark\'s data with one part switched '
                    'on or off; monitor mIoU/AbsRel and the training cross entropy per step; '
                    'writes label_speed.json/.md (docs/benchmarks.md).')
    p.add_argument('--data', default='outputs/bench_transfer/data',
                   help='the dataset bench_transfer.py generates (default: %(default)s)')
    p.add_argument('--out', default='outputs/label_speed',
                   help='run folders, one per variant (default: %(default)s)')
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS),
                   metavar='VARIANT',
                   help=f'variants to train (default: {" ".join(VARIANTS)})')
    p.add_argument('--steps', type=int, default=60,
                   help='stage-2 steps per run (cosine lr over them; default: %(default)s)')
    p.add_argument('--every', type=int, default=20,
                   help='steps between monitor scores (default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='training seed (default: 0)')
    p.add_argument('--config', default='cpu', help='preset (default: cpu)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where label_speed.json/.md go (default: bench/results)')
    return p


def read_csv(path):
    """Return the rows of a training CSV log as dicts (empty when missing)."""
    try:
        with open(path, newline='') as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def train_variant(args, name):
    """Train one variant from scratch; return its monitor rows, CE per step and wall time."""
    data = Path(args.data).resolve()
    run_dir = Path(args.out) / name
    sets = [f'data.{s}.root={data}' for s in ('sim', 'real', 'eval')] + [
        f'train.stage2_steps={args.steps}', f'train.monitor_every={args.every}',
        'train.bn_recalibration_batches=0', *VARIANTS[name]]
    cmd = [sys.executable, '-m', 'training.train', '--config', args.config, '--method',
           'twin_vae', '--seed', str(args.seed), '--run-dir', str(run_dir), '--no-progress',
           '--set', *sets]
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
    shutil.rmtree(run_dir, ignore_errors=True)   # a fresh run: same batches as the others
    t0 = time.perf_counter()
    log = Path(args.out) / f'{name}.log'
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'w') as f:
        rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise RuntimeError(f'{name}: training failed (exit {rc}); see {log}')
    monitor = [{'step': int(r['step']), 'miou': float(r['miou']),
                'abs_rel': float(r['abs_rel'])}
               for r in read_csv(run_dir / 'logs' / 'monitor.csv') if r['stage'] == 'stage2']
    ce = {int(r['step']): float(r['ce_real'])
          for r in read_csv(run_dir / 'logs' / 'stage2.csv')}
    return {'overrides': VARIANTS[name], 'monitor': monitor, 'ce_real': ce,
            'wall_s': time.perf_counter() - t0}


def markdown(result):
    """Return the table: per variant, monitor mIoU and AbsRel at each step, CE at the end."""
    steps = sorted({m['step'] for v in result['variants'].values() for m in v['monitor']})
    lines = [f'Twin-VAE stage 2, {result["steps"]} steps, seed {result["seed"]}: monitor '
             'mIoU / AbsRel (16 real-style val frames) at each step; training cross entropy of '
             'the sim frames, mean of the logged steps in the second half.', '',
             '| variant | ' + ' | '.join(f'step {s}' for s in steps) + ' | CE 2nd half |',
             '|---|' + '---:|' * (len(steps) + 1)]
    for name, v in result['variants'].items():
        by_step = {m['step']: m for m in v['monitor']}
        cells = [f'{by_step[s]["miou"]:.3f} / {by_step[s]["abs_rel"]:.3f}' if s in by_step
                 else '-' for s in steps]
        late = [c for s, c in v['ce_real'].items() if s > result['steps'] / 2]
        ce = f'{sum(late) / len(late):.2f}' if late else '-'
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {ce} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Train the variants one after the other; exit 2 when the data is missing."""
    args = build_parser().parse_args(argv)
    if not (Path(args.data) / 'manifest.json').is_file():
        print(f'error: no dataset at {args.data}: create it with python '
              'bench/bench_transfer.py', file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    variants = {}
    for name in args.variants:
        variants[name] = train_variant(args, name)
        last = variants[name]['monitor'][-1] if variants[name]['monitor'] else {}
        print(f'[label_speed] {name}: {last} ({variants[name]["wall_s"]:.0f} s)', flush=True)
    result = {'data': str(args.data), 'config': args.config, 'seed': args.seed,
              'steps': args.steps, 'every': args.every, 'variants': variants,
              'total_s': time.perf_counter() - t0}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'label_speed.json').write_text(json.dumps(result, indent=2) + '\n')
    (out / 'label_speed.md').write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
