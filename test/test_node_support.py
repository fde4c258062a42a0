"""Shared helpers for the node tests: a tiny exported model and a test publisher/listener.

No tests live here; ``test_node.py`` and ``test_node_process.py`` import it.
"""
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from sim2real_perception.image_conversion import array_to_imgmsg

OUTPUTS = ('depth', 'segmentation', 'segmentation_color', 'depth/camera_info')
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                         reliability=ReliabilityPolicy.BEST_EFFORT)


def make_model_dir(path, preset='test'):
    """Export a randomly initialised model (good enough for plumbing tests)."""
    from sim2real_perception.config import load_config
    from sim2real_perception.model import build_model
    from sim2real_perception.model_io import export_model_dir
    import torch
    torch.manual_seed(0)
    return export_model_dir(build_model(load_config(preset)['model']).eval(), path)


def test_image(width, height, seed=0):
    """A smooth RGB test pattern with some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                    (xx + yy) % 256], axis=-1) + rng.integers(0, 20, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


test_image.__test__ = False  # not a test, despite the name


class Harness:
    """A test node that publishes images and records the depth node's outputs."""

    def __init__(self, context, name='depth_seg_tester', namespace=''):
        self.context = context
        self.node = rclpy.create_node(name, namespace=namespace, context=context)
        self.image_pub = self.node.create_publisher(Image, 'image', RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, 'camera_info', RELIABLE)
        self.received = {k: [] for k in OUTPUTS}
        self.diagnostics = []
        for topic in OUTPUTS:
            msg_type = CameraInfo if topic.endswith('camera_info') else Image
            self.node.create_subscription(msg_type, topic,
                                          lambda m, t=topic: self.received[t].append(m),
                                          RELIABLE)
        from diagnostic_msgs.msg import DiagnosticArray
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.diagnostics.append, 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def add_node(self, node):
        self.executor.add_node(node)

    def spin_until(self, condition, timeout=15.0):
        """Spin until ``condition()`` is true; return its final value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(condition())

    def wait_for_subscriber(self, timeout=15.0):
        return self.spin_until(lambda: self.image_pub.get_subscription_count() > 0 and all(
            self.node.count_publishers(f'{self.node.get_namespace().rstrip("/")}/{t}')
            for t in ('depth', 'segmentation')), timeout)

    def send(self, arr, encoding, stamp=(0, 0), frame_id='camera_optical_frame'):
        msg = array_to_imgmsg(arr, encoding)
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = frame_id
        self.image_pub.publish(msg)
        return msg

    def clear(self):
        for v in self.received.values():
            v.clear()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
