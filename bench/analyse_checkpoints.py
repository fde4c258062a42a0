"""Score the intermediate checkpoints of benchmark runs: what a later stage starts from.

A run that self-trains (``train.self_train_steps``) labels the real frames with the network
its supervised stage ended with, so that network, the *teacher*, bounds what the stage can
reach; the benchmark only scores the final export. This script exports the named
checkpoint tags of ``python bench/bench_transfer.py``'s runs (by default ``supervised_last``
and ``self_train_last``) into ``--work`` and scores them on the real-style val split as
``training.evaluate`` does, and writes ``bench/results/checkpoints.json`` and ``.md``.
It trains nothing (about 10 s per checkpoint on two cores). See docs/benchmarks.md.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_ROWS = ('sim_only_region_kitti_st', 'sim_only_region_kitti_st850_b2')
DEFAULT_TAGS = ('supervised_last', 'self_train_last')


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_checkpoints.py',
        description='Export and score checkpoints of python bench/bench_transfer.py runs '
                    '(the network each stage ended with) on the real-style val split; '
                    'writes checkpoints.json/.md (docs/benchmarks.md).')
    p.add_argument('--runs', default='outputs/bench_transfer/compare/runs',
                   help='training.compare runs folder: <runs>/<row>_s<seed> '
                        '(default: %(default)s)')
    p.add_argument('--rows', nargs='+', default=list(DEFAULT_ROWS), metavar='ROW',
                   help=f'benchmark rows (default: {" ".join(DEFAULT_ROWS)})')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                   help='training seeds (default: 0 1 2)')
    p.add_argument('--tags', nargs='+', default=list(DEFAULT_TAGS), metavar='TAG',
                   help=f'checkpoint tags (default: {" ".join(DEFAULT_TAGS)})')
    p.add_argument('--work', default='outputs/analyse_checkpoints',
                   help='where the checkpoints are exported (default: %(default)s)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where checkpoints.json/.md go (default: bench/results)')
    return p


def export_checkpoint(run_dir, tag, out_dir):
    """Export checkpoint ``tag`` of ``run_dir`` as a model directory; return its record.

    The network is rebuilt from the config the checkpoint records, so the exported model is
    the one the run trained, prior maps included (they are weights).
    """
    from sim2real_perception.model import ModelConfig
    from sim2real_perception.model_io import export_model_dir
    from training.checkpoint import load_checkpoint, read_record
    from training.train import build_net
    record = read_record(Path(run_dir) / 'checkpoints', tag)
    cfg = record['config']
    net = build_net(ModelConfig.from_dict(cfg['model']), cfg['loss'], record['method'])
    load_checkpoint(Path(run_dir) / 'checkpoints', tag, net)
    export_model_dir(net.eval(), out_dir, metadata={'run': str(run_dir), 'tag': tag,
                                                    'step': record['step']})
    return record


def find_checkpoints(runs, rows, seeds, tags):
    """Return [(row, seed, tag, run_dir)] of the checkpoints present; note the missing."""
    from training.checkpoint import read_record
    found = []
    for row in rows:
        for seed in seeds:
            run = Path(runs) / f'{row}_s{seed}'
            for tag in tags:
                if read_record(run / 'checkpoints', tag) is not None:
                    found.append((row, seed, tag, run))
                else:
                    print(f'note: no checkpoint {tag} in {run}: skipped')
    return found


def main(argv=None):
    """Export, score, print and save the table."""
    args = build_parser().parse_args(argv)
    from bench.analyse_depth_errors import save_results
    from training.evaluate import eval_settings, evaluate_models
    found = find_checkpoints(args.runs, args.rows, args.seeds, args.tags)
    if not found:
        print(f'error: no checkpoints {" ".join(args.tags)} under {args.runs} for rows '
              f'{" ".join(args.rows)}: create them with python bench/bench_transfer.py',
              file=sys.stderr)
        return 2
    models, steps, eval_cfg = {}, {}, None
    for row, seed, tag, run in found:
        name = f'{row}_s{seed}/{tag}'
        record = export_checkpoint(run, tag, Path(args.work) / name)
        models[name], steps[name] = Path(args.work) / name, int(record['step'])
        eval_cfg = eval_cfg or record['config']['data']['eval']
    settings = eval_settings(None, split='val', figure_rows=0, backend='torch', device='cpu')
    results, _ = evaluate_models(models, eval_cfg, settings, progress=False)
    report = {'runs': [], 'rows': {}}
    for row, seed, tag, _ in found:
        name = f'{row}_s{seed}/{tag}'
        r = results[name]
        report['runs'].append({'row': row, 'seed': seed, 'tag': tag, 'step': steps[name],
                               'abs_rel': r['depth']['abs_rel'],
                               'miou': r['segmentation']['miou']})
    md = ['| row | checkpoint | seeds | AbsRel | mIoU | per seed (AbsRel / mIoU) |',
          '|---|---|---:|---:|---:|---|']
    for row in args.rows:
        for tag in args.tags:
            runs = [r for r in report['runs'] if r['row'] == row and r['tag'] == tag]
            if not runs:
                continue
            mean = {k: float(np.mean([r[k] for r in runs])) for k in ('abs_rel', 'miou')}
            report['rows'].setdefault(row, {})[tag] = {**mean, 'seeds': [r['seed'] for r in runs]}
            per_seed = ', '.join(f's{r["seed"]} step {r["step"]}: {r["abs_rel"]:.3f} / '
                                 f'{r["miou"]:.3f}' for r in runs)
            md.append(f'| {row} | {tag} | {len(runs)} | {mean["abs_rel"]:.3f} | '
                      f'{mean["miou"]:.3f} | {per_seed} |')
    save_results(args.results, 'checkpoints', report,
                 'Checkpoints of benchmark runs on the real-style val split (mean over seeds; '
                 f'`python bench/analyse_checkpoints.py --rows {" ".join(args.rows)}`):',
                 '\n'.join(md) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
