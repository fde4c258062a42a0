"""Unseen-drives check: how much of the oracle's lead is having trained on the test drives.

The transfer benchmark's real-style val split is the last 10 % of each of its 12 drives, so
the oracle, which trains on the first 90 % of the same drives, is scored on streets it has
seen from a few metres back; the sim-trained rows have never seen them. This script renders
a second real-style test set from drives none of the runs trained on (the benchmark's
generator and camera, another seed, ``--drives`` drives of ``--frames-per-drive`` frames),
scores the benchmark's exports on it and on the benchmark's own val split with
``training.evaluate``, and writes both tables and their gap fractions to
``bench/results/unseen_drives.json`` and ``.md``. It trains nothing.

    python bench/analyse_unseen_drives.py --rows mean_prior sim_only oracle \\
        sim_only_region_kitti --seeds 0 1 2
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.analyse_depth_errors import add_export_arguments, dataset_and_exports  # noqa: E402

DEFAULT_ROWS = ('mean_prior', 'sim_only', 'oracle', 'sim_only_region_kitti')
#: The benchmark's generator seed is 0; the unseen drives use another.
UNSEEN_SEED = 1000
METRICS = (('abs_rel', 'depth'), ('miou', 'segmentation'))


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_unseen_drives.py',
        description="Score the transfer benchmark's exports on real-style drives no run "
                    "trained on and on the benchmark's val split; writes "
                    'unseen_drives.json/.md (docs/benchmarks.md).')
    add_export_arguments(p, DEFAULT_ROWS)
    p.add_argument('--unseen', default='outputs/bench_transfer/data_unseen',
                   help='where the unseen drives are rendered (default: %(default)s)')
    p.add_argument('--drives', type=int, default=12, help='unseen drives (default: 12)')
    p.add_argument('--frames-per-drive', type=int, default=10,
                   help='frames per unseen drive (default: 10)')
    p.add_argument('--config', default='cpu', help='preset: eval settings (default: cpu)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where unseen_drives.json/.md go (default: bench/results)')
    return p


def render_unseen(folder, drives, per_drive, base=None):
    """Render the unseen real-style drives: the benchmark's look and camera (``base``: its
    data spec, default ``bench_transfer.DATA``) with another seed. Returns the spec."""
    if base is None:
        sys.path.insert(0, str(REPO / 'bench'))
        from bench_transfer import DATA as base
    from training.data.make_procedural import generate
    spec = {**base, 'sim_frames': 0, 'real_frames': drives * per_drive,
            'frames_per_sequence': per_drive, 'seed': UNSEEN_SEED}
    generate(folder, **spec)
    return spec


def score(exports, data_root, split, cfg):
    """Return {row: {seed: {abs_rel, miou}}} for every export on one real-style split."""
    from training.evaluate import evaluate_models, eval_settings
    models = {f'{row}@{seed}': str(path) for row, by_seed in exports.items()
              for seed, path in by_seed.items()}
    data = {**cfg['data']['eval'], 'root': str(Path(data_root).resolve())}
    settings = eval_settings(cfg, split=split, figure_rows=0, backend='torch', device='cpu')
    results, _ = evaluate_models(models, data, settings, progress=False)
    out = {}
    for name, result in results.items():
        row, seed = name.rsplit('@', 1)
        seg = result['segmentation']
        out.setdefault(row, {})[int(seed)] = {
            **{key: float(result[section][key]) for key, section in METRICS},
            'pixel_acc': float(seg['pixel_acc']),
            'label_change_share': float(seg['label_change_share']),
            'frames': int(result.get('frames', 0))}
    return out


def summary(per_seed):
    """Mean and sample std per row and metric (``training.compare``'s), and each row's
    sim_only -> oracle gap closed (``training.compare.gap_closed``)."""
    from training.compare import gap_closed, mean_std
    table = {}
    for row, seeds in per_seed.items():
        table[row] = {}
        for key, section in METRICS:
            mean, std = mean_std([float(s[key]) for s in seeds.values()])
            table[row][f'{section}.{key}'] = {'mean': mean, 'std': std}
    for row, gaps in gap_closed(table).items():
        table[row]['gap_closed'] = gaps
    return table


def markdown(result):
    """Both tables side by side: the benchmark's val split and the unseen drives."""
    lines = [f"Real-style test sets: the benchmark's val split ({result['frames']['val']} "
             f"frames, the last 10 % of the training drives) and "
             f"{result['frames']['unseen']} frames of {result['unseen']['drives']} unseen "
             f'drives; mean ± std over seeds {" ".join(map(str, result["seeds"]))}.', '',
             '| row | AbsRel (val) | mIoU (val) | gap closed (val) | AbsRel (unseen) | '
             'mIoU (unseen) | gap closed (unseen) |', '|---|---:|---:|---:|---:|---:|---:|']

    def cell(figures, key):
        f = figures[dict(METRICS)[key] + '.' + key]
        return f"{f['mean']:.3f} ± {f['std'] or 0.0:.3f}"

    def gap(figures):
        g = figures.get('gap_closed')
        if not g or g.get('abs_rel') is None or g.get('miou') is None:
            return '-'
        return f"{100 * g['abs_rel']:.0f}% / {100 * g['miou']:.0f}%"
    for row in result['table']['val']:
        v, u = result['table']['val'][row], result['table']['unseen'][row]
        lines.append(f'| {row} | {cell(v, "abs_rel")} | {cell(v, "miou")} | {gap(v)} | '
                     f'{cell(u, "abs_rel")} | {cell(u, "miou")} | {gap(u)} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Render the unseen drives, score the exports on both sets, write the results."""
    args = build_parser().parse_args(argv)
    if args.drives < 1 or args.frames_per_drive < 1:
        build_parser().error('--drives and --frames-per-drive must be at least 1')
    t0 = time.perf_counter()
    exports = dataset_and_exports(args)
    if exports is None:
        return 2
    from sim2real_perception.config import load_config
    cfg = load_config(args.config)
    spec = render_unseen(Path(args.unseen), args.drives, args.frames_per_drive)
    per_seed = {'val': score(exports, args.data, 'val', cfg),
                'unseen': score(exports, args.unseen, 'all', cfg)}
    frames = {name: next(iter(next(iter(rows.values())).values()))['frames']
              for name, rows in per_seed.items()}
    result = {
        'command': shlex.join(['python', 'bench/analyse_unseen_drives.py',
                               *(sys.argv[1:] if argv is None else argv)]),
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'seeds': args.seeds, 'rows': list(exports),
        'unseen': {'root': args.unseen, 'drives': args.drives,
                   'frames_per_drive': args.frames_per_drive, 'generator': spec},
        'frames': frames, 'per_seed': per_seed,
        'table': {name: summary(rows) for name, rows in per_seed.items()},
        'total_s': round(time.perf_counter() - t0, 1),
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / 'unseen_drives.json').write_text(json.dumps(result, indent=1))
    (results / 'unseen_drives.md').write_text(markdown(result))
    print(markdown(result))
    print(f'wrote {results / "unseen_drives.json"} and .md in {result["total_s"]:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
