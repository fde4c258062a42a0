"""Shared helpers for the node tests: a tiny exported model and a test publisher/listener.

No tests live here; ``test_node.py`` and ``test_node_process.py`` import it. Run as a script
it is a stand-alone camera process (the publisher side of the cross-process tests)::

    python test/test_node_support.py --width 1242 --height 375 --count 5
"""
import argparse
import contextlib
import io
import sys
import time

import numpy as np
import pytest
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


@pytest.fixture(scope='session')
def onnx_model(tmp_path_factory):
    """Return (dir, exit code, printed text) of one CLI ONNX export shared by the session.

    Export takes ~10-20 s here, so test_onnx_export.py and test_predictor.py share it: each
    module that imports this fixture gets its own copy, hence the process-wide cache.
    """
    if 'onnx_model' not in _SESSION_CACHE:
        from sim2real_perception import onnx_export
        model = make_model_dir(tmp_path_factory.mktemp('onnx_model'))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = onnx_export.main(['--model', str(model)])
        _SESSION_CACHE['onnx_model'] = (model, rc, out.getvalue())
    return _SESSION_CACHE['onnx_model']


_SESSION_CACHE = {}


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

    def __init__(self, context, name='depth_seg_tester', namespace='', image_topic='image',
                 info_topic='camera_info'):
        self.context = context
        self.node = rclpy.create_node(name, namespace=namespace, context=context)
        self.image_pub = self.node.create_publisher(Image, image_topic, RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, info_topic, RELIABLE)
        self.received = {k: [] for k in OUTPUTS}
        self.diagnostics = []
        self.subs = {}
        for topic in OUTPUTS:
            msg_type = CameraInfo if topic.endswith('camera_info') else Image
            self.subs[topic] = self.node.create_subscription(
                msg_type, topic, lambda m, t=topic: self.received[t].append(m), RELIABLE)
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

    def matched(self):
        """Return whether the image publisher and every output subscription are matched."""
        return self.image_pub.get_subscription_count() > 0 and all(
            sub.get_publisher_count() > 0 for sub in self.subs.values())

    def send_until(self, send, condition, timeout=20.0, every=0.5):
        """Call ``send()`` every ``every`` s until ``condition()`` (a camera keeps sending)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            send()
            if self.spin_until(condition, timeout=every):
                return True
        return bool(condition())

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


def camera_main(argv=None):
    """Publish test frames from a process of its own, like a camera driver would."""
    parser = argparse.ArgumentParser(description='Publish rgb8 test frames on a topic.')
    parser.add_argument('--topic', default='image', help='image topic (default: image)')
    parser.add_argument('--width', type=int, default=1242, help='frame width in pixels')
    parser.add_argument('--height', type=int, default=375, help='frame height in pixels')
    parser.add_argument('--count', type=int, default=5, help='frames to publish')
    parser.add_argument('--period', type=float, default=0.3, help='seconds between frames')
    parser.add_argument('--reliable', action='store_true',
                        help='publish reliable (default: best effort, like sensor drivers)')
    parser.add_argument('--wait', type=float, default=30.0,
                        help='seconds to wait for a subscriber before giving up')
    parser.add_argument('--first-stamp', type=int, default=1000,
                        help='header.stamp.sec of the first frame (then +1 per frame)')
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node('test_camera')
    pub = node.create_publisher(Image, args.topic, RELIABLE if args.reliable else BEST_EFFORT)
    end = time.monotonic() + args.wait
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    if pub.get_subscription_count() == 0:
        print(f'no subscriber on {pub.topic_name} after {args.wait} s', file=sys.stderr)
        return 3
    time.sleep(0.5)  # let discovery finish on both sides
    rgb = test_image(args.width, args.height)
    for i in range(args.count):
        msg = array_to_imgmsg(rgb, 'rgb8')
        msg.header.stamp.sec, msg.header.frame_id = args.first_stamp + i, 'camera_optical_frame'
        pub.publish(msg)
        if i == 0:  # wall clock, so another process can time the answers
            print(f'first frame published at {time.time():.6f}', flush=True)
        time.sleep(args.period)
    print(f'published {args.count} {args.width}x{args.height} rgb8 frames on {pub.topic_name}')
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(camera_main())
