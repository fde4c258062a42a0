"""Write a rosbag2 of camera frames plus ground truth from any supported dataset.

``python -m training.make_bag [--data PRESET] [--split val] --out BAG [--storage mcap|sqlite3]``

The bag is what a robot would have recorded: ``sensor_msgs/Image`` rgb8 frames and
``sensor_msgs/CameraInfo`` on the camera topics, plus ground-truth depth (``32FC1`` metres,
NaN = no measurement, +Inf = sky) and labels (``mono8``, 255 = ignore) on
``/ground_truth/*``, all stamped at a steady rate from ``--start-time``. ``training.replay``
plays it through the node and scores the answers.
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Writer

from . import bag_format as bf
from .cli_format import DefaultsHelpFormatter

KITTI_FX_PER_WIDTH = 721.5377 / 1242.0  # KITTI colour camera focal length / image width
SPLITS = ('val', 'train', 'all')  # as training.evaluate


def default_intrinsics(height, width):
    """KITTI-like pinhole intrinsics scaled to the frame size (fx = fy, centred)."""
    f = KITTI_FX_PER_WIDTH * width
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


class BagWriter:
    """Serialise frames into a rosbag2 with the layout of ``training.bag_format``."""

    def __init__(self, path, storage='mcap', frame_id='camera_optical_frame'):
        if storage not in bf.STORAGES:
            raise ValueError(f'storage {storage!r} not in {sorted(bf.STORAGES)}')
        self.ts = bf.typestore()
        self.frame_id = frame_id
        self.writer = Writer(path, version=9, storage_plugin=bf.STORAGES[storage])
        self.conns = {}
        self.count = 0

    def __enter__(self):
        self.writer.open()
        for topic, msgtype in ((bf.IMAGE_TOPIC, bf.IMAGE_TYPE),
                               (bf.CAMERA_INFO_TOPIC, bf.CAMERA_INFO_TYPE),
                               (bf.GT_DEPTH_TOPIC, bf.IMAGE_TYPE),
                               (bf.GT_LABELS_TOPIC, bf.IMAGE_TYPE)):
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        return self

    def __exit__(self, *exc):
        self.writer.close()

    def _header(self, stamp_ns):
        t = self.ts.types
        stamp = t['builtin_interfaces/msg/Time'](sec=int(stamp_ns // 10**9),
                                                 nanosec=int(stamp_ns % 10**9))
        return t['std_msgs/msg/Header'](stamp=stamp, frame_id=self.frame_id)

    def _image(self, header, array, encoding):
        array = np.ascontiguousarray(array)
        h, w = array.shape[:2]
        msg = self.ts.types[bf.IMAGE_TYPE](
            header=header, height=h, width=w, encoding=encoding,
            is_bigendian=int(sys.byteorder == 'big'), step=array.strides[0],
            data=np.frombuffer(array.tobytes(), dtype=np.uint8))
        return self.ts.serialize_cdr(msg, bf.IMAGE_TYPE)

    def _camera_info(self, header, height, width, k):
        k = np.asarray(k, dtype=np.float64)
        p = np.zeros((3, 4))
        p[:, :3] = k
        msg = self.ts.types[bf.CAMERA_INFO_TYPE](
            header=header, height=height, width=width, distortion_model='plumb_bob',
            d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
            binning_x=0, binning_y=0,
            roi=self.ts.types['sensor_msgs/msg/RegionOfInterest'](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        return self.ts.serialize_cdr(msg, bf.CAMERA_INFO_TYPE)

    def write(self, stamp_ns, image, depth=None, labels=None, intrinsics=None):
        """Write one frame (RGB uint8; optional dataset-convention depth and labels)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'image must be HxWx3 uint8 RGB, got {image.shape} {image.dtype}')
        header = self._header(stamp_ns)
        h, w = image.shape[:2]
        k = default_intrinsics(h, w) if intrinsics is None else intrinsics
        self.writer.write(self.conns[bf.IMAGE_TOPIC], stamp_ns, self._image(header, image, 'rgb8'))
        self.writer.write(self.conns[bf.CAMERA_INFO_TOPIC], stamp_ns,
                          self._camera_info(header, h, w, k))
        if depth is not None:
            self.writer.write(self.conns[bf.GT_DEPTH_TOPIC], stamp_ns,
                              self._image(header, bf.depth_to_rep117(depth), '32FC1'))
        if labels is not None:
            self.writer.write(self.conns[bf.GT_LABELS_TOPIC], stamp_ns,
                              self._image(header, np.asarray(labels, np.uint8), 'mono8'))
        self.count += 1


def write_bag(frames, out, storage='mcap', rate_hz=10.0, start_ns=1_700_000_000 * 10**9,
              frame_id='camera_optical_frame', overwrite=False, progress=None):
    """Write reader-contract frames (dicts with image/depth/labels) to a new bag."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f'bag {out} exists (use --overwrite)')
        shutil.rmtree(out)
    if rate_hz <= 0:
        raise ValueError('rate must be positive')
    period = int(round(1e9 / rate_hz))
    try:
        with BagWriter(out, storage, frame_id) as writer:
            for i, frame in enumerate(frames):
                writer.write(start_ns + i * period, frame['image'], frame.get('depth'),
                             frame.get('labels'), frame.get('intrinsics'))
                if progress:
                    progress(i + 1)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written bag left to trip a re-run
        raise
    return writer.count


def build_parser():
    """Return the CLI parser (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog='python -m training.make_bag', description=__doc__.split('\n\n')[0],
        epilog='The frames are the ones `python -m training.evaluate` scores with the same '
               '--data/--section/--split/--max-frames/--set, so offline and replay metrics '
               'compare frame for frame. Example: python -m training.make_bag --data cpu '
               '--split val --max-frames 50 --out outputs/eval.bag. Exit status 2 on a bad '
               'dataset or option. Docs: docs/evaluation.md#write-a-bag',
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--data', default='cpu',
                        help='training preset (cpu, paper, test) or YAML config whose data.* '
                             'sections describe the datasets')
    parser.add_argument('--section', default=None,
                        help='data section to write (default: eval.data of the config = eval)')
    parser.add_argument('--split', default=None,
                        help='split of that section: val, train or all (default: eval.split '
                             '= val); a section name (eval, sim, real) is taken as --section')
    parser.add_argument('--out', required=True, help='output bag directory')
    parser.add_argument('--storage', default='mcap', choices=sorted(bf.STORAGES),
                        help='rosbag2 storage plugin')
    parser.add_argument('--rate', type=float, default=10.0, help='frame rate of the stamps, Hz')
    parser.add_argument('--start-time', type=float, default=1_700_000_000.0,
                        help='stamp of the first frame, seconds since the epoch')
    parser.add_argument('--max-frames', type=int, default=0,
                        help='at most N frames, evenly spaced over the split (0 = all)')
    parser.add_argument('--frame-id', default='camera_optical_frame',
                        help='header.frame_id of every message')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    parser.add_argument('--set', action='extend', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides (repeatable), e.g. data.eval.root=/data/kitti '
                             'data.eval.format=kitti')
    parser.add_argument('--quiet', action='store_true', help='no progress line')
    return parser


def select_data(config, section=None, split=None, overrides=(), max_frames=0):
    """Resolve ``(data_cfg, split)`` exactly as ``training.evaluate`` does for its CLI."""
    from sim2real_perception.config import load_config
    from .data import resolve
    cfg = load_config(config, list(overrides))
    if split is not None and split not in SPLITS:
        if split not in cfg['data']:
            raise ValueError(f'--split {split!r}: not a split {SPLITS} nor a data section '
                             f'{sorted(cfg["data"])}')
        section, split = split, None
    section = section or cfg['eval']['data']
    if section not in cfg['data']:
        raise ValueError(f'data section {section!r} not in {sorted(cfg["data"])}')
    data_cfg = resolve(cfg['data'][section])
    if max_frames:
        data_cfg['max_frames'] = int(max_frames)
    return data_cfg, split or cfg['eval']['split']


def main(argv=None):
    """Run the CLI; return the exit status."""
    args = build_parser().parse_args(argv)
    from .data import DataError, iter_frames
    try:
        data_cfg, split = select_data(args.data, args.section, args.split, args.set,
                                      args.max_frames)
        frames = iter_frames(data_cfg, split=split)
        progress = None if args.quiet else \
            (lambda i: print(f'\r[make_bag] {i} frames', end='', flush=True))
        n = write_bag(frames, args.out, args.storage, args.rate, int(args.start_time * 1e9),
                      args.frame_id, args.overwrite, progress=progress)
    except (DataError, ValueError, KeyError, FileExistsError, FileNotFoundError) as exc:
        print(f'\n[make_bag] error: {exc}', file=sys.stderr)
        return 2
    where = f'{data_cfg["format"]} {data_cfg["root"]}, split {split}'
    print(('' if args.quiet else '\n')
          + f'[make_bag] wrote {n} frames ({where}) to {args.out} ({args.storage})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
