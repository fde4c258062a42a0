"""Preview grid of generated (or any) sim and real data: image, depth and labels side by side.

The frames are read back through the dataset readers, so the picture shows what training
and evaluation will see, not what the generator meant to write.
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from training.figures import tile

from .data_config import open_source
from .image_files import DataError

COLUMNS = ('sim image', 'sim depth', 'sim labels', 'real image', 'real LiDAR depth',
           'real labels')


def _frames(data_cfg, rows):
    try:
        source = open_source(data_cfg)
    except DataError:   # e.g. generated without sim or without real frames: grey tiles
        return [{}] * rows
    picks = np.linspace(0, len(source) - 1, rows).round().astype(int)
    return [source.load(int(i)) for i in picks]


def save_preview(root, path, rows=3, tile_width=256, sim_cfg=None, real_cfg=None):
    """Write a PNG: per row one sim frame and one real frame, each as image, depth, labels.

    ``root`` is a generated folder (``procedural_sim`` / ``procedural_real``); ``sim_cfg`` /
    ``real_cfg`` (data section dicts) show any other dataset instead.
    """
    sim = _frames(sim_cfg or {'format': 'procedural_sim', 'root': str(root)}, rows)
    real = _frames(real_cfg or {'format': 'procedural_real', 'root': str(root)}, rows)
    first = next((f for f in sim + real if 'image' in f), None)
    if first is None:
        raise DataError(f'{root}: neither sim nor real frames to preview')
    h0, w0 = first['image'].shape[:2]
    tile_h = max(1, int(round(tile_width * h0 / w0)))
    header = np.full((22, tile_width * len(COLUMNS), 3), 255, np.uint8)
    for i, name in enumerate(COLUMNS):
        cv2.putText(header, name, (i * tile_width + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    body = []
    for s, r in zip(sim, real):
        tiles = [tile(f.get(key), tile_h, tile_width, kind) for f in (s, r)
                 for key, kind in (('image', 'input'), ('depth', 'depth'),
                                   ('labels', 'labels'))]
        body.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate([header, *body], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f'cannot write {path}')
    return path


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog='python -m training.data.preview',
        description='Write a PNG grid of sim frames (Virtual KITTI 2 tree) and real frames '
                    '(KITTI tree) of a procedural data folder: image, depth and labels side '
                    'by side, read back through the dataset readers.',
        epilog='Docs: docs/data.md#built-in-procedural-data')
    parser.add_argument('--root', required=True, type=Path,
                        help='folder written by python -m training.data.make_procedural')
    parser.add_argument('--out', required=True, type=Path, help='PNG file to write')
    parser.add_argument('--rows', type=int, default=3,
                        help='frames per domain, evenly spaced (default: %(default)s)')
    parser.add_argument('--tile-width', type=int, default=256,
                        help='width of each tile in pixels (default: %(default)s)')
    return parser


def main(argv=None):
    """Run the command line."""
    args = build_parser().parse_args(argv)
    save_preview(args.root, args.out, args.rows, args.tile_width)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
