"""rosbag2 reader (sqlite3 or mcap, via ``rosbags``): camera frames plus optional ground truth.

The image topic may be ``sensor_msgs/Image`` or ``CompressedImage``. Ground-truth depth
(``32FC1`` metres with REP 117 NaN/Inf, or ``16UC1`` millimetres) and labels (``mono8``
class ids) are matched to a frame by header stamp: exactly, or the nearest within
``sync_tolerance_ms``. The bag is indexed once (one pass) and frames are fetched by their
recording time, so the reader is random-access without holding images in memory.

A bag cut short (recorder killed: an mcap without its footer, a sqlite3 file with an
uncommitted transaction) is read through ``training.bag_check``: every complete frame is
kept, and how many messages and frames were lost is printed (``lost_messages``,
``lost_frames``); a bag that cannot be read at all raises DataError naming the file.
"""
import os
import sys
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from ..bag_check import BagError, check_bag
from .frame_source import FrameSource, Sample
from .image_files import DataError
from .ros_images import ImageDecodeError, decode

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')


def _stamp_ns(msg):
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


class RosbagReader(FrameSource):
    """Frames of one image topic of a rosbag2, with optional depth and label topics."""

    def __init__(self, path, topic=None, depth_topic=None, labels_topic=None,
                 sync_tolerance_ms=0.0, skip_bad=False):
        super().__init__(skip_bad)
        self.path = Path(path)
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._reader, self._pid, self.check = None, None, None
        self.lost_frames = 0
        reader = self._open()
        image_topics = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
        if topic is None:
            if len(image_topics) != 1:
                raise DataError(f'{self.path}: set data.topic; image topics: {image_topics}')
            topic = image_topics[0]
        self.topics = {'image': topic, 'depth': depth_topic, 'labels': labels_topic}
        self.conns = {}
        for role, name in self.topics.items():
            if not name:
                continue
            conns = [c for c in reader.connections if c.topic == name]
            if not conns:
                raise DataError(f'{self.path}: no topic {name!r}; image topics: {image_topics}')
            if conns[0].msgtype not in IMAGE_TYPES:
                raise DataError(f'{self.path}: topic {name} is {conns[0].msgtype}, '
                                f'expected one of {IMAGE_TYPES}')
            self.conns[role] = conns
        self._index(reader, float(sync_tolerance_ms) * 1e6)
        if self.check.cut_short:
            print(f'[data] warning: {self.check.summary()}; {len(self.samples)} complete '
                  f'frames on {topic}, {self.lost_frames} frames lost', file=sys.stderr)
        if not self.samples and not self.skipped:
            raise DataError(f'{self.path}: no messages on {topic}')

    @property
    def lost_messages(self):
        """Messages metadata.yaml lists that the cut-short bag no longer holds (0 if intact)."""
        return self.check.lost

    def _open(self):
        if self._reader is None or self._pid != os.getpid():  # one handle per process
            if not self.path.exists():
                raise DataError(f'{self.path}: bag not found')
            if self.check is None:
                try:
                    self.check = check_bag(self.path)
                except BagError as exc:
                    raise DataError(str(exc)) from None
            try:
                self._reader = Reader(self.check.read_path)
                self._reader.open()
            except Exception as exc:  # noqa: BLE001 - rosbags raises several types
                raise DataError(f'{self.path}: cannot open bag: {exc}') from exc
            self._pid = os.getpid()
        return self._reader

    def _index(self, reader, tolerance_ns):
        stamps = {role: [] for role in self.conns}  # (header stamp, log time, topic)
        lookup = {c.id: role for role, conns in self.conns.items() for c in conns}
        all_conns = [c for conns in self.conns.values() for c in conns]
        for conn, logtime, raw in reader.messages(connections=all_conns):
            try:
                msg = self.typestore.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - corrupt message
                self.bad(f'{self.path}:{conn.topic}@{logtime}', f'cannot deserialise: {exc}')
                continue
            stamps[lookup[conn.id]].append((_stamp_ns(msg), logtime))
        gt = {}
        for role in ('depth', 'labels'):
            if role in stamps:
                pairs = sorted(stamps[role])
                gt[role] = (np.array([p[0] for p in pairs], dtype=np.int64), pairs)
        for stamp, logtime in stamps['image']:
            logtimes = {'image': logtime}
            for role, (keys, pairs) in gt.items():
                found = None
                if len(keys):
                    i = int(np.clip(np.searchsorted(keys, stamp), 0, len(keys) - 1))
                    best = min((j for j in (i - 1, i) if 0 <= j < len(keys)),
                               key=lambda j: abs(int(keys[j]) - stamp))
                    if abs(int(keys[best]) - stamp) <= tolerance_ns:
                        found = pairs[best][1]
                if found is None:
                    break
                logtimes[role] = found
            else:
                name = f'{self.path.name}/{self.topics["image"].strip("/")}/{stamp}'
                self.add(Sample(name, self.path.name, {},
                                {'stamp_ns': stamp, 'logtimes': logtimes}))
                continue
            if self._cut_at(role, stamp, gt):
                self.lost_frames += 1  # its ground truth was in the part that was cut off
                continue
            self.bad(f'{self.path}:{self.topics[role]}',
                     f'no {role} message for the image stamped {stamp} ns')

    def _cut_at(self, role, stamp, gt):
        """Return whether ``role``'s message for an image at ``stamp`` was lost in a cut."""
        keys = gt[role][0]
        return (self.check.lost_on(self.topics[role]) > 0
                and (not len(keys) or stamp > int(keys.max())))

    def _fetch(self, role, logtime, stamp):
        reader = self._open()
        for conn, _, raw in reader.messages(connections=self.conns[role], start=logtime,
                                            stop=logtime + 1):
            msg = self.typestore.deserialize_cdr(raw, conn.msgtype)
            if role == 'image' and _stamp_ns(msg) != stamp:
                continue
            try:
                return decode(msg, role)
            except ImageDecodeError as exc:
                raise DataError(f'{self.path}:{conn.topic}@{stamp} ns: {exc}') from None
        raise DataError(f'{self.path}:{self.topics[role]}: message at {logtime} ns vanished')

    def load_sample(self, sample):
        """Decode the image and its matched ground-truth messages."""
        stamp = sample.extra['stamp_ns']
        frame = {'stamp_ns': stamp}
        for role, logtime in sample.extra['logtimes'].items():
            frame[role] = self._fetch(role, logtime, stamp)
        return frame
