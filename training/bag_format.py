"""The replay-bag layout shared by ``make_bag`` (writer) and ``replay`` (reader).

Topics, encodings and the ground-truth conventions live in one place so the two tools can
never disagree: images are ``rgb8``, ground-truth depth is REP 118 ``32FC1`` metres with
REP 117 specials (NaN = no measurement, +Inf = sky / out of range), ground-truth labels
are ``mono8`` class ids with 255 = ignore.
"""
import numpy as np
from rosbags.rosbag2 import StoragePlugin
from rosbags.typesys import Stores, get_typestore


IMAGE_TOPIC = '/camera/image_raw'
CAMERA_INFO_TOPIC = '/camera/camera_info'
GT_DEPTH_TOPIC = '/ground_truth/depth'
GT_LABELS_TOPIC = '/ground_truth/segmentation'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def typestore():
    """Message definitions of the ROS 2 distribution the package targets (kilted)."""
    return get_typestore(Stores.ROS2_KILTED)


def depth_to_rep117(depth):
    """Dataset depth (0 = invalid, +inf = far) -> REP 117 float32 (NaN invalid, +Inf far)."""
    out = np.asarray(depth, dtype=np.float32).copy()
    out[out == 0] = np.nan
    return out
