"""Appearance-gap analysis: which effect of the real style costs the sim-trained models.

The real-style frames differ from the sim frames by a list of effects (``RealStyle``:
surface textures, cast shadows, harder lighting, colour balance, saturation, exposure,
vignetting, blur, sensor noise, JPEG). This script re-renders the transfer benchmark's
real-style val frames (the same scenes, cameras and ground truth) with one effect at a time
switched off, and scores the benchmark's exported models on each version. An effect whose
removal raises a sim-trained model's mIoU a lot is where its labels break; the oracle's
column shows whether the effect also makes the frames harder for a model trained on them.

- ``none`` switches nothing off: its frames are checked to equal the benchmark's files
  byte for byte, so its figures are the benchmark's real-split figures of each seed.
- ``all`` switches every listed effect off at once (the sky's photo look and the camera's
  height and pitch noise stay: they are not separate effects of ``RealStyle``).
- ``sim_look`` renders the same geometry, camera and ground truth with the sim's own
  renderer and look (the ``SimStyle`` of ``--sim-data``'s manifest): no appearance gap at
  all, so what a sim-trained model still misses there is the new scenes, not the look. The
  other ``sim_look_*`` versions put one property of each real drive back into that look
  (``SIM_LOOKS``): how much of the gap that property alone makes.

``python bench/analyse_gap_effects.py`` reads the models at ``<runs>/<row>_s<seed>/export``
(made by ``python bench/bench_transfer.py``), writes ``bench/results/gap_effects.json`` and
``.md`` and prints the table. It trains nothing: about a minute of rendering plus seconds
per model and effect on 2 CPU cores. See docs/benchmarks.md.
"""
import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.analyse_depth_errors import (add_export_arguments,  # noqa: E402
                                        dataset_and_exports)

DEFAULT_ROWS = ('sim_only', 'sim_only_aug_vars', 'twin_vae_mse', 'twin_vae', 'oracle')
SPLIT = 'val'
#: Effect name -> the RealStyle fields that switch it off (the sim look for that effect).
EFFECTS = {
    'texture': {'texture': 0.0},
    'shadow': {'shadow': 0.0},
    'lighting': {'ambient': 0.62, 'diffuse': 0.45},   # the sim's Lambert weights
    'colour_balance': {'white_balance': 0.0, 'warm': 0.0},
    'saturation': {'saturation': 1.0},
    'exposure': {'exposure': 0.0},
    'vignetting': {'vignetting': 0.0},
    'blur': {'blur_sigma': 0.0},
    'noise': {'noise_std': 0.0},
    'jpeg': {'jpeg_quality': 0},
}
ALL = 'all'
NONE = 'none'
#: Sim-look version -> the real drive's properties put back into the sim's look: its sun
#: (the direction of shading and cast shadows), the real style's texture amplitude, and
#: its own texture patterns (the sim has one fixed set of assets).
SIM_LOOKS = {
    'sim_look': (),
    'sim_look_sun': ('sun',),
    'sim_look_texture': ('texture',),
    'sim_look_assets': ('texture_seed',),
}


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_gap_effects.py',
        description='Which real-style effect costs the sim-trained models: re-render the '
                    "transfer benchmark's real-style val frames with one appearance effect "
                    'off at a time (same scenes and ground truth) and score the exports of '
                    'python bench/bench_transfer.py on each; writes gap_effects.json/.md '
                    '(docs/benchmarks.md).')
    add_export_arguments(p, DEFAULT_ROWS)
    p.add_argument('--config', default='cpu',
                   help='preset: data and eval settings, as bench_transfer.py used '
                        '(default: cpu)')
    p.add_argument('--effects', nargs='+', default=[NONE, *EFFECTS, ALL],
                   choices=[NONE, *EFFECTS, ALL, *SIM_LOOKS], metavar='EFFECT',
                   help='effects to switch off, one version of the frames each (default: '
                        f'{" ".join([NONE, *EFFECTS, ALL])}); also {" ".join(SIM_LOOKS)}: '
                        "the same geometry in the sim's look (from --sim-data), with the "
                        "drive's sun, texture amplitude or texture patterns put back")
    p.add_argument('--sim-data', default='outputs/bench_transfer/data_sim_textured',
                   help='the sim tree whose manifest gives the sim_look versions their '
                        'SimStyle (default: %(default)s, the --sim-look textured sim)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where gap_effects.json/.md go (default: bench/results)')
    return p


def style_without(base, effect):
    """Return the RealStyle ``base`` with ``effect`` (or every effect for ``all``) off."""
    return replace(base, **switched_off(effect))


def switched_off(effect):
    """Return the RealStyle fields ``effect`` sets (every effect's for ``all``)."""
    if effect in SIM_LOOKS:
        return {}
    names = [] if effect == NONE else list(EFFECTS) if effect == ALL else [effect]
    return {k: v for n in names for k, v in EFFECTS[n].items()}


def val_frames(cfg, val_fraction):
    """Return [(drive index, frame index)] of the val split: the last frames of each drive."""
    out = []
    for index, n in enumerate(cfg['frames'][1]):
        n_val = int(round(n * float(val_fraction)))
        out += [(index, k) for k in range(n - n_val, n)]
    return out


def sim_look_style(sim_style, effect, base, look):
    """Return the SimStyle of sim-look version ``effect`` for a drive of ``look``."""
    put_back = SIM_LOOKS[effect]
    changes = {}
    if 'sun' in put_back:
        changes.update(sun_azimuth_deg=float(look['sun_azimuth_deg']),
                       sun_elevation_deg=float(look['sun_elevation_deg']))
    if 'texture' in put_back:
        changes['texture'] = float(base.texture * base.gap)
    if 'texture_seed' in put_back:
        changes['texture_seed'] = int(look['texture_seed'])
    return replace(sim_style, **changes)


def render_version(cfg, keys, style, sim=None):
    """Render the val frames ``keys`` with ``style``; return a list of RGB uint8 arrays.

    ``sim`` (a drive's look -> SimStyle) renders each frame's geometry, cast with
    ``style``'s camera (its height and pitch draws), with the sim's renderer instead.
    """
    from training.data.make_procedural import (real_drive_look, real_frame_geometry,
                                               real_sequence, render_real_frame)
    from training.data.street_style import render_sim
    images, drives = [], {}
    for index, k in keys:
        if index not in drives:
            drives[index] = (real_sequence(cfg, index), real_drive_look(cfg, index, style))
        seq, look = drives[index]
        if sim is None:
            images.append(render_real_frame(cfg, index, k, seq, style, look)[0])
        else:
            geo, cam, _ = real_frame_geometry(cfg, index, k, seq, style, look)
            images.append(render_sim(geo, seq['layout'], sim(look), cam))
    return images


def score(predictor, images, frames, settings):
    """Return mIoU, pixel accuracy and AbsRel of one model on images with the frames' GT."""
    from training.evaluate import METRIC_KEYS
    from training.metrics import DepthMetrics, SegMetrics
    seg = SegMetrics(num_classes=len(predictor.class_names),
                     class_names=predictor.class_names)
    depth = DepthMetrics(**{k: settings[k] for k in METRIC_KEYS})
    size = int(settings['batch_size'])
    for start in range(0, len(images), size):
        preds = predictor.predict_batch(images[start:start + size])
        for frame, pred in zip(frames[start:start + size], preds):
            seg.update(pred.labels, frame['labels'])
            depth.update(pred.depth, frame['depth'])
    s, d = seg.compute(), depth.compute()
    return {'miou': s['miou'], 'pixel_acc': s['pixel_acc'], 'abs_rel': d['abs_rel'],
            'per_class_iou': s['per_class_iou']}


def markdown(result):
    """Return the table: effect switched off -> each row's mIoU (change) and AbsRel."""
    rows = result['rows']
    effects = result['effects']
    base = effects[0] if effects[0] == NONE else None
    lines = [f'Real-style val split ({result["frames"]} frames), one appearance effect '
             f'switched off per line; mean over seeds {" ".join(map(str, result["seeds"]))}. '
             'Cells: mIoU (change against `none`) / AbsRel.', '',
             '| effect off | ' + ' | '.join(rows) + ' |', '|---|' + '---:|' * len(rows)]
    for e in effects:
        cells = []
        for r in rows:
            m = result['table'][e][r]
            delta = '' if base is None or e == base else \
                f' ({m["miou"] - result["table"][base][r]["miou"]:+.3f})'
            cells.append(f'{m["miou"]:.3f}{delta} / {m["abs_rel"]:.3f}')
        lines.append(f'| {e} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Render and score; exit 0 when at least one model was scored, 2 when none was found."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    data = Path(args.data)
    exports = dataset_and_exports(args)
    if exports is None:
        return 2
    from sim2real_perception.config import load_config
    from sim2real_perception.predictor import Predictor
    from training.data import resolve
    from training.data.make_procedural import render_config
    from training.data.street_style import RealStyle
    from training.evaluate import eval_settings, load_frames
    cfg = load_config(args.config, [f'data.eval.root={data.resolve()}'])
    settings = eval_settings(cfg, split=SPLIT)
    request = json.loads((data / 'manifest.json').read_text())['request']
    render = render_config(request)
    keys = val_frames(render, resolve(cfg['data']['eval'])['val_fraction'])
    frames = [f for _, f in load_frames(cfg['data']['eval'], SPLIT)]
    if len(frames) != len(keys):
        print(f'error: the val split has {len(frames)} frames, the manifest says '
              f'{len(keys)}', file=sys.stderr)
        return 2
    base = RealStyle(**render['real_style'])
    sim_style = None
    if any(e in SIM_LOOKS for e in args.effects):
        manifest = Path(args.sim_data) / 'manifest.json'
        if not manifest.is_file():
            print(f'error: the sim_look versions need a sim tree: {manifest} not found (python '
                  'bench/bench_transfer.py --sim-look textured makes it)', file=sys.stderr)
            return 2
        from training.data.street_style import SimStyle
        sim_style = SimStyle(**render_config(
            json.loads(manifest.read_text())['request'])['sim_style'])
    predictors = {(r, s): Predictor.from_path(path, backend=settings['backend'],
                                              device=settings['device'])
                  for r, by_seed in exports.items() for s, path in by_seed.items()}
    per_seed = {}
    for effect in args.effects:
        if effect in SIM_LOOKS:
            images = render_version(render, keys, base,
                                    partial(sim_look_style, sim_style, effect, base))
        else:
            images = render_version(render, keys, style_without(base, effect))
        if effect == NONE:
            same = all(np.array_equal(a, f['image']) for a, f in zip(images, frames))
            if not same:
                print('error: re-rendered frames differ from the dataset\'s files: the '
                      'generator changed since the data was made', file=sys.stderr)
                return 2
        for (row, seed), predictor in predictors.items():
            per_seed.setdefault(effect, {}).setdefault(row, {})[seed] = score(
                predictor, images, frames, settings)
        print(f'[gap_effects] {effect}: ' + ', '.join(
            f'{r} {np.mean([m["miou"] for m in per_seed[effect][r].values()]):.3f}'
            for r in exports), flush=True)
    table = {e: {r: {k: float(np.mean([m[k] for m in by_seed.values()]))
                     for k in ('miou', 'pixel_acc', 'abs_rel')}
                 for r, by_seed in rows.items()} for e, rows in per_seed.items()}
    words = argv if argv is not None else sys.argv[1:]
    result = {
        'command': 'python bench/analyse_gap_effects.py ' + ' '.join(map(shlex.quote, words)),
        'data': str(data), 'frames': len(frames), 'seeds': args.seeds,
        'rows': list(exports), 'effects': list(args.effects),
        'switched_off': {e: switched_off(e) for e in args.effects},
        'sim_style': None if sim_style is None else {'data': str(args.sim_data),
                                                     **asdict(sim_style)},
        'sim_looks': {e: list(SIM_LOOKS[e]) for e in args.effects if e in SIM_LOOKS},
        'table': table, 'per_seed': per_seed, 'total_s': time.perf_counter() - t0,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'gap_effects.json').write_text(json.dumps(result, indent=2) + '\n')
    (out / 'gap_effects.md').write_text(markdown(result))
    print(markdown(result))
    print(f'wrote {out / "gap_effects.json"} and .md in {result["total_s"]:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
