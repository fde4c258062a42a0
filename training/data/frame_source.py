"""The common shape of every dataset reader: an indexed list of frames.

A reader lists its samples once (file paths, no decoding) and loads one frame dict by
index. The frame dict is the reader contract shared by training, evaluation and replay:

* ``image``: HxWx3 uint8 RGB
* ``depth``: HxW float32 metres, 0 = invalid / no measurement, +inf = sky / far; or None
* ``labels``: HxW uint8 class ids (``sim2real_perception.labels``), 255 = ignore; or None
* ``name``: stable string id (path relative to the dataset root); ``group``: the sequence
  (drive, scene/variation) it belongs to; ``stamp_ns``: optional int; ``intrinsics``:
  optional 3x3 camera matrix of the stored frame.
"""
from dataclasses import dataclass, field

from .image_files import DataError, file_problem


@dataclass
class Sample:
    """Where one frame lives; ``paths`` maps a role (image, depth, labels) to a file."""

    name: str
    group: str
    paths: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class FrameSource:
    """Base reader: subclasses fill ``samples`` and implement ``load_sample``."""

    def __init__(self, skip_bad=False):
        self.samples = []
        self.skip_bad = bool(skip_bad)
        #: ``(file, reason)`` for every sample left out because it was bad (skip_bad only).
        self.skipped = []

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        """Load frame ``index`` as a reader-contract dict (raises DataError naming the file)."""
        sample = self.samples[index]
        frame = self.load_sample(sample)
        frame.setdefault('depth', None)
        frame.setdefault('labels', None)
        frame['name'] = sample.name
        frame['group'] = sample.group
        self._check_shapes(frame, sample)
        return frame

    def load_sample(self, sample):
        """Decode one sample; implemented by each reader."""
        raise NotImplementedError

    def bad(self, path, reason):
        """Record a bad file: raise DataError, or count it when skipping bad samples."""
        if not self.skip_bad:
            raise DataError(f'{path}: {reason}')
        self.skipped.append((str(path), reason))

    def add(self, sample):
        """Append ``sample`` unless a file is incomplete (checked only when skipping)."""
        if self.skip_bad:
            for path in sample.paths.values():
                problem = file_problem(path)
                if problem:
                    self.bad(path, problem)
                    return
        self.samples.append(sample)

    @staticmethod
    def _check_shapes(frame, sample):
        shape = frame['image'].shape[:2]
        for key in ('depth', 'labels'):
            value = frame.get(key)
            if value is not None and value.shape[:2] != shape:
                raise DataError(f'{sample.paths.get(key, sample.name)}: {key} is '
                                f'{value.shape[1]}x{value.shape[0]} but the image '
                                f'{sample.paths.get("image", "")} is {shape[1]}x{shape[0]}')
