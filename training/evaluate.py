"""Score exported models on a dataset split: a Table-1-style table, eval.json and eval.png.

``python -m training.evaluate --model NAME=DIR [--model NAME=DIR ...] --config cpu --out DIR``

Each model runs through ``sim2real_perception.predictor.Predictor`` (PyTorch or ONNX
Runtime), the exact code path of the ROS 2 node, so offline, replay and node numbers agree.
Predictions come back at the ground-truth resolution and are scored there with
``training.metrics`` (conventions in that module and README "Evaluation"). The dataset is
any ``data.<section>`` of the config (default ``data.eval``, split ``val``), overridable with
``--set data.eval.root=...``; every frame is decoded once and fed to every model.
"""
import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sim2real_perception.config import load_config
from sim2real_perception.model_io import CONFIG_NAME, ModelLoadError
from sim2real_perception.predictor import BACKENDS, Predictor

from .data import DataError, open_source, resolve, select_indices
from .metrics import DepthMetrics, LabelVariation, SegMetrics
from .results_table import render, rows_from_results

SPLITS = ('val', 'train', 'all')
CROPS = ('none', 'center')
METRIC_KEYS = ('min_depth', 'max_depth', 'garg_crop', 'median_scaling')


def resolve_model_dir(path):
    """Return the exported model dir for ``path``: itself, or ``path/export`` (a run dir)."""
    path = Path(path).expanduser()
    if not (path / CONFIG_NAME).is_file() and (path / 'export' / CONFIG_NAME).is_file():
        return path / 'export'
    return path


def parse_model_arg(text):
    """Split ``NAME=DIR`` (or just ``DIR``, named after its folder) into (name, dir)."""
    name, sep, path = text.partition('=')
    if not sep:
        path = text
        p = Path(text.rstrip('/'))
        name = p.parent.name if p.name == 'export' else p.name
    if not name or not path:
        raise ValueError(f'--model {text!r}: expected NAME=DIR')
    return name, resolve_model_dir(path)


def center_crop(frame, height, width):
    """Crop image/depth/labels of a frame to the aspect ratio ``height:width`` (no resampling).

    Keeps the ground truth at its native resolution while matching the aspect of the
    centre crops the model was trained on (``data.*.resize: crop``).
    """
    h, w = frame['image'].shape[:2]
    if h * width > w * height:
        ch, cw = max(1, int(round(w * height / width))), w
    else:
        ch, cw = h, max(1, int(round(h * width / height)))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = dict(frame)
    for key in ('image', 'depth', 'labels'):
        if frame.get(key) is not None:
            out[key] = frame[key][top:top + ch, left:left + cw]
    return out


def load_frames(data_cfg, split='val'):
    """Yield ``(count, frame)`` pairs of a data section's split (reader-contract frames)."""
    cfg = resolve(data_cfg)
    source = open_source(cfg)
    indices = select_indices(source, cfg, split)
    for i in indices:
        try:
            frame = source.load(i)
        except DataError as exc:
            if not cfg['skip_bad']:
                raise
            print(f'[evaluate] skipping bad sample: {exc}', file=sys.stderr)
            continue
        yield len(indices), frame


class _ModelScore:
    """One model's predictor, metric accumulators and the predictions kept for the figure."""

    def __init__(self, name, model_dir, eval_cfg, predictor=None):
        self.name, self.model_dir = name, Path(model_dir)
        self.predictor = predictor or Predictor.from_path(
            model_dir, backend=eval_cfg['backend'], device=eval_cfg['device'])
        self.depth = DepthMetrics(**{k: eval_cfg[k] for k in METRIC_KEYS})
        self.seg = SegMetrics(num_classes=len(self.predictor.class_names),
                              class_names=self.predictor.class_names)
        n_classes = len(self.predictor.class_names)
        self.variation = LabelVariation(n_classes)      # of the predicted labels
        self.gt_variation = LabelVariation(n_classes)   # of the ground truth, same frames
        self.crop = eval_cfg['crop']
        self.frames = self.depth_frames = self.seg_frames = 0
        self.seconds = 0.0
        self.kept = []

    def prepare(self, frame):
        if self.crop == 'center':
            return center_crop(frame, self.predictor.height, self.predictor.width)
        return frame

    def run(self, frames, keep):
        frames = [self.prepare(f) for f in frames]
        t0 = time.perf_counter()
        preds = self.predictor.predict_batch([f['image'] for f in frames])
        self.seconds += time.perf_counter() - t0
        for frame, pred, kept in zip(frames, preds, keep):
            self.frames += 1
            if frame.get('depth') is not None:
                self.depth.update(pred.depth, frame['depth'])
                self.depth_frames += 1
            if frame.get('labels') is not None:
                self.seg.update(pred.labels, frame['labels'])
                self.gt_variation.update(frame['labels'])
                self.seg_frames += 1
            self.variation.update(pred.labels)
            if kept:
                self.kept.append((frame, pred.depth, pred.labels))

    def result(self):
        config = self.predictor.config
        return {
            'model_dir': str(self.model_dir),
            'backend': self.predictor.backend,
            'runtime': self.predictor.description,
            'model_size': [self.predictor.height, self.predictor.width],
            'metadata': {k: v for k, v in config.get('metadata', {}).items()
                         if k != 'config'},  # training.train stores its whole config there
            'frames': self.frames,
            'depth_frames': self.depth_frames,
            'segmentation_frames': self.seg_frames,
            'depth': self.depth.compute(),
            'segmentation': {**self.seg.compute(),
                             'label_change_share': self.variation.compute(),
                             'gt_label_change_share': self.gt_variation.compute()},
            'predict_seconds': self.seconds,
            'frames_per_second': self.frames / self.seconds if self.seconds else math.nan,
        }


def eval_settings(cfg=None, **overrides):
    """Return the ``eval`` config section (defaults.yaml) with non-None ``overrides`` applied."""
    settings = dict((cfg or load_config(None))['eval'])
    unknown = set(overrides) - set(settings)
    if unknown:
        raise KeyError(f'unknown eval settings {sorted(unknown)}; known: {sorted(settings)}')
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings['split'] not in SPLITS:
        raise ValueError(f'eval.split {settings["split"]!r} not in {SPLITS}')
    if settings['crop'] not in CROPS:
        raise ValueError(f'eval.crop {settings["crop"]!r} not in {CROPS}')
    if settings['backend'] not in BACKENDS:
        raise ValueError(f'eval.backend {settings["backend"]!r} not in {BACKENDS}')
    if int(settings['batch_size']) < 1:
        raise ValueError('eval.batch_size must be >= 1')
    return settings


def frame_batches(frames, size):
    """Group consecutive (count, frame) pairs into lists of at most ``size`` of one image size."""
    batch = []
    for count, frame in frames:
        if batch and (len(batch) >= size or
                      frame['image'].shape != batch[0][1]['image'].shape):
            yield batch
            batch = []
        batch.append((count, frame))
    if batch:
        yield batch


def evaluate_models(models, data_cfg, eval_cfg=None, predictors=None, progress=True):
    """Score several models on one data section; return (``{name: result}``, figure rows).

    ``models`` maps names to exported model dirs (or run dirs holding ``export/``);
    ``eval_cfg`` is the ``eval`` config section (see :func:`eval_settings`); ``predictors``
    optionally maps names to ready ``Predictor`` objects. Figure rows are
    ``(frame, {name: (depth, labels)})`` for ``eval_cfg['figure_rows']`` evenly spaced frames.
    """
    eval_cfg = eval_settings(None, **(eval_cfg or {}))
    data_cfg = dict(data_cfg)
    if eval_cfg['max_frames']:
        data_cfg['max_frames'] = int(eval_cfg['max_frames'])
    predictors = predictors or {}
    scores = [_ModelScore(n, resolve_model_dir(d), eval_cfg, predictors.get(n))
              for n, d in models.items()]
    if not scores:
        raise ValueError('no model to evaluate')
    bar = None
    done, keep_at = 0, None
    for batch in frame_batches(load_frames(data_cfg, eval_cfg['split']),
                               int(eval_cfg['batch_size'])):
        total = batch[0][0]
        if keep_at is None:
            rows = min(int(eval_cfg['figure_rows']), total)
            keep_at = {int(i * total / rows) for i in range(rows)} if rows > 0 else set()
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=total, desc='evaluate', unit='frame', file=sys.stderr,
                           mininterval=2.0, leave=False)
        keep = [done + i in keep_at for i in range(len(batch))]
        frames = [f for _, f in batch]
        for score in scores:
            score.run(frames, keep)
        done += len(batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    results = {s.name: s.result() for s in scores}
    figure = []
    for r in range(len(scores[0].kept)):
        frame = scores[0].kept[r][0]
        figure.append((frame, {s.name: s.kept[r][1:] for s in scores}))
    return results, figure


def evaluate_model(model_dir, data_cfg, split='val', max_frames=0, backend='auto',
                   device='cpu', predictor=None, **metric_options):
    """Score one exported model on ``data_cfg``; return its metrics dict.

    The dict has ``depth`` and ``segmentation`` sub-dicts (``training.metrics`` results)
    plus frame counts, backend and speed. ``metric_options``: min_depth, max_depth,
    garg_crop, median_scaling, crop, batch_size (defaults from ``config/defaults.yaml``).
    """
    settings = eval_settings(None, split=split, max_frames=max_frames, backend=backend,
                             device=device, figure_rows=0, **metric_options)
    results, _ = evaluate_models({'model': model_dir}, data_cfg, settings,
                                 {'model': predictor} if predictor else None, progress=False)
    return results['model']


def json_safe(value):
    """Replace NaN/inf floats by None (strict JSON) and numpy scalars by Python ones."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, data):
    """Write ``data`` as strict, indented JSON (NaN -> null)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix('.json.tmp')
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + '\n')
    tmp.replace(path)


def save_figure(path, figure, eval_cfg):
    """Draw ``evaluate_models``'s figure rows as a Figure-3-like PNG; return its path."""
    from .figures import save_comparison_grid
    frames = [f for f, _ in figure]
    names = list(figure[0][1])
    methods = {n: [preds[n] for _, preds in figure] for n in names}
    return save_comparison_grid(path, frames, methods, int(eval_cfg['figure_tile_width']),
                                float(eval_cfg['max_depth']))


def build_parser():
    """Return the argument parser (every option documented for ``--help``)."""
    p = argparse.ArgumentParser(
        prog='python -m training.evaluate',
        description='Score exported models (and baselines) on a dataset split with the '
                    'depth and segmentation metrics of the paper\'s Table 1. Prints the '
                    'table and writes OUT/eval.json, OUT/eval.md and OUT/eval.png.',
        epilog='Example: python -m training.evaluate --model twin_vae=runs/twin/export '
               '--model sim_only=runs/sim --config cpu --out outputs/eval. Exit status 2 '
               'on a bad model, dataset or option. Docs: docs/evaluation.md')
    p.add_argument('--model', action='append', required=True, metavar='NAME=DIR',
                   help='a model to score, repeatable: NAME=DIR where DIR is an exported '
                        'model dir (config.json + model.safetensors [+ model.onnx]) or a '
                        'training run dir holding export/; a bare DIR is named after it')
    p.add_argument('--config', default='cpu',
                   help='preset name (cpu, paper, test) or YAML path giving data.* and eval.* '
                        '(default: cpu)')
    p.add_argument('--data', default=None, metavar='SECTION',
                   help='data section to score: eval, sim, real (default: eval.data = eval)')
    p.add_argument('--split', default=None,
                   help='split of that section: val, train or all (default: eval.split = '
                        'val); a section name (eval, sim, real) is taken as --data SECTION')
    p.add_argument('--data-root', default=None, metavar='DIR',
                   help='shorthand for --set data.<section>.root=DIR')
    p.add_argument('--max-frames', type=int, default=None, metavar='N',
                   help='score at most N frames, evenly spaced over the split (0 = all)')
    p.add_argument('--backend', choices=BACKENDS, default=None,
                   help='predictor backend (default: eval.backend = auto: onnxruntime when '
                        'the model dir has model.onnx, else torch)')
    p.add_argument('--device', default=None,
                   help='predictor device: cpu, cuda, cuda:N or auto (default: eval.device)')
    p.add_argument('--batch-size', type=int, default=None, metavar='N',
                   help='frames per predictor call (default: eval.batch_size)')
    p.add_argument('--figure-rows', type=int, default=None, metavar='N',
                   help='frames drawn in eval.png, 0 = no figure (default: eval.figure_rows)')
    p.add_argument('--set', nargs='+', action='append', default=[], metavar='KEY=VALUE',
                   help='config overrides, repeatable, e.g. eval.median_scaling=true, '
                        'eval.max_depth=50, eval.garg_crop=true, eval.crop=center, '
                        'data.eval.root=DIR, data.eval.format=kitti')
    p.add_argument('--out', required=True, metavar='DIR',
                   help='output folder for eval.json, eval.md and eval.png')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def run_cli(args):
    """Run the evaluation described by parsed ``args``; return the eval.json dict."""
    overrides = [o for group in args.set for o in group]
    data_name, split = args.data, args.split
    cfg0 = load_config(args.config, overrides)
    if split is not None and split not in SPLITS:
        if split in cfg0['data']:
            data_name, split = split, None
        else:
            raise ValueError(f'--split {split!r}: not a split {SPLITS} nor a data section '
                             f'{sorted(cfg0["data"])}')
    data_name = data_name or cfg0['eval']['data']
    if data_name not in cfg0['data']:
        raise ValueError(f'data section {data_name!r} not in {sorted(cfg0["data"])}')
    if args.data_root:
        overrides.append(f'data.{data_name}.root={args.data_root}')
    cfg = load_config(args.config, overrides)
    settings = eval_settings(cfg, split=split, max_frames=args.max_frames,
                             backend=args.backend, device=args.device,
                             batch_size=args.batch_size, figure_rows=args.figure_rows)
    models = dict(parse_model_arg(m) for m in args.model)
    if len(models) != len(args.model):
        raise ValueError('two --model arguments have the same NAME')
    data_cfg = cfg['data'][data_name]
    t0 = time.perf_counter()
    results, figure = evaluate_models(models, data_cfg, settings, progress=not args.quiet)
    out = Path(args.out)
    report = {
        'created_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'config': cfg['preset'],
        'overrides': overrides,
        'data': {'section': data_name, 'split': settings['split'],
                 **{k: v for k, v in resolve(data_cfg).items()
                    if k in ('format', 'root', 'max_frames')}},
        'eval': settings,
        'seconds': time.perf_counter() - t0,
        'models': results,
    }
    title = (f'{data_name} ({report["data"]["format"]} {report["data"]["root"]}), split '
             f'{settings["split"]}, {next(iter(results.values()))["frames"]} frames, depth cap '
             f'{settings["max_depth"]:g} m'
             + (', median scaling' if settings['median_scaling'] else '')
             + (', Garg crop' if settings['garg_crop'] else ''))
    rows = rows_from_results(results)
    print(render(rows, title=title))
    write_json(out / 'eval.json', report)
    (out / 'eval.md').write_text(render(rows, markdown=True, title=title) + '\n')
    if figure:
        save_figure(out / 'eval.png', figure, settings)
    print(f'wrote {out / "eval.json"}, {out / "eval.md"}'
          + (f', {out / "eval.png"}' if figure else ''))
    return report


def main(argv=None):
    """Command-line entry point; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run_cli(args)
    except (ModelLoadError, DataError, ValueError, KeyError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
