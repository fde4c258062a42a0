"""Virtual KITTI 2 reader (the simulated domain, dense depth and labels).

Layout (``root`` is the folder holding the ``SceneXX`` folders; the rgb, depth and
classSegmentation archives may be unpacked into separate roots)::

    SceneXX/<variation>/frames/rgb/Camera_0/rgb_NNNNN.jpg
    SceneXX/<variation>/frames/depth/Camera_0/depth_NNNNN.png            uint16 cm, 65535 = sky
    SceneXX/<variation>/frames/classSegmentation/Camera_0/classgt_NNNNN.png   RGB colours
    SceneXX/<variation>/colors.txt      "Category r g b" (falls back to SceneXX/colors.txt,
                                        then to the published default colours)
    SceneXX/<variation>/intrinsic.txt   optional: "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"
"""
import re
from pathlib import Path

import numpy as np

from sim2real_perception.labels import labels_from_colors, vkitti2_color_to_class

from .frame_source import FrameSource, Sample
from .image_files import DataError, read_color_labels, read_rgb, read_uint16

SCENES = ('Scene01', 'Scene02', 'Scene06', 'Scene18', 'Scene20')
VARIATIONS = ('clone', 'fog', 'morning', 'overcast', 'rain', 'sunset', '15-deg-left',
              '15-deg-right', '30-deg-left', '30-deg-right')
SKY_CM = 65535  # VKITTI 2 depth value for sky / beyond the far plane
FRAME_RE = re.compile(r'^rgb_(\d+)\.(jpg|jpeg|png)$')


def depth_from_png(cm):
    """VKITTI 2 uint16 centimetres -> metres (65535 -> +inf far, 0 -> 0 invalid)."""
    cm = np.asarray(cm)
    depth = cm.astype(np.float32) / 100.0
    depth[cm == SKY_CM] = np.inf
    return depth


def depth_to_png(depth):
    """Metres (+inf/NaN beyond range = sky) -> VKITTI 2 uint16 centimetres."""
    depth = np.asarray(depth, dtype=np.float64)
    cm = np.clip(np.round(np.nan_to_num(depth, nan=0.0, posinf=0.0) * 100.0), 0, SKY_CM - 1)
    cm = cm.astype(np.uint16)
    cm[~np.isfinite(depth) | (depth * 100.0 >= SKY_CM - 0.5)] = SKY_CM
    return cm


def read_colors_txt(path):
    """Parse a ``colors.txt`` into ``{category: (r, g, b)}`` (header line optional)."""
    colors = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts or (lineno == 1 and parts[0].lower() == 'category'):
            continue
        try:
            if len(parts) != 4:
                raise ValueError
            colors[parts[0]] = tuple(int(v) for v in parts[1:])
        except ValueError:
            raise DataError(f'{path}:{lineno}: expected "Category r g b", got {line!r}') from None
    return colors


def write_colors_txt(path, colors):
    """Write ``{category: (r, g, b)}`` in the VKITTI 2 ``colors.txt`` format."""
    lines = ['Category r g b'] + [f'{k} {r} {g} {b}' for k, (r, g, b) in colors.items()]
    Path(path).write_text('\n'.join(lines) + '\n')


def read_intrinsics_txt(path, camera=0):
    """Parse ``intrinsic.txt`` into ``{frame: 3x3 K}`` for one camera id."""
    out = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts or not parts[0].isdigit():
            continue
        try:
            frame, cam, fx, fy, cx, cy = int(parts[0]), int(parts[1]), *map(float, parts[2:6])
        except (ValueError, IndexError):
            raise DataError(f'{path}:{lineno}: bad intrinsics line {line!r}') from None
        if cam == camera:
            out[frame] = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return out


class VKitti2Reader(FrameSource):
    """Frames of chosen scenes and variations of a Virtual KITTI 2 tree."""

    def __init__(self, root, scenes=(), variations=('clone',), camera='Camera_0',
                 depth_root=None, labels_root=None, with_depth=True, with_labels=True,
                 strict_colors=True, skip_bad=False):
        super().__init__(skip_bad)
        self.root = Path(root)
        self.depth_root = Path(depth_root) if depth_root else self.root
        self.labels_root = Path(labels_root) if labels_root else self.root
        self.camera = camera
        self.with_depth, self.with_labels = bool(with_depth), bool(with_labels)
        self.strict_colors = bool(strict_colors)
        #: ``(file, pixels)`` of label maps with unknown colours (non-strict mode only).
        self.unknown_colors = []
        self._tables, self._intrinsics = {}, {}
        if not self.root.is_dir():
            raise DataError(f'{self.root}: Virtual KITTI 2 root not found')
        scenes = list(scenes) or sorted(p.name for p in self.root.glob('Scene*') if p.is_dir())
        if not scenes:
            raise DataError(f'{self.root}: no SceneXX folders')
        for scene in scenes:
            scene_dir = self.root / scene
            if not scene_dir.is_dir():
                raise DataError(f'{scene_dir}: scene not found')
            names = list(variations) or sorted(p.name for p in scene_dir.iterdir() if p.is_dir())
            for variation in names:
                self._index(scene, variation)
        if not self.samples and not self.skipped:
            raise DataError(f'{self.root}: no frames for scenes {scenes} variations '
                            f'{list(variations)}')

    def _index(self, scene, variation):
        rel = Path(scene) / variation
        rgb_dir = self.root / rel / 'frames' / 'rgb' / self.camera
        if not rgb_dir.is_dir():
            raise DataError(f'{rgb_dir}: folder not found (scene {scene}, variation {variation})')
        group = f'{scene}/{variation}'
        for path in sorted(rgb_dir.iterdir()):
            match = FRAME_RE.match(path.name)
            if not match:
                continue
            number = match.group(1)
            paths = {'image': path}
            if self.with_depth:
                paths['depth'] = (self.depth_root / rel / 'frames' / 'depth' / self.camera
                                  / f'depth_{number}.png')
            if self.with_labels:
                paths['labels'] = (self.labels_root / rel / 'frames' / 'classSegmentation'
                                   / self.camera / f'classgt_{number}.png')
            missing = [p for p in paths.values() if not p.is_file()]
            if missing:
                self.bad(missing[0], f'missing pair of {path}')
                continue
            name = f'{group}/{self.camera}/{number}'
            self.add(Sample(name, group, paths, {'rel': rel, 'frame': int(number)}))

    def _color_table(self, rel):
        if rel not in self._tables:
            table = None
            for root in (self.labels_root, self.root):
                for path in (root / rel / 'colors.txt', root / rel.parent / 'colors.txt'):
                    if path.is_file():
                        try:
                            table = vkitti2_color_to_class(read_colors_txt(path))
                        except KeyError as exc:
                            raise DataError(f'{path}: {exc.args[0]}') from None
                        break
                if table is not None:
                    break
            self._tables[rel] = table if table is not None else vkitti2_color_to_class()
        return self._tables[rel]

    def _intrinsics_for(self, rel, frame):
        if rel not in self._intrinsics:
            path = self.root / rel / 'intrinsic.txt'
            cam = int(self.camera.rsplit('_', 1)[-1]) if self.camera[-1].isdigit() else 0
            self._intrinsics[rel] = read_intrinsics_txt(path, cam) if path.is_file() else {}
        return self._intrinsics[rel].get(frame)

    def load_sample(self, sample):
        """Decode image, depth (metres) and labels (class ids) of one frame."""
        frame = {'image': read_rgb(sample.paths['image'])}
        if 'depth' in sample.paths:
            frame['depth'] = depth_from_png(read_uint16(sample.paths['depth']))
        if 'labels' in sample.paths:
            path = sample.paths['labels']
            labels, unknown = labels_from_colors(read_color_labels(path),
                                                 self._color_table(sample.extra['rel']))
            count = int(unknown.sum())
            if count:
                colours = np.unique(read_color_labels(path)[unknown].reshape(-1, 3), axis=0)
                if self.strict_colors:
                    raise DataError(f'{path}: {count} pixels have colours not in colors.txt, '
                                    f'e.g. {tuple(int(c) for c in colours[0])} '
                                    '(set strict_colors: false to ignore them)')
                self.unknown_colors.append((str(path), count))
            frame['labels'] = labels
        k = self._intrinsics_for(sample.extra['rel'], sample.extra['frame'])
        if k is not None:
            frame['intrinsics'] = k
        return frame
