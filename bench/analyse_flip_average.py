"""Does averaging a frame with its mirror image help (monodepth2's post-processing)?

Test-time flip averaging is the cheapest known accuracy gain for a dense network trained with
random flips: run the frame and its left-right mirror, mirror the second output back and
average (here the class logits and the encoded depth, before the argmax and the depth
decoding). It doubles the inference cost, so it only earns a place in the node if it moves
the transfer benchmark's figures. This script scores the exports of
``python bench/bench_transfer.py`` on the same real-style val split with and without it, as
``training.evaluate`` does, and writes ``bench/results/flip_average.json`` and ``.md``.
It trains nothing (about 10 s per model and mode on two cores). See docs/benchmarks.md.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.analyse_depth_errors import (add_export_arguments,  # noqa: E402
                                        dataset_and_exports, save_results)

DEFAULT_ROWS = ('sim_only', 'oracle', 'sim_only_region', 'sim_only_region_kitti',
                'sim_only_region_kitti_bld')
MODES = ('plain', 'flip')


class FlipAveraged(nn.Module):
    """A DepthSegNet whose heads see the frame and its mirror; outputs averaged, then decoded."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image_u8):
        x = self.net.normalise(image_u8)
        n = x.shape[0]
        depth_t, logits = self.net.heads(torch.cat([x, x.flip(-1)]))
        return self.net.outputs(0.5 * (depth_t[:n] + depth_t[n:].flip(-1)),
                                0.5 * (logits[:n] + logits[n:].flip(-1)))


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_flip_average.py',
        description='Score the exports of python bench/bench_transfer.py on the real-style '
                    'val split with and without test-time flip averaging; writes '
                    'flip_average.json/.md (docs/benchmarks.md).')
    add_export_arguments(p, DEFAULT_ROWS)
    p.set_defaults(seeds=[0, 1, 2])
    p.add_argument('--config', default='cpu',
                   help='preset: data and eval settings, as bench_transfer.py used '
                        '(default: cpu)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where flip_average.json/.md go (default: bench/results)')
    return p


def score(exports, cfg, mode):
    """Return {(row, seed): (AbsRel, mIoU)} of every export in one inference mode."""
    from sim2real_perception.predictor import Predictor
    from training.evaluate import eval_settings, evaluate_models
    models, predictors = {}, {}
    for row, by_seed in exports.items():
        for seed, export in by_seed.items():
            name = f'{row}_s{seed}'
            models[name] = export
            predictors[name] = Predictor.from_path(export, backend='torch', device='cpu')
            if mode == 'flip':
                predictors[name].runner.net = FlipAveraged(predictors[name].runner.net)
    settings = eval_settings(cfg, split='val', figure_rows=0, backend='torch', device='cpu')
    results, _ = evaluate_models(models, cfg['data']['eval'], settings, predictors,
                                 progress=False)
    return {(row, seed): (results[f'{row}_s{seed}']['depth']['abs_rel'],
                          results[f'{row}_s{seed}']['segmentation']['miou'])
            for row, by_seed in exports.items() for seed in by_seed}


def main(argv=None):
    """Score both modes; print and save the table."""
    args = build_parser().parse_args(argv)
    from sim2real_perception.config import load_config
    exports = dataset_and_exports(args)
    if exports is None:
        return 2
    root = str(Path(args.data).resolve())
    cfg = load_config(args.config, [f'data.{s}.root={root}' for s in ('sim', 'real', 'eval')])
    scores = {mode: score(exports, cfg, mode) for mode in MODES}
    report = {'rows': {}, 'seeds': args.seeds, 'config': args.config}
    md = ['| row | seeds | AbsRel plain | AbsRel flip | mIoU plain | mIoU flip |',
          '|---|---:|---:|---:|---:|---:|']
    for row, by_seed in exports.items():
        seeds = sorted(by_seed)
        entry = {mode: {'abs_rel': float(np.mean([scores[mode][row, s][0] for s in seeds])),
                        'miou': float(np.mean([scores[mode][row, s][1] for s in seeds])),
                        'per_seed': [list(scores[mode][row, s]) for s in seeds]}
                 for mode in MODES}
        report['rows'][row] = {'seeds': seeds, **entry}
        md.append(f'| {row} | {len(seeds)} | {entry["plain"]["abs_rel"]:.3f} | '
                  f'{entry["flip"]["abs_rel"]:.3f} | {entry["plain"]["miou"]:.3f} | '
                  f'{entry["flip"]["miou"]:.3f} |')
    save_results(args.results, 'flip_average', report,
                 'Test-time flip averaging on the real-style val split (mean over seeds; '
                 '`python bench/analyse_flip_average.py`):', '\n'.join(md) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
