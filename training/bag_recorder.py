"""Record what went into ``depth_seg_node`` and what came back as an mcap rosbag2.

``training.replay --record OUT`` (and the main job's replay step) write one: the camera
``image`` and ``camera_info`` as published, and the node's ``depth``, ``segmentation``,
``segmentation_color`` and ``depth/camera_info`` as received, with the node's headers (the
input's stamp and frame_id). Open it in Foxglove or RViz, or ``ros2 bag play`` it. Messages
are the CDR bytes from the wire; each one's log time is when it was sent or received.
Each topic keeps one message per header stamp: a first frame that the replay sends again
while discovery settles, and the node's answers to it, are in the bag once.
"""
import shutil
import struct
import threading
import time
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer

from . import bag_format as bf

#: Roles in a recording, in the order their connections are added.
ROLES = ('image', 'camera_info', 'depth', 'segmentation', 'segmentation_color',
         'depth_camera_info')
ROLE_TYPES = {'image': bf.IMAGE_TYPE, 'camera_info': bf.CAMERA_INFO_TYPE,
              'depth': bf.IMAGE_TYPE, 'segmentation': bf.IMAGE_TYPE,
              'segmentation_color': bf.IMAGE_TYPE, 'depth_camera_info': bf.CAMERA_INFO_TYPE}


def cdr_stamp_ns(data):
    """Header stamp (ns) of a serialised Image or CameraInfo, read without deserialising.

    Both start with ``std_msgs/Header``, whose first field is the stamp: int32 sec and
    uint32 nanosec right after the 4-byte CDR encapsulation header (byte 1: 1 = little
    endian). Returns None for bytes too short to hold one.
    """
    if len(data) < 12:
        return None
    sec, nanosec = struct.unpack_from('<iI' if data[1] & 1 else '>iI', data, 4)
    return sec * 10**9 + nanosec


def output_topics(depth_topic, labels_topic):
    """Return the node's other output topics next to its depth and segmentation topics."""
    return {'segmentation_color': labels_topic + '_color',
            'depth_camera_info': depth_topic.rstrip('/') + '/camera_info'}


class OutputRecorder:
    """A thread-safe mcap writer: ``write(role, cdr_bytes)`` from any thread."""

    def __init__(self, path, topics, overwrite=True):
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f'{self.path} exists')
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.topics = dict(topics)
        self.counts = {role: 0 for role in self.topics}
        self._stamps = {role: set() for role in self.topics}
        self._lock = threading.Lock()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        ts = bf.typestore()
        self._conns = {role: self._writer.add_connection(topic, ROLE_TYPES[role], typestore=ts)
                       for role, topic in self.topics.items()}
        self._closed = False

    def write(self, role, data, t_ns=None):
        """Append one serialised message (CDR bytes) for ``role``, stamped now by default.

        Return False (and write nothing) when ``role`` already holds a message with this
        header stamp, or the bag is closed.
        """
        t_ns = time.time_ns() if t_ns is None else t_ns
        stamp = cdr_stamp_ns(data)
        with self._lock:
            if self._closed or (stamp is not None and stamp in self._stamps[role]):
                return False
            self._stamps[role].add(stamp)
            self._writer.write(self._conns[role], t_ns, bytes(data))
            self.counts[role] += 1
            return True

    def close(self):
        """Finish the bag (mcap summary and metadata.yaml); return {topic: messages}."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()
        return {self.topics[role]: n for role, n in self.counts.items()}
