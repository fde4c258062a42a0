"""KITTI readers (the real domain): raw drives with depth annotations, and semantics.

Raw drives (``root`` holds the ``<date>`` folders, or the ``<drive>_sync`` folders directly)::

    <date>/<drive>_sync/image_02/data/NNNNNNNNNN.png
    <date>/<drive>_sync/image_02/timestamps.txt          optional, gives ``stamp_ns``
    <date>/calib_cam_to_cam.txt                          optional, ``P_rect_02`` -> intrinsics

Depth annotations (``depth_root``, default ``root``; the drive folder is searched directly
under it, under ``train/`` / ``val/``, or under ``<date>/``)::

    <drive>_sync/proj_depth/<depth_type>/image_02/NNNNNNNNNN.png   uint16 metres*256, 0 = none

``depth_type`` is ``groundtruth`` (KITTI's accumulated LiDAR), ``velodyne_raw``, or any other
sub-folder such as ``dense`` (written by the procedural generator). With depth, the frames
are those that have a depth file (KITTI annotates all but the first/last 5 of a drive).

Dense labels for raw frames are not part of KITTI; the procedural generator adds them as
``<drive>_sync/semantic/image_02/NNNNNNNNNN.png`` (Cityscapes ids). ``with_labels='auto'``
reads them for the drives that have that folder (real KITTI: none), ``True`` requires them.

The KITTI semantics benchmark (``root`` holds ``training/``)::

    training/image_2/NNNNNN_10.png     training/semantic/NNNNNN_10.png (Cityscapes ids)
"""
import datetime
import re
from pathlib import Path

import numpy as np

from sim2real_perception.labels import cityscapes_lut

from .frame_source import FrameSource, Sample
from .image_files import DataError, read_ids, read_rgb, read_uint16

DEPTH_SCALE = 256.0  # KITTI depth PNG: metres = value / 256
MAX_CITYSCAPES_ID = 33
RAW_FRAME_RE = re.compile(r'^(\d{10})\.png$')
SEMANTICS_FRAME_RE = re.compile(r'^(\d{6}_\d{2})\.png$')


def depth_from_png(value):
    """KITTI uint16 (metres*256, 0 = no measurement) -> float32 metres (0 stays 0)."""
    return np.asarray(value).astype(np.float32) / DEPTH_SCALE


def depth_to_png(depth):
    """Metres (0, NaN or +inf = no measurement) -> KITTI uint16; saturates at 255.99 m."""
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0)
    return np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def read_calib_p_rect(path, camera='image_02'):
    """Return the 3x3 intrinsics of ``P_rect_0X`` from ``calib_cam_to_cam.txt``, or None."""
    key = f'P_rect_{camera[-2:]}:'
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            try:
                p = np.array([float(v) for v in line[len(key):].split()]).reshape(3, 4)
            except ValueError:
                raise DataError(f'{path}: bad {key} line') from None
            return p[:, :3]
    return None


def parse_timestamps(path):
    """Parse a KITTI ``timestamps.txt`` ("YYYY-MM-DD hh:mm:ss.fffffffff") into ns ints."""
    stamps = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            whole, _, frac = line.partition('.')
            t = datetime.datetime.strptime(whole, '%Y-%m-%d %H:%M:%S').replace(
                tzinfo=datetime.timezone.utc)
            stamps.append(int(t.timestamp()) * 10**9 + int((frac + '000000000')[:9]))
        except ValueError:
            raise DataError(f'{path}:{lineno}: bad timestamp {line!r}') from None
    return stamps


def format_timestamp(stamp_ns):
    """Format ns since the epoch like KITTI's ``timestamps.txt``."""
    t = datetime.datetime.fromtimestamp(stamp_ns // 10**9, tz=datetime.timezone.utc)
    return f'{t:%Y-%m-%d %H:%M:%S}.{stamp_ns % 10**9:09d}'


class KittiRawReader(FrameSource):
    """Frames of KITTI raw drives, optionally with projected depth and semantic labels."""

    def __init__(self, root, drives=(), camera='image_02', depth_root=None,
                 depth_type='groundtruth', with_labels=False, skip_bad=False):
        super().__init__(skip_bad)
        self.root = Path(root)
        self.depth_root = Path(depth_root) if depth_root else self.root
        self.camera, self.depth_type = camera, depth_type or None
        self.with_labels = with_labels if with_labels == 'auto' else bool(with_labels)
        self._k = {}
        if not self.root.is_dir():
            raise DataError(f'{self.root}: KITTI raw root not found')
        found = {p.name: p for p in sorted(self.root.glob('*_sync')) if p.is_dir()}
        found.update({p.name: p for p in sorted(self.root.glob('*/*_sync')) if p.is_dir()})
        wanted = [d if d.endswith('_sync') else d + '_sync' for d in drives] or sorted(found)
        if not wanted:
            raise DataError(f'{self.root}: no <drive>_sync folders')
        for drive in wanted:
            if drive not in found:
                raise DataError(f'{self.root}: drive {drive} not found')
            self._index(found[drive])
        if not self.samples and not self.skipped:
            raise DataError(f'{self.root}: no frames in drives {wanted}')

    def _depth_dir(self, drive_dir):
        rel = Path('proj_depth') / self.depth_type / self.camera
        name = drive_dir.name
        candidates = [self.depth_root / name, self.depth_root / 'train' / name,
                      self.depth_root / 'val' / name,
                      self.depth_root / drive_dir.parent.name / name]
        for cand in candidates:
            if (cand / rel).is_dir():
                return cand / rel
        return None

    def _index(self, drive_dir):
        image_dir = drive_dir / self.camera / 'data'
        if not image_dir.is_dir():
            raise DataError(f'{image_dir}: folder not found')
        group = drive_dir.name
        stamps_path = drive_dir / self.camera / 'timestamps.txt'
        stamps = parse_timestamps(stamps_path) if stamps_path.is_file() else []
        if self.depth_type:
            depth_dir = self._depth_dir(drive_dir)
            if depth_dir is None:
                self.bad(drive_dir, f'no proj_depth/{self.depth_type}/{self.camera} for this '
                                    f'drive under {self.depth_root} (set data depth_root to '
                                    'the depth-annotation tree, or with_depth: false)')
                return
            frames = [(m.group(1), depth_dir / p.name) for p in sorted(depth_dir.iterdir())
                      if (m := RAW_FRAME_RE.match(p.name))]
        else:
            frames = [(m.group(1), None) for p in sorted(image_dir.iterdir())
                      if (m := RAW_FRAME_RE.match(p.name))]
        labels_dir = drive_dir / 'semantic' / self.camera
        with_labels = self.with_labels if self.with_labels != 'auto' else labels_dir.is_dir()
        for number, depth_path in frames:
            paths = {'image': image_dir / f'{number}.png'}
            if depth_path is not None:
                paths['depth'] = depth_path
            if with_labels:
                paths['labels'] = labels_dir / f'{number}.png'
            missing = [p for p in paths.values() if not p.is_file()]
            if missing:
                other = depth_path if missing[0] == paths['image'] else paths['image']
                self.bad(missing[0], f'missing pair of {other}')
                continue
            extra = {'calib': drive_dir.parent / 'calib_cam_to_cam.txt'}
            if int(number) < len(stamps):
                extra['stamp_ns'] = stamps[int(number)]
            self.add(Sample(f'{group}/{self.camera}/{number}', group, paths, extra))

    def _intrinsics(self, calib):
        if calib not in self._k:
            self._k[calib] = read_calib_p_rect(calib, self.camera) if calib.is_file() else None
        return self._k[calib]

    def load_sample(self, sample):
        """Decode image, sparse depth (metres, 0 = none) and optional labels."""
        frame = {'image': read_rgb(sample.paths['image'])}
        if 'depth' in sample.paths:
            frame['depth'] = depth_from_png(read_uint16(sample.paths['depth']))
        if 'labels' in sample.paths:
            frame['labels'] = cityscapes_lut()[read_ids(sample.paths['labels'])]
        if 'stamp_ns' in sample.extra:
            frame['stamp_ns'] = sample.extra['stamp_ns']
        k = self._intrinsics(sample.extra['calib'])
        if k is not None:
            frame['intrinsics'] = k
        return frame


class KittiSemanticsReader(FrameSource):
    """Frames of the KITTI semantics benchmark (Cityscapes label ids)."""

    def __init__(self, root, split='training', with_labels=True, strict_ids=True,
                 skip_bad=False):
        super().__init__(skip_bad)
        self.root = Path(root)
        self.strict_ids = bool(strict_ids)
        #: ``(file, pixels)`` of label maps with non-Cityscapes ids (non-strict mode only).
        self.unknown_ids = []
        image_dir = self.root / split / 'image_2'
        if not image_dir.is_dir():
            raise DataError(f'{image_dir}: KITTI semantics folder not found')
        for path in sorted(image_dir.iterdir()):
            match = SEMANTICS_FRAME_RE.match(path.name)
            if not match:
                continue
            paths = {'image': path}
            if with_labels:
                paths['labels'] = self.root / split / 'semantic' / path.name
                if not paths['labels'].is_file():
                    self.bad(paths['labels'], f'missing pair of {path}')
                    continue
            self.add(Sample(f'{split}/{match.group(1)}', split, paths))
        if not self.samples and not self.skipped:
            raise DataError(f'{image_dir}: no NNNNNN_10.png frames')

    def load_sample(self, sample):
        """Decode image and labels (Cityscapes ids mapped to class ids)."""
        frame = {'image': read_rgb(sample.paths['image'])}
        if 'labels' in sample.paths:
            ids = read_ids(sample.paths['labels'])
            unknown = int((ids > MAX_CITYSCAPES_ID).sum())
            if unknown:
                if self.strict_ids:
                    raise DataError(f'{sample.paths["labels"]}: label id {int(ids.max())} is '
                                    'not a Cityscapes id (set strict_colors: false to ignore '
                                    'it)')
                self.unknown_ids.append((str(sample.paths['labels']), unknown))
            frame['labels'] = cityscapes_lut()[ids]
        return frame
