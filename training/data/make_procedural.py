"""Write built-in procedural street data to disk in the real dataset formats.

Sim frames become a Virtual KITTI 2 tree (clean game-engine look, dense depth and labels),
real-style frames a KITTI tree (photo look, sparse LiDAR depth, dense Cityscapes-id labels
for evaluation only), so training, evaluation and the readers run exactly the code paths
they run on the real datasets. Everything is a function of ``--seed``: the same seed gives
byte-identical files with any number of workers. Layout of ``--out DIR``::

    manifest.json                                  written last: seed, counts, styles, stats
    vkitti2/SceneNN/<variation>/colors.txt         "Category r g b"
    vkitti2/SceneNN/<variation>/intrinsic.txt      "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
    vkitti2/SceneNN/<variation>/frames/rgb/Camera_0/rgb_NNNNN.jpg
    vkitti2/SceneNN/<variation>/frames/depth/Camera_0/depth_NNNNN.png        uint16 cm, 65535 sky
    vkitti2/SceneNN/<variation>/frames/classSegmentation/Camera_0/classgt_NNNNN.png   RGB
    kitti/raw/2011_09_26/calib_cam_to_cam.txt      P_rect_02 = the camera
    kitti/raw/2011_09_26/<drive>_sync/image_02/data/NNNNNNNNNN.png            RGB
    kitti/raw/2011_09_26/<drive>_sync/image_02/timestamps.txt                 10 Hz
    kitti/raw/2011_09_26/<drive>_sync/semantic/image_02/NNNNNNNNNN.png        Cityscapes ids
    kitti/depth_annotated/train/<drive>_sync/proj_depth/groundtruth/image_02/NNNNNNNNNN.png
    kitti/depth_annotated/train/<drive>_sync/proj_depth/dense/image_02/NNNNNNNNNN.png
                                                   uint16 metres*256, 0 = no measurement

Read it back with the data sections ``{format: procedural_sim, root: DIR}`` and
``{format: procedural_real, root: DIR}``.
"""
import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np

from sim2real_perception.labels import (CLASS_NAMES, CLASS_TO_CITYSCAPES_ID,
                                        CLASS_TO_VKITTI2_CATEGORY, IGNORE_INDEX, NUM_CLASSES,
                                        VKITTI2_DEFAULT_COLORS)

from . import kitti, vkitti2
from .image_files import write_png, write_rgb
from .street_scene import Camera, ray_cast, sample_layout
from .street_style import (VARIATIONS, RealStyle, SimStyle, lidar_depth, real_look,
                           render_real, render_sim, style_from_overrides)

VERSION = 1
DEFAULT_HEIGHT, DEFAULT_WIDTH = 192, 640   # KITTI's aspect (375x1242) at about half size
DEFAULT_SIM_FRAMES = DEFAULT_REAL_FRAMES = 500
DEFAULT_SEQUENCE_FRAMES = 50               # frames per VKITTI 2 scene / KITTI drive
KITTI_DATE = '2011_09_26'
KITTI_START_NS = 1317042000 * 10**9        # 2011-09-26 13:00:00 UTC, first drive's first frame
FRAME_PERIOD_NS = 10**8                    # KITTI records at 10 Hz
CHUNK = 10                                 # frames per worker task
#: How often each environment preset is drawn for a scene / drive.
ENV_WEIGHTS = {'urban': 0.4, 'suburban': 0.3, 'rural': 0.15, 'highway': 0.15}
SIM, REAL = 0, 1

#: class id -> VKITTI 2 classgt colour; ignore (sidewalk) -> the ``Misc`` colour.
VKITTI2_LUT = np.array([VKITTI2_DEFAULT_COLORS['Misc']] * 256, dtype=np.uint8)
VKITTI2_LUT[:NUM_CLASSES] = [VKITTI2_DEFAULT_COLORS[c] for c in CLASS_TO_VKITTI2_CATEGORY]
#: class id -> Cityscapes id; ignore (the generator's only ignore surface, sidewalk) -> 8.
CITYSCAPES_SIDEWALK = 8
CITYSCAPES_LUT = np.full(256, CITYSCAPES_SIDEWALK, dtype=np.uint8)
CITYSCAPES_LUT[:NUM_CLASSES] = CLASS_TO_CITYSCAPES_ID


def default_workers():
    """Return the default worker count: min(2, CPU count)."""
    return max(1, min(2, os.cpu_count() or 1))


def _split(total, parts):
    return [total // parts + (i < total % parts) for i in range(parts)]


def drive_name(index):
    """KITTI raw drive folder name of drive ``index`` (0-based)."""
    return f'{KITTI_DATE}_drive_{index + 1:04d}_sync'


def scene_name(index):
    """Virtual KITTI 2 scene folder name of scene ``index`` (0-based)."""
    return f'Scene{index + 1:02d}'


def _sequence(seed, domain, index, frames):
    """Draw one scene/drive: environment, layout, camera path (cheap; redone per task)."""
    rng = np.random.default_rng([seed, domain, index, 0])
    names = sorted(ENV_WEIGHTS)
    env = names[int(rng.choice(len(names), p=[ENV_WEIGHTS[n] for n in names]))]
    step = rng.uniform(0.8, 1.6)                       # metres per frame (8-16 m/s at 10 Hz)
    wobble, phase = rng.uniform(0.0, 0.4), rng.uniform(0, 2 * np.pi)
    heading = rng.normal(0.0, 1.0, size=frames)        # degrees of yaw noise per frame
    layout = sample_layout(rng, frames * step + 20.0, env)
    z = 5.0 + step * np.arange(frames)
    x = layout.ego_x + wobble * np.sin(0.08 * np.arange(frames) + phase)
    return {'env': env, 'step_m': float(step), 'layout': layout, 'x': x, 'z': z,
            'yaw_deg': heading}


def _image_stats(rgb):
    """Return simple appearance statistics of one RGB frame (for the domain-gap report)."""
    mean = np.array(cv2.mean(rgb)[:3]) / 255.0
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    contrast = cv2.meanStdDev(grey)[1][0, 0] / 255.0
    high_freq = cv2.mean(cv2.convertScaleAbs(cv2.Laplacian(grey, cv2.CV_16S, ksize=1)))[0]
    r, g, b = cv2.split(rgb)
    sat = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    return np.array([*mean, contrast, high_freq / 255.0, cv2.mean(sat)[0] / 255.0])


STAT_NAMES = ('mean_r', 'mean_g', 'mean_b', 'contrast', 'high_freq', 'saturation')


def _render_task(task):
    """Render and write frames ``start:stop`` of one sequence; return counts and statistics."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)   # parallelism comes from the worker processes
    try:
        return _render_frames(*task)
    finally:
        cv2.setNumThreads(threads)


def real_drive_look(cfg, index, style):
    """Return drive ``index``'s appearance (``real_look``) and its camera height."""
    look_rng = np.random.default_rng([cfg['seed'], REAL, index, 1])
    look = real_look(look_rng, style)
    look['cam_height_m'] = style.cam_height_m + style.gap * look_rng.normal(0.0, 0.03)
    return look


def render_real_frame(cfg, index, k, seq, style, look):
    """Render frame ``k`` of real drive ``index``: (rgb, geometry, camera, frame rng).

    The random draws that decide the scene (layout, path, sun, pitch) do not depend on the
    style's effect sizes, so the same frame re-rendered with one effect off (as
    bench/analyse_gap_effects.py does) shows the same scene; ``rng`` continues into
    ``lidar_depth``.
    """
    geo, cam, rng = real_frame_geometry(cfg, index, k, seq, style, look)
    return render_real(geo, seq['layout'], cam, style, look, rng), geo, cam, rng


def real_frame_geometry(cfg, index, k, seq, style, look):
    """Return frame ``k`` of real drive ``index`` unrendered: (geometry, camera, frame rng).

    ``rng`` has drawn the camera's pitch and goes on into ``render_real``; a caller that
    draws the geometry another way (the sim's renderer) needs no real render.
    """
    rng = np.random.default_rng([cfg['seed'], REAL, index, 2, k])
    pitch = style.pitch_deg + style.gap * rng.normal(0.0, 0.3)   # body pitching
    cam = Camera.kitti_like(cfg['height'], cfg['width'], look['cam_height_m'], seq['x'][k],
                            seq['z'][k], pitch, seq['yaw_deg'][k])
    return ray_cast(seq['layout'], cam), cam, rng


def _render_frames(cfg, domain, index, start, stop):
    seq = _sequence(cfg['seed'], domain, index, cfg['frames'][domain][index])
    h, w, layout = cfg['height'], cfg['width'], seq['layout']
    out = Path(cfg['out'])
    classes = np.zeros((2, 256), np.int64)
    stats = {}
    if domain == SIM:
        base = SimStyle(**cfg['sim_style'])
        if base.scene_sun:
            sun_rng = np.random.default_rng([cfg['seed'], SIM, index, 3])
            base = replace(base, sun_azimuth_deg=float(sun_rng.uniform(-180, 180)),
                           sun_elevation_deg=float(sun_rng.uniform(20, 60)))
        scene = out / 'vkitti2' / scene_name(index)
        for k in range(start, stop):
            geos = {}
            for variation in cfg['variations']:
                style = replace(base, **VARIATIONS[variation])
                yaw = seq['yaw_deg'][k] + style.yaw_deg
                key = (yaw, style.cam_height_m, style.pitch_deg)
                if key not in geos:
                    cam = Camera.kitti_like(h, w, style.cam_height_m, seq['x'][k], seq['z'][k],
                                            style.pitch_deg, yaw)
                    geos[key] = ray_cast(layout, cam), cam
                geo, cam = geos[key]
                rgb = render_sim(geo, layout, style, cam)
                frames = scene / variation / 'frames'
                write_rgb(frames / 'rgb' / 'Camera_0' / f'rgb_{k:05d}.jpg', rgb,
                          style.jpeg_quality)
                write_png(frames / 'depth' / 'Camera_0' / f'depth_{k:05d}.png',
                          vkitti2.depth_to_png(geo.depth))
                write_rgb(frames / 'classSegmentation' / 'Camera_0' / f'classgt_{k:05d}.png',
                          VKITTI2_LUT[geo.labels])
                classes[SIM] += np.bincount(geo.labels.ravel(), minlength=256)
                stats.setdefault(f'sim/{variation}', []).append(_image_stats(rgb))
    else:
        style = RealStyle(**cfg['real_style'])
        look = real_drive_look(cfg, index, style)
        drive = out / 'kitti' / 'raw' / KITTI_DATE / drive_name(index)
        depth_dir = out / 'kitti' / 'depth_annotated' / 'train' / drive_name(index) / 'proj_depth'
        for k in range(start, stop):
            rgb, geo, cam, rng = render_real_frame(cfg, index, k, seq, style, look)
            sparse = lidar_depth(geo, cam, style, rng)
            name = f'{k:010d}.png'
            write_rgb(drive / 'image_02' / 'data' / name, rgb)
            write_png(drive / 'semantic' / 'image_02' / name, CITYSCAPES_LUT[geo.labels])
            write_png(depth_dir / 'groundtruth' / 'image_02' / name, kitti.depth_to_png(sparse))
            write_png(depth_dir / 'dense' / 'image_02' / name, kitti.depth_to_png(geo.depth))
            classes[REAL] += np.bincount(geo.labels.ravel(), minlength=256)
            stats.setdefault('real', []).append(_image_stats(rgb))
            stats.setdefault('real_lidar_density', []).append(np.array([(sparse > 0).mean()]))
    return {'domain': domain, 'frames': stop - start, 'classes': classes,
            'stats': {k: np.sum(v, axis=0) for k, v in stats.items()},
            'counts': {k: len(v) for k, v in stats.items()}}


def _write_sequence_files(out, cfg, domain, index, n, focal):
    """Write the per-sequence text files (colors/intrinsics; timestamps)."""
    h, w = cfg['height'], cfg['width']
    if domain == SIM:
        for variation in cfg['variations']:
            folder = out / 'vkitti2' / scene_name(index) / variation
            folder.mkdir(parents=True, exist_ok=True)
            vkitti2.write_colors_txt(folder / 'colors.txt', VKITTI2_DEFAULT_COLORS)
            lines = ['frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]'] + [
                f'{k} 0 {focal:.6f} {focal:.6f} {w / 2:.6f} {h / 2:.6f}' for k in range(n)]
            (folder / 'intrinsic.txt').write_text('\n'.join(lines) + '\n')
        return
    folder = out / 'kitti' / 'raw' / KITTI_DATE / drive_name(index) / 'image_02'
    folder.mkdir(parents=True, exist_ok=True)
    start = KITTI_START_NS + index * 3600 * 10**9
    (folder / 'timestamps.txt').write_text(''.join(
        kitti.format_timestamp(start + k * FRAME_PERIOD_NS) + '\n' for k in range(n)))


def _write_calib(path, height, width, focal):
    p = f'{focal:.6e} 0.000000e+00 {width / 2:.6e} 0.000000e+00 0.000000e+00 {focal:.6e} ' \
        f'{height / 2:.6e} 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'calib_time: 09-Jan-2012 13:57:47\n'
                    f'S_rect_02: {width:.6e} {height:.6e}\n'
                    f'R_rect_02: 1 0 0 0 1 0 0 0 1\n'
                    f'P_rect_02: {p}\n')


MARKER = '.make_procedural_incomplete'


def _prepare_out(out, overwrite, request):
    """Make ``out`` ready; return the existing manifest when it already holds ``request``.

    A folder left incomplete by an interrupted run (marker file, no manifest) is replaced;
    finished data with other parameters needs ``overwrite``.
    """
    manifest_path = out / 'manifest.json'
    parts = [manifest_path, out / 'vkitti2', out / 'kitti']
    present = [p for p in parts if p.exists()]
    if manifest_path.is_file() and not overwrite and not (out / MARKER).exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if manifest.get('version') == VERSION and manifest.get('request') == request:
            return manifest
    if present and not overwrite and not (out / MARKER).exists():
        raise FileExistsError(f'{out} already holds other generated data ({present[0].name}); '
                              'pass --overwrite to replace it')
    for p in present:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text('generation in progress or interrupted\n')
    return None


def render_config(request, out=''):
    """Return the render settings of a generate() request (a manifest's ``request``)."""
    seq_len = int(request['frames_per_sequence'])
    frames = {d: _split(n, math.ceil(n / seq_len)) if n else []
              for d, n in ((SIM, int(request['sim_frames'])),
                           (REAL, int(request['real_frames'])))}
    return {'out': str(out), 'seed': int(request['seed']), 'height': int(request['height']),
            'width': int(request['width']), 'variations': list(request['variations']),
            'frames': frames, 'sim_style': _tuples(request['sim_style']),
            'real_style': _tuples(request['real_style'])}


#: SimStyle fields added after data was first generated: recorded in a manifest only when
#: set, so trees made before them (the same pixels) stay up to date.
_SIM_ADDED = ('texture', 'texture_seed', 'shadow', 'scene_sun')


def _recorded(sim):
    """Return ``sim``'s fields for the manifest, the later additions only when changed."""
    default = SimStyle()
    return {k: v for k, v in asdict(sim).items()
            if k not in _SIM_ADDED or v != getattr(default, k)}


def _tuples(style):
    """Return a style dict from JSON with its lists back as the dataclass's tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in style.items()}


def real_sequence(cfg, index):
    """Return real drive ``index``'s scene, layout and camera path."""
    return _sequence(cfg['seed'], REAL, index, cfg['frames'][REAL][index])


def generate(out, sim_frames=DEFAULT_SIM_FRAMES, real_frames=DEFAULT_REAL_FRAMES,
             height=DEFAULT_HEIGHT, width=DEFAULT_WIDTH, seed=0, gap=1.0,
             variations=('clone',), frames_per_sequence=DEFAULT_SEQUENCE_FRAMES, workers=None,
             sim_style=(), real_style=(), overwrite=False, progress=False):
    """Generate procedural sim (VKITTI 2) and real (KITTI) data under ``out``.

    ``sim_frames`` viewpoints are rendered once per entry of ``variations`` (VKITTI 2's
    clone, fog, rain, morning, sunset, overcast, 15/30-deg-left/right); ``gap`` scales every
    real-style effect (0 = real frames look like sim frames, only the camera differs);
    ``sim_style`` / ``real_style`` are ``KEY=VALUE`` overrides of ``SimStyle`` /
    ``RealStyle``. Returns the manifest dict (also written to ``out/manifest.json``).
    """
    out = Path(out)
    sim_frames, real_frames = int(sim_frames), int(real_frames)
    height, width, seq_len = int(height), int(width), int(frames_per_sequence)
    if sim_frames < 0 or real_frames < 0 or sim_frames + real_frames == 0:
        raise ValueError('need sim_frames >= 0, real_frames >= 0 and at least one frame')
    if height < 8 or width < 8 or seq_len < 1:
        raise ValueError('height and width must be >= 8 and frames_per_sequence >= 1')
    variations = variations.split(',') if isinstance(variations, str) else list(variations)
    bad = [v for v in variations if v not in VARIATIONS]
    if bad or not variations:
        raise ValueError(f'unknown variations {bad}; known: {list(VARIATIONS)}')
    sim = style_from_overrides(SimStyle(), sim_style)
    real = style_from_overrides(replace(RealStyle(), gap=float(gap)), real_style)
    workers = default_workers() if workers is None else max(1, int(workers))
    request = json.loads(json.dumps({
        'sim_frames': sim_frames, 'real_frames': real_frames, 'height': height, 'width': width,
        'seed': int(seed), 'variations': variations, 'frames_per_sequence': seq_len,
        'sim_style': _recorded(sim), 'real_style': asdict(real)}))
    cfg = render_config(request, out)
    frames = cfg['frames']
    focal = Camera.kitti_like(height, width, 1.0).fx
    existing = _prepare_out(out, overwrite, request)
    if existing is not None:
        existing['elapsed_s'] = 0.0
        existing['up_to_date'] = True
        return existing
    tasks = []
    for domain in (SIM, REAL):
        for index, n in enumerate(frames[domain]):
            _write_sequence_files(out, cfg, domain, index, n, focal)
            tasks += [(cfg, domain, index, s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    if real_frames:
        _write_calib(out / 'kitti' / 'raw' / KITTI_DATE / 'calib_cam_to_cam.txt', height, width,
                     focal)
    t0 = time.perf_counter()
    results = _run_tasks(tasks, workers, progress)
    elapsed = time.perf_counter() - t0
    manifest = _manifest(cfg, results, sim, real, focal)
    manifest['request'] = request
    tmp = out / 'manifest.json.tmp'
    tmp.write_text(json.dumps(manifest, indent=2) + '\n')
    tmp.replace(out / 'manifest.json')
    (out / MARKER).unlink()
    manifest['elapsed_s'] = elapsed   # not in the file: the file is a function of the seed
    return manifest


def _run_tasks(tasks, workers, progress):
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(t[4] - t[3] for t in tasks), unit='frame', file=sys.stderr)
    results = []
    if workers == 1 or len(tasks) <= 1:
        it = map(_render_task, tasks)
        pool = None
    else:
        # spawn: safe whatever threads the caller runs (torch, OpenCV); workers import no torch
        pool = multiprocessing.get_context('spawn').Pool(min(workers, len(tasks)))
        it = pool.imap_unordered(_render_task, tasks)
    try:
        for res in it:
            results.append(res)
            if bar is not None:
                bar.update(res['frames'])
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    return results


def _manifest(cfg, results, sim, real, focal):
    classes = sum((r['classes'] for r in results), np.zeros((2, 256), np.int64))
    van, car = CLASS_NAMES.index('van'), CLASS_NAMES.index('car')
    classes[REAL, car] += classes[REAL, van]   # as written: KITTI labels vans as car
    classes[REAL, van] = 0
    sums, counts = {}, {}
    for r in results:
        for key, value in r['stats'].items():
            sums[key] = sums.get(key, 0) + value
            counts[key] = counts.get(key, 0) + r['counts'][key]

    def fractions(row):
        total = max(int(row.sum()), 1)
        out = {name: round(int(row[i]) / total, 5) for i, name in enumerate(CLASS_NAMES)}
        out['ignore'] = round(int(row[IGNORE_INDEX]) / total, 5)
        return out

    gap = {key: {n: round(float(v), 4) for n, v in zip(STAT_NAMES, sums[key] / counts[key])}
           for key in sorted(sums) if key != 'real_lidar_density'}
    sim_n, real_n = cfg['frames'][SIM], cfg['frames'][REAL]
    return {
        'generator': 'training.data.make_procedural', 'version': VERSION, 'seed': cfg['seed'],
        'height': cfg['height'], 'width': cfg['width'],
        'camera': {'focal_px': round(focal, 4), 'cx': cfg['width'] / 2, 'cy': cfg['height'] / 2,
                   'sim_height_m': sim.cam_height_m, 'sim_pitch_deg': sim.pitch_deg,
                   'real_height_m': real.cam_height_m, 'real_pitch_deg': real.pitch_deg},
        'sim': {'format': 'vkitti2', 'root': 'vkitti2', 'frames': sum(sim_n),
                'images': sum(sim_n) * len(cfg['variations']),
                'scenes': {scene_name(i): n for i, n in enumerate(sim_n)},
                'variations': cfg['variations'], 'style': cfg['sim_style'],
                'class_fractions': fractions(classes[SIM]) if sum(sim_n) else None},
        'real': {'format': 'kitti', 'root': 'kitti/raw', 'depth_root': 'kitti/depth_annotated',
                 'frames': sum(real_n),
                 'drives': {drive_name(i): n for i, n in enumerate(real_n)},
                 'depth_types': ['groundtruth', 'dense'], 'style': cfg['real_style'],
                 'lidar_density': round(float(sums['real_lidar_density'][0])
                                        / counts['real_lidar_density'], 4) if sum(real_n)
                 else None,
                 'class_fractions': fractions(classes[REAL]) if sum(real_n) else None,
                 'labels': 'Cityscapes ids; van is written as car (26) as in KITTI'},
        'image_stats': gap,
    }


def build_parser():
    """Return the command-line parser (``--help`` documents every option)."""
    parser = argparse.ArgumentParser(
        prog='python -m training.data.make_procedural',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split('\n\n')[0] + '\n\n' + __doc__.split('\n\n', 1)[1],
        epilog='defaults: KITTI\'s aspect at about half resolution (192x640); a square-pixel\n'
               'camera with KITTI\'s focal length per row (29 deg vertical field of view, so\n'
               'another width is a centred crop of a KITTI camera); 50 frames per scene/drive;\n'
               'sim camera 1.50 m high and level, real camera 1.65 m high pitched 1 deg down.\n\n'
               'example:\n  python -m training.data.make_procedural --out outputs/data/procedural'
               ' \\\n      --preview outputs/data/procedural/preview.png\n\ndocs: docs/data.md')
    parser.add_argument('--out', required=True, type=Path,
                        help='output folder (created; existing generated data needs --overwrite)')
    parser.add_argument('--sim-frames', type=int, default=DEFAULT_SIM_FRAMES,
                        help='sim viewpoints, each written once per variation (default: '
                             '%(default)s)')
    parser.add_argument('--real-frames', type=int, default=DEFAULT_REAL_FRAMES,
                        help='real-style frames (default: %(default)s)')
    parser.add_argument('--height', type=int, default=DEFAULT_HEIGHT,
                        help='image height in pixels (default: %(default)s)')
    parser.add_argument('--width', type=int, default=DEFAULT_WIDTH,
                        help='image width in pixels (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed; same seed = identical files (default: %(default)s)')
    parser.add_argument('--gap', type=float, default=1.0,
                        help='strength of the real-style appearance effects: 0 = sim look '
                             '(camera height/pitch still differ), 1 = default, >1 = harder '
                             '(default: %(default)s)')
    parser.add_argument('--variations', default='clone',
                        help='comma-separated VKITTI 2 variations to render for every sim '
                             f'frame, of {",".join(VARIATIONS)} (default: %(default)s)')
    parser.add_argument('--frames-per-sequence', type=int, default=DEFAULT_SEQUENCE_FRAMES,
                        help='frames per VKITTI 2 scene / KITTI drive; each sequence is a new '
                             'random street (default: %(default)s)')
    parser.add_argument('--sim-style', action='append', default=[], metavar='KEY=VALUE',
                        help='override a SimStyle field (training/data/street_style.py), '
                             'e.g. ambient=0.5; repeatable')
    parser.add_argument('--real-style', action='append', default=[], metavar='KEY=VALUE',
                        help='override a RealStyle field, e.g. noise_std=8 or '
                             'lidar_beams=32; repeatable')
    parser.add_argument('--workers', type=int, default=default_workers(),
                        help='worker processes (default: min(2, CPU count) = %(default)s)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace generated data already in --out (only manifest.json, '
                             'vkitti2/ and kitti/ are removed). Without it, data with the same '
                             'parameters is kept as is, an interrupted run is redone, and other '
                             'data is an error')
    parser.add_argument('--preview', type=Path, metavar='PNG',
                        help='also write a PNG grid of sim and real frames with depth and '
                             'labels (as python -m training.data.preview)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def main(argv=None):
    """Run the command line."""
    args = build_parser().parse_args(argv)
    try:
        manifest = generate(args.out, args.sim_frames, args.real_frames, args.height,
                            args.width, args.seed, args.gap, args.variations.split(','),
                            args.frames_per_sequence, args.workers, args.sim_style,
                            args.real_style, args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if manifest.get('up_to_date'):
        print(f'{args.out} already holds this data (same seed and parameters): nothing to do')
    else:
        n = manifest['sim']['images'] + manifest['real']['frames']
        print(f'wrote {manifest["sim"]["images"]} sim images ({len(manifest["sim"]["scenes"])} '
              f'scenes x {len(manifest["sim"]["variations"])} variations) and '
              f'{manifest["real"]["frames"]} real frames ({len(manifest["real"]["drives"])} '
              f'drives) at {args.width}x{args.height} to {args.out} in '
              f'{manifest["elapsed_s"]:.1f} s ({n / max(manifest["elapsed_s"], 1e-9):.1f} '
              f'frames/s, {args.workers} workers)')
        for key, values in manifest['image_stats'].items():
            print(f'  {key:14s} ' + ' '.join(f'{k}={v:.3f}' for k, v in values.items()))
    if args.preview:
        from .preview import save_preview
        save_preview(args.out, args.preview)
        print(f'preview: {args.preview}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
