"""Label-error analysis: where the transfer benchmark's mIoU comes from.

The transfer benchmark (``bench/bench_transfer.py``) gives one mIoU and one pixel accuracy per
row; this script takes its exported models apart on the same real-style val split (60 frames,
dense labels) to say *which* classes that mIoU is made of and what each class is taken for:

- per class: IoU (``-`` where a class is in neither the ground truth nor the prediction, so
  it is not in the mIoU; 0.000 is a real zero and counts) and its share of the labelled pixels;
- per ground-truth class: the ``--top`` classes its pixels are predicted as, with their shares
  (a row-normalised confusion matrix: "sky -> sky 0.76, building 0.23, truck 0.01");
- mIoU and pixel accuracy, which equal the benchmark's per-seed real-split figures: the frames
  are read and predicted as ``training.evaluate`` does (the preset's ``eval`` settings, frames
  at native size in batches of ``eval.batch_size``) and scored with ``training.metrics``;
- the mIoU with the predictions read in the real labels' taxonomy (``cityscapes_miou``: a
  predicted van scores as car, as KITTI's and Cityscapes' annotators label vans), which
  tells how much of a row's mIoU the sim-only van class costs it.

``python bench/analyse_label_errors.py`` reads the models at ``<runs>/<row>_s<seed>/export``
(made by ``python bench/bench_transfer.py``), writes ``bench/results/label_errors.json`` and
``.md`` and prints the tables. It trains nothing: seconds per model on CPU (60 frames each).
See docs/benchmarks.md.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.analyse_depth_errors import (add_export_arguments,  # noqa: E402
                                        dataset_and_exports)

DEFAULT_ROWS = ('sim_only', 'sim_only_aug', 'sim_only_aug_vars', 'twin_vae_mse', 'twin_vae',
                'oracle')
#: The split bench_transfer.py scores on (training.compare's real-style split).
SPLIT = 'val'
#: Name of the confusion matrix's last column: predictions outside the class ids.
INVALID = 'invalid'
#: Classes below this share of the labelled pixels are left out of the confusion lists (.md).
MIN_SHARE_MD = 0.01


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_label_errors.py',
        description='Explain the transfer benchmark\'s mIoU: IoU of each class and its share '
                    'of the labelled pixels, and for each ground-truth class the classes it '
                    'is predicted as (row-normalised confusion). Scores the exports of '
                    'python bench/bench_transfer.py on the real-style val split as '
                    'training.evaluate does; writes label_errors.json/.md '
                    '(docs/benchmarks.md).')
    add_export_arguments(p, DEFAULT_ROWS)
    p.add_argument('--config', default='cpu',
                   help='preset: data and eval settings, as bench_transfer.py used '
                        '(default: cpu)')
    p.add_argument('--top', type=int, default=3,
                   help='predicted classes listed per ground-truth class (default: '
                        '%(default)s)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where label_errors.json/.md go (default: bench/results)')
    return p


def load_frames(data_cfg, settings):
    """Return the split's labelled frames ({image, labels}), read as training.evaluate does."""
    from training.evaluate import load_frames as eval_frames
    cfg = dict(data_cfg)
    if settings['max_frames']:
        cfg['max_frames'] = int(settings['max_frames'])
    return [{'image': f['image'], 'labels': f['labels']}
            for _, f in eval_frames(cfg, settings['split']) if f.get('labels') is not None]


def confusion_of(predictor, frames, settings):
    """Return the SegMetrics of one model over the frames (training.evaluate's batches)."""
    from training.evaluate import center_crop, frame_batches
    from training.metrics import SegMetrics
    seg = SegMetrics(num_classes=len(predictor.class_names),
                     class_names=predictor.class_names)
    for pairs in frame_batches(enumerate(frames), int(settings['batch_size'])):
        batch = [frame for _, frame in pairs]
        if settings['crop'] == 'center':
            batch = [center_crop(f, predictor.height, predictor.width) for f in batch]
        for frame, pred in zip(batch, predictor.predict_batch([f['image'] for f in batch])):
            seg.update(pred.labels, frame['labels'])
    return seg


def confusion_top(confusion, names, top):
    """Per ground-truth class with labelled pixels: its ``top`` predictions [[name, share]]."""
    pred_names = list(names) + [INVALID]
    out = {}
    for c, name in enumerate(names):
        total = confusion[c].sum()
        if total == 0:
            continue
        order = np.argsort(-confusion[c], kind='stable')[:top]
        out[name] = [[pred_names[p], float(confusion[c, p] / total)] for p in order
                     if confusion[c, p] > 0]
    return out


def cityscapes_miou(confusion):
    """mIoU with the predictions read in the real labels' taxonomy (Cityscapes, KITTI).

    Classes that share a Cityscapes id (``labels.CLASS_TO_CITYSCAPES_ID``: van and car, 26)
    are one class there, so a predicted van scores as the car the ground truth calls it;
    the columns merge onto the first class of each id. Same convention as ``miou``
    otherwise: every class with a union counts, a predicted class the ground truth lacks
    scores 0.
    """
    from sim2real_perception.labels import CLASS_TO_CITYSCAPES_ID
    ids = list(CLASS_TO_CITYSCAPES_ID)
    conf = np.asarray(confusion, np.float64)
    k = len(ids)
    merged = np.zeros((k, k))
    for c in range(k):
        merged[:, ids.index(ids[c])] += conf[:k, c]
    tp = np.diag(merged)
    union = merged.sum(0) + conf[:k].sum(1) - tp   # a row's invalid predictions stay errors
    present = [tp[c] / union[c] for c in range(k) if union[c] > 0]
    return float(np.mean(present)) if present else float('nan')


def score_model(seg, top):
    """Score one model from its SegMetrics: mIoU, pixel accuracy, per class, confusion."""
    scores = seg.compute()
    conf = seg.confusion
    names = list(seg.class_names)
    total = conf.sum()
    shares = conf.sum(1) / total if total else np.zeros(len(names))
    return {
        'miou': scores['miou'],
        'miou_cityscapes': cityscapes_miou(conf),
        'pixel_acc': scores['pixel_acc'],
        'n_pixels': scores['n_pixels'],
        'per_class': {n: {'share': float(shares[c]), 'iou': scores['per_class_iou'][n]}
                      for c, n in enumerate(names)},
        'confusion_top': confusion_top(conf, names, top),
        'confusion': {'columns': names + [INVALID], 'rows': conf.tolist()},
    }


def mean_iou(values):
    """Mean of the seeds' IoUs of one class; None where every seed has None (absent)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def mean_over_seeds(per_seed, top):
    """Mean of each figure over the seeds; the confusion lists from the summed matrices.

    The seeds score the same frames, so each class's pixel count is the same in every seed
    and the summed matrix, row-normalised, is the mean of the seeds' normalised ones.
    """
    out = {k: float(np.mean([s[k] for s in per_seed]))
           for k in ('miou', 'miou_cityscapes', 'pixel_acc')}
    names = list(per_seed[0]['per_class'])
    out['per_class'] = {n: {'share': float(np.mean([s['per_class'][n]['share']
                                                    for s in per_seed])),
                            'iou': mean_iou([s['per_class'][n]['iou'] for s in per_seed])}
                        for n in names}
    conf = np.sum([np.asarray(s['confusion']['rows']) for s in per_seed], axis=0)
    out['confusion_top'] = confusion_top(conf, names, top)
    return out


def fmt_iou(value):
    """Format an IoU to 3 decimals; None (in neither ground truth nor prediction) as '-'."""
    return '-' if value is None else f'{value:.3f}'


def markdown(result):
    """Return the per-class IoU table (classes by share) and each row's confusion list."""
    rows = result['rows']
    names = list(rows)
    first = rows[names[0]]['per_class']
    classes = sorted(first, key=lambda c: -first[c]['share'])
    lines = ['IoU per class (real-style val split; classes by share of the labelled pixels; '
             '-: in neither ground truth nor prediction, not in the mIoU):', '',
             '| class | share | ' + ' | '.join(names) + ' |',
             '|---|---:|' + '---:|' * len(names)]
    for c in classes:
        cells = [fmt_iou(rows[n]['per_class'][c]['iou']) if c in rows[n]['per_class']
                 else '-' for n in names]
        lines.append(f'| {c} | {first[c]["share"]:.3f} | ' + ' | '.join(cells) + ' |')
    lines.append('| mIoU | | ' + ' | '.join(f'{rows[n]["miou"]:.3f}' for n in names) + ' |')
    lines.append('| mIoU, van scored as car | | ' + ' | '.join(
        f'{rows[n]["miou_cityscapes"]:.3f}' for n in names) + ' |')
    lines.append('| pixel acc. | | ' + ' | '.join(f'{rows[n]["pixel_acc"]:.3f}'
                                                  for n in names) + ' |')
    top = result['top']
    for n in names:
        r = rows[n]
        seeds = ' '.join(str(s['seed']) for s in r['seeds'])
        lines += ['', f'Confusion, {n} (seeds {seeds}): ground truth (share) -> its top {top} '
                  f'predicted classes, share of its pixels (classes with >= '
                  f'{MIN_SHARE_MD:.0%} of the labelled pixels):', '']
        for c in classes:
            share = r['per_class'][c]['share'] if c in r['per_class'] else 0.0
            if share < MIN_SHARE_MD or c not in r['confusion_top']:
                continue
            preds = ', '.join(f'{p} {s:.2f}' for p, s in r['confusion_top'][c])
            lines.append(f'- {c} ({share:.3f}) -> {preds}')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Analyse the exports; exit 0 when at least one was scored, 2 when none was found."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f'--top must be at least 1, got {args.top}')
    t0 = time.perf_counter()
    data = Path(args.data)
    exports = dataset_and_exports(args)
    if exports is None:
        return 2
    from sim2real_perception.config import load_config
    from sim2real_perception.predictor import Predictor
    from training.evaluate import eval_settings
    cfg = load_config(args.config, [f'data.eval.root={data.resolve()}'])
    settings = eval_settings(cfg, split=SPLIT)
    frames = load_frames(cfg['data']['eval'], settings)
    h, w = frames[0]['image'].shape[:2] if frames else (0, 0)
    print(f'{len(frames)} labelled {SPLIT} frames at {w}x{h} from {data}')
    rows = {}
    for row, by_seed in exports.items():
        per_seed = []
        for seed, path in by_seed.items():
            # As training.evaluate / training.compare build it (labels do not depend on
            # sky_as_infinity); backend auto is torch for these exports (no model.onnx).
            predictor = Predictor.from_path(str(path), backend='torch', device='cpu')
            scores = score_model(confusion_of(predictor, frames, settings),
                                 args.top)
            per_seed.append({'seed': seed, 'export': str(path), **scores})
            print(f'{row} seed {seed}: mIoU {scores["miou"]:.4f} (van scored as car '
                  f'{scores["miou_cityscapes"]:.4f}), pixel acc. {scores["pixel_acc"]:.4f}')
        rows[row] = {'seeds': per_seed, **mean_over_seeds(per_seed, args.top)}
    result = {
        'command': shlex.join(['python', 'bench/analyse_label_errors.py',
                               *(sys.argv[1:] if argv is None else argv)]),
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'data': {'root': str(data), 'split': SPLIT, 'frames': len(frames), 'size': [h, w],
                 'labels': 'dense', 'config': args.config,
                 'eval': {k: settings[k] for k in ('max_frames', 'crop', 'batch_size')}},
        'top': args.top,
        'rows': rows,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / 'label_errors.json').write_text(json.dumps(result, indent=1))
    (results / 'label_errors.md').write_text(markdown(result))
    print(markdown(result))
    print(f'wrote {results / "label_errors.json"} ({time.perf_counter() - t0:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
