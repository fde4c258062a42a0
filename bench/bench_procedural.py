"""Speed of the procedural data generator (frames/s, CPU ms per frame) and its domain gap.

Runs ``training.data.make_procedural.generate`` into a temporary folder at 256x256 and at the
default size: sim-only and real-only with one worker (CPU cost per frame and domain), then
an even sim/real mix with the default workers (wall-clock frames/s). Prints a table and
writes ``bench/results/bench_procedural.json`` with the numbers and the per-domain image
statistics (mean colour, contrast, high-frequency energy, saturation) of the manifest.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.data.make_procedural import (DEFAULT_HEIGHT, DEFAULT_WIDTH,  # noqa: E402
                                           default_workers, generate)


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run(out, sim, real, height, width, workers):
    cpu, wall = _cpu(), time.perf_counter()
    manifest = generate(out, sim, real, height, width, seed=0, workers=workers,
                        overwrite=True)
    return time.perf_counter() - wall, _cpu() - cpu, manifest


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog='Docs: docs/benchmarks.md#procedural-data-generator')
    parser.add_argument('--frames', type=int, default=200,
                        help='frames per measurement (default: %(default)s)')
    parser.add_argument('--workers', type=int, default=default_workers(),
                        help='workers of the mixed run (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=REPO / 'bench' / 'results'
                        / 'bench_procedural.json', help='JSON result file')
    return parser


def main(argv=None):
    """Run the benchmark."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in ((256, 256), (DEFAULT_HEIGHT, DEFAULT_WIDTH)):
            n = args.frames
            _, sim_cpu, _ = _run(Path(tmp) / 'sim', n, 0, h, w, 1)
            _, real_cpu, _ = _run(Path(tmp) / 'real', 0, n, h, w, 1)
            wall, cpu, manifest = _run(Path(tmp) / 'mix', n // 2, n - n // 2, h, w,
                                       args.workers)
            rows.append({'height': h, 'width': w, 'frames': n, 'workers': args.workers,
                         'sim_cpu_ms_per_frame': 1000 * sim_cpu / n,
                         'real_cpu_ms_per_frame': 1000 * real_cpu / n,
                         'mixed_wall_s': wall, 'mixed_cpu_s': cpu,
                         'mixed_frames_per_s': n / wall,
                         'seconds_per_1000_frames': 1000 * wall / n,
                         'image_stats': manifest['image_stats'],
                         'lidar_density': manifest['real']['lidar_density']})
    print(f'{"size":>9} {"sim CPU ms/f":>13} {"real CPU ms/f":>14} {"frames/s":>9} '
          f'{"s/1000 f":>9}  (mixed run: {args.workers} workers, {os.cpu_count()} CPUs)')
    for r in rows:
        print(f'{r["width"]:>4}x{r["height"]:<4} {r["sim_cpu_ms_per_frame"]:13.1f} '
              f'{r["real_cpu_ms_per_frame"]:14.1f} {r["mixed_frames_per_s"]:9.1f} '
              f'{r["seconds_per_1000_frames"]:9.1f}')
    print('domain statistics (mean over frames):')
    for r in rows:
        for key, stats in r['image_stats'].items():
            print(f'  {r["width"]}x{r["height"]} {key:10s} '
                  + ' '.join(f'{k}={v:.3f}' for k, v in stats.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({'machine': platform.platform(), 'cpus': os.cpu_count(),
                                    'load_avg_1m': os.getloadavg()[0], 'results': rows},
                                   indent=2) + '\n')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
