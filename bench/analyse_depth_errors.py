"""Depth-error analysis: where the transfer benchmark's depth error comes from.

The transfer benchmark (``bench/bench_transfer.py``) gives one AbsRel per row; this script
takes its exported models apart on the same real-style val split (60 frames, sparse LiDAR
depth) to say *what kind* of error that AbsRel is, so a proposed fix can be judged first:

- noise or bias: AbsRel again after a Gaussian blur of the predicted log depth
  (``--blur-sigma`` px); if the error were noise, smoothing (the paper's future work) would
  lower it;
- road pixels: the signed and the absolute relative error (signed < 0: too near), since the
  road has the largest share of the sparse LiDAR points;
- per class: AbsRel of each label class, its signed relative error (< 0: too near) and its
  share of the scored pixels;
- the resolution bound, once for the data: the generator's dense depth resized to the
  model size (the ``--config`` preset's ``model.height`` x ``model.width``) and back with
  'nearest' and 'area', scored against the sparse ground truth, plus full-resolution dense
  vs sparse: roughly the best a network whose output at that size is upsampled can score.

``--domain sim`` scores the sim val split (the sim tree at ``--data``, dense depth) instead:
how well a network learnt the sim frames' own depth, class by class (no resolution bound).

``python bench/analyse_depth_errors.py`` reads the models at ``<runs>/<row>_s<seed>/export``
(made by ``python bench/bench_transfer.py``), writes ``bench/results/depth_errors.json`` and
``.md`` and prints the tables. It trains nothing: under a minute on CPU (60 frames per model).
Depth is the network's own everywhere (``sky_as_infinity=False``), so AbsRel can be a little
below training.evaluate's, which sets predicted sky to the cap. See docs/benchmarks.md.
"""
import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_ROWS = ('mean_prior', 'oracle', 'oracle_300', 'sim_only', 'sim_only_aug', 'twin_vae_mse',
                'twin_vae')
#: The split bench_transfer.py scores on and the depth-validity floor (training.metrics).
SPLIT = 'val'
MIN_DEPTH = 1e-3
#: Frame size when the dataset has no manifest.json (bench_transfer.py's DATA).
FALLBACK_SIZE = (192, 640)
CREATE_CMD = 'python bench/bench_transfer.py'


def add_export_arguments(p, default_rows):
    """Add --data, --runs, --rows and --seeds: which bench_transfer.py exports to read."""
    p.add_argument('--data', default='outputs/bench_transfer/data',
                   help='the dataset bench_transfer.py generates (default: %(default)s)')
    p.add_argument('--runs', default='outputs/bench_transfer/compare/runs',
                   help='training.compare runs folder; models are read from '
                        '<runs>/<row>_s<seed>/export (default: %(default)s)')
    p.add_argument('--rows', nargs='+', default=list(default_rows), metavar='ROW',
                   help=f'benchmark rows to analyse (default: {" ".join(default_rows)})')
    p.add_argument('--seeds', type=int, nargs='+', default=[0],
                   help='training seeds; figures are the mean over them (default: 0)')


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_depth_errors.py',
        description='Explain the transfer benchmark\'s depth AbsRel: is it noise (AbsRel '
                    'after blurring the log depth), a bias (signed error on road pixels), '
                    'which classes carry it, and how low any model at the preset\'s '
                    'resolution could go (dense ground truth resized and back). Scores the '
                    'exports of python bench/bench_transfer.py on the real-style val split; '
                    'writes depth_errors.json/.md (docs/benchmarks.md).')
    add_export_arguments(p, DEFAULT_ROWS)
    p.add_argument('--config', default='cpu',
                   help='preset: data settings and the model size of the resolution bound '
                        '(default: cpu)')
    p.add_argument('--blur-sigma', type=float, default=4.0,
                   help='Gaussian sigma in pixels for the blurred log depth; 0 = no blur '
                        '(default: %(default)s)')
    p.add_argument('--max-depth', type=float, default=80.0,
                   help='metres; ground truth at or above is not scored, predictions are '
                        'capped to it (default: %(default)s)')
    p.add_argument('--gate-ground', action='store_true',
                   help='also score every export of a residual-prior network with the ground '
                        'gate put in after training (model.prior_gate: ground_mean: the depth '
                        'residual scaled by 1 - its road/terrain probability), as row '
                        '<row>+gate')
    p.add_argument('--ground-contact', action='store_true',
                   help='also score every export with model.ground_contact switched (upright '
                        'surfaces at the ground depth of their foot; '
                        'sim2real_perception/ground_contact.py), as row <row>+contact, or '
                        '<row>-contact for an export that has it on')
    p.add_argument('--domain', choices=('real', 'sim'), default='real',
                   help="the val split scored: real (the real-style KITTI tree, sparse LiDAR) "
                        "or sim (the sim's Virtual KITTI 2 tree at --data, dense depth: how "
                        "well the sim's own depth was learnt); default: %(default)s")
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where depth_errors.json/.md go (default: bench/results)')
    return p


def gate_ground(predictor):
    """Put ``prior_gate: ground_mean`` into a loaded torch predictor.

    False (and nothing changed) when the network has no residual prior or a gate already.
    """
    from sim2real_perception.model_config import ground_class_ids
    prior = getattr(predictor.runner.net, 'prior', None)
    if prior is None or prior.gated:
        return False
    prior.ground = ground_class_ids(predictor.model_config.num_classes)
    return True


def frame_size(data):
    """Return (height, width) of the generated frames, so frames are read unresized."""
    manifest = Path(data) / 'manifest.json'
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return int(info['height']), int(info['width'])
    return FALLBACK_SIZE


def load_frames(eval_cfg, size, depth_type=None):
    """Return the val split as a list of (uint8 RGB image, depth m, labels), full size.

    ``eval_cfg`` is a ``data.*`` section: ``data.eval`` (real-style) or ``data.sim``.
    """
    from training.data import build_dataset
    cfg = dict(eval_cfg, depth_type=depth_type) if depth_type else eval_cfg
    ds = build_dataset(cfg, SPLIT, *size, False, 0)
    frames = []
    for i in range(len(ds)):
        item = ds[i]
        image = ((item['image'].permute(1, 2, 0).numpy() + 1.0) * 127.5).round()
        frames.append((image.clip(0, 255).astype(np.uint8), item['depth'][0].numpy(),
                       item['labels'].numpy().astype(np.int16)))
    return frames


def find_exports(runs, rows, seeds):
    """Return {row: {seed: export dir}}; print a note for each missing export."""
    found = {}
    for row in rows:
        for seed in seeds:
            path = Path(runs) / f'{row}_s{seed}' / 'export'
            if path.is_dir():
                found.setdefault(row, {})[seed] = path
            else:
                print(f'note: no export at {path}: skipping {row} seed {seed}')
    return found


def dataset_and_exports(args):
    """Return {row: {seed: export}} for ``args``, or None after saying what is missing."""
    data = Path(args.data)
    if not data.is_dir():
        print(f'error: no dataset at {data}: create it with {CREATE_CMD}', file=sys.stderr)
        return None
    exports = find_exports(args.runs, args.rows, args.seeds)
    if not exports:
        print(f'error: no model exports at {Path(args.runs)}/<row>_s<seed>/export for rows '
              f'{" ".join(args.rows)}, seeds {" ".join(map(str, args.seeds))}: create them '
              f'with {CREATE_CMD}', file=sys.stderr)
        return None
    return exports


def save_results(results_dir, name, report, heading, table):
    """Print ``table``; write ``<name>.json`` (``report``) and ``<name>.md`` (heading, table)."""
    from training.evaluate import write_json
    print(table)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f'{name}.json', report)
    (out / f'{name}.md').write_text(f'{heading}\n\n{table}')


def valid_mask(gt, max_depth):
    """Scored pixels: finite ground truth in (MIN_DEPTH, max_depth), as training.metrics."""
    with np.errstate(invalid='ignore'):
        return np.isfinite(gt) & (gt > MIN_DEPTH) & (gt < max_depth)


def blur_log_depth(depth, sigma):
    """Gaussian blur of log depth (sigma in px): smooths noise, keeps a bias."""
    import cv2
    if sigma <= 0:
        return depth
    return np.exp(cv2.GaussianBlur(np.log(depth), (0, 0), sigma))


def score_model(predictor, frames, sigma, max_depth):
    """Score one model: AbsRel plain and blurred, road errors, per-class error sums."""
    from sim2real_perception.labels import CLASS_NAMES
    from training.metrics import DepthMetrics
    road = CLASS_NAMES.index('road')
    plain, blurred = DepthMetrics(MIN_DEPTH, max_depth), DepthMetrics(MIN_DEPTH, max_depth)
    road_signed = road_abs = 0.0
    n_road = 0
    class_err = {}   # class id -> (sum |rel|, sum rel, pixels)
    for image, gt, labels in frames:
        depth = np.clip(predictor.predict(image).depth, MIN_DEPTH, max_depth).astype(np.float32)
        plain.update(depth, gt)
        blurred.update(blur_log_depth(depth, sigma), gt)
        valid = valid_mask(gt, max_depth)
        rel = (depth[valid] - gt[valid]) / gt[valid]
        lab = labels[valid]
        on_road = lab == road
        road_signed += float(rel[on_road].sum())
        road_abs += float(np.abs(rel[on_road]).sum())
        n_road += int(on_road.sum())
        for c in np.unique(lab):
            m = lab == c
            err, signed, n = class_err.get(int(c), (0.0, 0.0, 0))
            class_err[int(c)] = (err + float(np.abs(rel[m]).sum()),
                                 signed + float(rel[m].sum()), n + int(m.sum()))
    total = sum(n for _, _, n in class_err.values())
    return {
        'abs_rel': plain.compute()['abs_rel'],
        'abs_rel_blurred': blurred.compute()['abs_rel'],
        'road_signed': road_signed / n_road if n_road else math.nan,
        'road_abs_rel': road_abs / n_road if n_road else math.nan,
        'per_class': {class_name(c): {'share': n / total, 'abs_rel': err / n,
                                      'signed': signed / n}
                      for c, (err, signed, n) in sorted(class_err.items(),
                                                        key=lambda kv: -kv[1][2])},
    }


def class_name(class_id):
    """Name of a label id (255 and anything outside the label set: 'ignore')."""
    from sim2real_perception.labels import CLASS_NAMES
    return CLASS_NAMES[class_id] if 0 <= class_id < len(CLASS_NAMES) else 'ignore'


def mean_over_seeds(per_seed):
    """Mean of each figure over the seeds (per class too)."""
    keys = ('abs_rel', 'abs_rel_blurred', 'road_signed', 'road_abs_rel')
    out = {k: float(np.mean([s[k] for s in per_seed])) for k in keys}
    names = list(per_seed[0]['per_class'])
    out['per_class'] = {n: {f: float(np.mean([s['per_class'][n][f] for s in per_seed
                                              if n in s['per_class']]))
                            for f in ('share', 'abs_rel', 'signed')} for n in names}
    return out


def resolution_bound(sparse, dense, model_size, max_depth):
    """AbsRel of the dense ground truth through the model size and back, vs sparse GT."""
    import cv2
    from training.metrics import DepthMetrics
    height, width = model_size
    metrics = {'nearest': DepthMetrics(MIN_DEPTH, max_depth),
               'area': DepthMetrics(MIN_DEPTH, max_depth),
               'dense_full_res': DepthMetrics(MIN_DEPTH, max_depth)}
    interps = {'nearest': cv2.INTER_NEAREST, 'area': cv2.INTER_AREA}
    for (_, gt, _), (_, full, _) in zip(sparse, dense):
        full = np.minimum(np.where(np.isfinite(full), full, max_depth), max_depth)
        full = full.astype(np.float32)
        for name, interp in interps.items():
            small = cv2.resize(full, (width, height), interpolation=interp)
            metrics[name].update(cv2.resize(small, (gt.shape[1], gt.shape[0]),
                                            interpolation=cv2.INTER_LINEAR), gt)
        metrics['dense_full_res'].update(full, gt)
    return {name: m.compute()['abs_rel'] for name, m in metrics.items()}


def markdown(result):
    """Return the per-class table (classes by share) and the summary table."""
    rows = result['rows']
    names = list(rows)
    first = rows[names[0]]['per_class']
    classes = sorted(first, key=lambda c: -first[c]['share'])
    split = 'real-style val split, sparse LiDAR' if result['data'].get('domain', 'real') == \
        'real' else 'sim val split, dense depth'
    lines = []

    def cell(row, c, field):
        value = rows[row]['per_class'].get(c, {}).get(field)
        return '-' if value is None else f'{value:+.3f}' if field == 'signed' else f'{value:.3f}'
    for field, what in (('abs_rel', 'AbsRel'),
                        ('signed', 'Signed relative error (< 0: too near)')):
        lines += [f'{what} per class ({split}; classes by share of the scored pixels):', '',
                  '| class | share | ' + ' | '.join(names) + ' |',
                  '|---|---:|' + '---:|' * len(names)]
        for c in classes:
            cells = [cell(n, c, field) for n in names]
            lines.append(f'| {c} | {first[c]["share"]:.3f} | ' + ' | '.join(cells) + ' |')
        if field == 'abs_rel':
            total = ' | '.join(f'{rows[n]["abs_rel"]:.3f}' for n in names)
            lines.append(f'| all | 1.000 | {total} |')
        lines.append('')
    sigma = result['blur_sigma']
    lines += ['| row | seeds | AbsRel | AbsRel, log depth blurred '
              f'(sigma {sigma:g} px) | road signed rel. error | road AbsRel |',
              '|---|---|---:|---:|---:|---:|']
    for n in names:
        r = rows[n]
        seeds = ' '.join(str(s['seed']) for s in r['seeds'])
        lines.append(f'| {n} | {seeds} | {r["abs_rel"]:.3f} | {r["abs_rel_blurred"]:.3f} | '
                     f'{r["road_signed"]:+.3f} | {r["road_abs_rel"]:.3f} |')
    b = result['resolution_bound']
    if b is None:
        return '\n'.join(lines) + '\n'
    h, w = result['model_size']
    lines += ['', f'Resolution bound (dense ground truth to {h}x{w} and back, bilinear, vs '
              f'sparse): AbsRel {b["nearest"]:.4f} (nearest), {b["area"]:.4f} (area); '
              f'full-resolution dense vs sparse {b["dense_full_res"]:.4f}.']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Analyse the exports; exit 0 when at least one was scored, 2 when none was found."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    data = Path(args.data)
    exports = dataset_and_exports(args)
    if exports is None:
        return 2
    from sim2real_perception.config import load_config
    from sim2real_perception.predictor import Predictor
    cfg = load_config(args.config, [f'data.eval.root={data}', f'data.sim.root={data}'])
    size = frame_size(data)
    section = cfg['data']['eval' if args.domain == 'real' else 'sim']
    sparse = load_frames(section, size)
    print(f'{len(sparse)} {args.domain} {SPLIT} frames at {size[1]}x{size[0]} from {data}')
    rows = {}
    for row, by_seed in exports.items():
        extra = {}   # {row, '<row>+gate', '<row>+contact' or '-contact': [per seed]}
        for seed, path in by_seed.items():
            predictor = Predictor.from_path(str(path), backend='torch', device='cpu',
                                            sky_as_infinity=False)

            def score(name):
                scores = score_model(predictor, sparse, args.blur_sigma, args.max_depth)
                extra.setdefault(name, []).append({'seed': seed, 'export': str(path),
                                                   **scores})
                print(f'{name} seed {seed}: AbsRel {scores["abs_rel"]:.3f}')
            score(row)
            if args.ground_contact:
                predictor.ground_contact = not predictor.ground_contact
                score(row + ('+contact' if predictor.ground_contact else '-contact'))
                predictor.ground_contact = not predictor.ground_contact
            if args.gate_ground and gate_ground(predictor):
                score(row + '+gate')
        for name, runs in extra.items():
            rows[name] = {'seeds': runs, **mean_over_seeds(runs)}
    model_size = (int(cfg['model']['height']), int(cfg['model']['width']))
    bound = resolution_bound(sparse, load_frames(section, size, depth_type='dense'),
                             model_size, args.max_depth) if args.domain == 'real' else None
    result = {
        'command': shlex.join(['python', 'bench/analyse_depth_errors.py',
                               *(sys.argv[1:] if argv is None else argv)]),
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'data': {'root': str(data), 'domain': args.domain, 'split': SPLIT,
                 'frames': len(sparse), 'size': list(size),
                 'depth': 'sparse LiDAR' if args.domain == 'real' else 'dense (sim)',
                 'config': args.config},
        'blur_sigma': args.blur_sigma, 'max_depth': args.max_depth,
        'model_size': list(model_size),
        'rows': rows,
        'resolution_bound': bound,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / 'depth_errors.json').write_text(json.dumps(result, indent=1))
    (results / 'depth_errors.md').write_text(markdown(result))
    print(markdown(result))
    print(f'wrote {results / "depth_errors.json"} ({(time.perf_counter() - t0) / 60:.1f} min)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
