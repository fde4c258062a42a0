"""Replay a recorded rosbag2 through ``depth_seg_node`` and score what comes back.

``python -m training.replay --bag BAG [--mode timed|lockstep|listen] [--rate 1.0] --out DIR``

It does what ``ros2 bag play`` does, and measures: the recorded image messages are
published unchanged (the bag's CDR bytes) on the node's input topic, either on the
recorded timing scaled by ``--rate`` (``timed``) or one at a time, waiting for each answer
(``lockstep``). Answers on the depth and segmentation topics are matched to inputs by
header stamp (the node copies the input header), and scored against the bag's
ground-truth topics with the same metric code as ``training.evaluate``.

On a real ROS 2 machine use ``--mode listen`` and play the bag yourself::

    ros2 launch sim2real_perception depth_seg.launch.py image_topic:=/camera/image_raw
    python -m training.replay --bag BAG --mode listen --out outputs/replay &
    ros2 bag play BAG --topics /camera/image_raw

Ctrl-C stops early and still writes the partial report.
"""
import argparse
import json
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader

from . import bag_format as bf


class ReplayError(RuntimeError):
    """A problem the user must fix (bag, topics, node not answering)."""


@dataclass
class ReplayOptions:
    """Everything ``run_replay`` needs; the CLI fills it from ``--help``'s options."""

    bag: str
    mode: str = 'timed'
    rate: float = 1.0
    image_topic: str = bf.IMAGE_TOPIC
    publish_topic: str = ''
    depth_topic: str = '/depth'
    labels_topic: str = '/segmentation'
    gt_depth_topic: str = bf.GT_DEPTH_TOPIC
    gt_labels_topic: str = bf.GT_LABELS_TOPIC
    timeout: float = 20.0
    max_frames: int = 0
    min_depth: float = 1e-3
    max_depth: float = 80.0
    out: str = ''


def decode_image(msg):
    """Decode a rosbags or rclpy Image (32FC1 / mono8 / rgb8), honouring ``step``."""
    dtypes = {'32FC1': (np.float32, 1), 'mono8': (np.uint8, 1), 'rgb8': (np.uint8, 3)}
    if msg.encoding not in dtypes:
        raise ReplayError(f'unsupported encoding {msg.encoding!r} in ground truth/answer')
    dtype, channels = dtypes[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    row = msg.width * channels * dtype.itemsize
    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data,
                        dtype=np.uint8)
    if msg.step < row or buf.size < msg.step * msg.height:
        raise ReplayError(f'{msg.encoding} image {msg.width}x{msg.height}: step {msg.step} '
                          f'/ {buf.size} bytes is too small')
    rows = buf[:msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder('='))
    return arr.reshape(msg.height, msg.width, channels).squeeze(-1) if channels == 1 else \
        arr.reshape(msg.height, msg.width, channels)


def stamp_ns(header):
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


class RecordedBag:
    """The image stream and ground truth of a bag, checked up front with clear errors."""

    def __init__(self, opts):
        path = Path(opts.bag)
        if not path.exists():
            raise ReplayError(f'bag not found: {path}')
        self.ts = bf.typestore()
        self.reader = Reader(path)
        try:
            self.reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises several types
            raise ReplayError(f'cannot open bag {path}: {exc}') from exc
        self.topics = {c.topic: c for c in self.reader.connections}
        if opts.image_topic not in self.topics:
            raise ReplayError(f'topic {opts.image_topic} not in bag {path}; it has: '
                              + ', '.join(f'{t} ({c.msgtype})'
                                          for t, c in sorted(self.topics.items())))
        image_type = self.topics[opts.image_topic].msgtype
        if image_type != bf.IMAGE_TYPE:
            raise ReplayError(f'topic {opts.image_topic} has unsupported message type '
                              f'{image_type}; replay sends {bf.IMAGE_TYPE}')
        self.opts = opts
        self.frames = []  # (bag time ns, header stamp ns, raw CDR bytes)
        for conn, t, raw in self.reader.messages([self.topics[opts.image_topic]]):
            header = self.ts.deserialize_cdr(raw, bf.IMAGE_TYPE).header
            self.frames.append((t, stamp_ns(header), bytes(raw)))
            if opts.max_frames and len(self.frames) >= opts.max_frames:
                break
        self.gt = {'depth': {}, 'labels': {}}
        for key, topic in (('depth', opts.gt_depth_topic), ('labels', opts.gt_labels_topic)):
            if topic and topic in self.topics:
                for _, _, raw in self.reader.messages([self.topics[topic]]):
                    msg = self.ts.deserialize_cdr(raw, bf.IMAGE_TYPE)
                    self.gt[key][stamp_ns(msg.header)] = raw
        self.reader.close()

    def ground_truth(self, key, stamp):
        raw = self.gt[key].get(stamp)
        if raw is None:
            return None
        img = decode_image(self.ts.deserialize_cdr(raw, bf.IMAGE_TYPE))
        return bf.depth_from_rep117(img) if key == 'depth' else img


class Collector:
    """rclpy side: publishes frames and gathers the node's answers by stamp."""

    def __init__(self, opts, listen):
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        self.rclpy = rclpy
        rclpy.init(args=None)
        self.node = rclpy.create_node('sim2real_replay')
        self.lock = threading.Lock()
        self.sent, self.answers, self.seen = {}, {}, {}
        self.answered = threading.Condition(self.lock)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                              reliability=ReliabilityPolicy.RELIABLE)
        self.pub = None
        if listen:
            self.node.create_subscription(Image, opts.image_topic, self._on_input,
                                          qos_profile_sensor_data)
        else:
            self.pub = self.node.create_publisher(Image, opts.publish_topic or opts.image_topic,
                                                  reliable)
        self.topics = {'depth': opts.depth_topic, 'labels': opts.labels_topic}
        for key, topic in self.topics.items():
            self.node.create_subscription(Image, topic, self._on_answer(key), reliable)
        from rclpy.executors import SingleThreadedExecutor
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.running = True
        self.thread.start()

    def _spin(self):
        while self.running and self.rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_input(self, msg):
        with self.lock:
            self.sent.setdefault(stamp_ns(msg.header), time.monotonic())

    def _on_answer(self, key):
        def callback(msg):
            now = time.monotonic()
            with self.lock:
                entry = self.answers.setdefault(stamp_ns(msg.header), {})
                entry[key] = (now, decode_image(msg))
                self.answered.notify_all()
        return callback

    def wait_for_node(self, timeout):
        """Block until the node subscribes to our input topic (publishing modes)."""
        deadline = time.monotonic() + timeout
        while self.pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise ReplayError(f'no subscriber on {self.pub.topic_name} after {timeout:.0f}s '
                                  '(is depth_seg_node running with that input topic?)')
            time.sleep(0.05)
        # Discovery is not instantaneous for the answer topics either.
        while min(self.node.count_publishers(t) for t in self.topics.values()) == 0:
            if time.monotonic() > deadline:
                raise ReplayError('no publisher on ' + ' / '.join(self.topics.values())
                                  + f' after {timeout:.0f}s')
            time.sleep(0.05)

    def publish(self, stamp, raw):
        with self.lock:
            self.sent[stamp] = time.monotonic()
        self.pub.publish(raw)

    def complete(self, stamp):
        return len(self.answers.get(stamp, {})) == len(self.topics)

    def wait_answer(self, stamp, timeout):
        with self.answered:
            return self.answered.wait_for(lambda: self.complete(stamp), timeout)

    def close(self):
        self.running = False
        self.thread.join(timeout=2)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _send(opts, bag, col):
    """Publish the frames per mode; returns wall-clock seconds spent."""
    t0 = time.monotonic()
    if opts.mode == 'lockstep':
        for i, (_, stamp, raw) in enumerate(bag.frames):
            col.publish(stamp, raw)
            if not col.wait_answer(stamp, opts.timeout):
                if i == 0:
                    raise ReplayError(f'depth_seg_node did not answer the first frame on '
                                      f'{opts.depth_topic} and {opts.labels_topic} within '
                                      f'{opts.timeout:.0f}s')
    else:
        bag_t0 = bag.frames[0][0]
        for bag_t, stamp, raw in bag.frames:
            delay = t0 + (bag_t - bag_t0) / 1e9 / opts.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            col.publish(stamp, raw)
    return time.monotonic() - t0


def _wait_tail(opts, bag, col, stamps):
    """After the last frame, wait until answers stop arriving (or all frames answered)."""
    last_count, last_change = -1, time.monotonic()
    idle = min(opts.timeout, 5.0) if opts.mode != 'listen' else opts.timeout
    while time.monotonic() - last_change < idle:
        with col.lock:
            done = sum(col.complete(s) for s in stamps)
            count = len(col.answers)
        if done == len(stamps):
            return
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        time.sleep(0.05)


def _percentiles(values):
    if not values:
        return {'p50': None, 'p90': None, 'p99': None, 'mean': None}
    arr = np.asarray(values) * 1000.0
    return {'p50': float(np.percentile(arr, 50)), 'p90': float(np.percentile(arr, 90)),
            'p99': float(np.percentile(arr, 99)), 'mean': float(arr.mean())}


def score(opts, bag, answers, stamps):
    """Depth and segmentation metrics of the answered frames against the bag's GT."""
    from .metrics import DepthMetrics, SegMetrics
    depth_m = DepthMetrics(min_depth=opts.min_depth, max_depth=opts.max_depth)
    seg_m = SegMetrics()
    n_depth = n_seg = 0
    for stamp in stamps:
        ans = answers.get(stamp, {})
        gt_depth = bag.ground_truth('depth', stamp)
        if 'depth' in ans and gt_depth is not None:
            depth_m.update(ans['depth'][1], gt_depth)
            n_depth += 1
        gt_labels = bag.ground_truth('labels', stamp)
        if 'labels' in ans and gt_labels is not None:
            seg_m.update(ans['labels'][1], gt_labels)
            n_seg += 1
    return {'depth': depth_m.compute() if n_depth else None, 'depth_frames': n_depth,
            'segmentation': seg_m.compute() if n_seg else None, 'segmentation_frames': n_seg}


def run_replay(opts):
    """Replay (or listen), then return the report dict; KeyboardInterrupt gives a partial one."""
    if opts.mode not in ('timed', 'lockstep', 'listen'):
        raise ReplayError(f'mode {opts.mode!r} not in timed|lockstep|listen')
    if opts.rate <= 0:
        raise ReplayError('rate must be positive')
    bag = RecordedBag(opts)
    if not bag.frames:
        raise ReplayError(f'no messages on {opts.image_topic} in {opts.bag}')
    col = Collector(opts, listen=opts.mode == 'listen')
    interrupted = False
    wall = 0.0
    stamps = [s for _, s, _ in bag.frames]
    try:
        t0 = time.monotonic()
        if opts.mode == 'listen':
            print(f'[replay] listening on {opts.image_topic}, {opts.depth_topic}, '
                  f'{opts.labels_topic}; play the bag now (Ctrl-C to stop)', flush=True)
            with col.answered:
                if not col.answered.wait_for(lambda: bool(col.answers), opts.timeout):
                    raise ReplayError(f'no answer on {opts.depth_topic} / {opts.labels_topic} '
                                      f'within {opts.timeout:.0f}s')
        else:
            col.wait_for_node(opts.timeout)
            _send(opts, bag, col)
        _wait_tail(opts, bag, col, stamps)
        wall = time.monotonic() - t0
    except KeyboardInterrupt:
        interrupted = True
        wall = time.monotonic() - t0
        print('\n[replay] interrupted: partial report', file=sys.stderr)
    finally:
        col.close()
    with col.lock:
        answers = {s: dict(a) for s, a in col.answers.items()}
        sent = dict(col.sent)
    answered = [s for s in stamps if len(answers.get(s, {})) == 2]
    latencies = [max(t for t, _ in answers[s].values()) - sent[s]
                 for s in answered if s in sent]
    n_sent = len(sent) if opts.mode != 'listen' else len(sent) or len(stamps)
    report = {
        'bag': str(opts.bag), 'mode': opts.mode, 'rate_factor': opts.rate,
        'interrupted': interrupted,
        'frames_in_bag': len(stamps), 'frames_sent': n_sent, 'frames_answered': len(answered),
        'frames_dropped': max(n_sent - len(answered), 0),
        'latency_ms': _percentiles(latencies),
        'achieved_rate_hz': len(answered) / wall if wall > 0 else 0.0,
        'wall_s': wall,
        'options': asdict(opts),
    }
    report.update(score(opts, bag, answers, answered))
    if opts.out:
        write_outputs(report, bag, answers, answered, Path(opts.out))
    return report


def write_outputs(report, bag, answers, answered, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / 'replay.json').write_text(json.dumps(report, indent=2, default=_json_default))
    picks = answered[:: max(1, len(answered) // 4)][:4]
    rows = []
    for stamp in picks:
        raw = next(r for _, s, r in bag.frames if s == stamp)
        image = decode_image(bag.ts.deserialize_cdr(raw, bf.IMAGE_TYPE))
        rows.append((image, answers[stamp]['depth'][1], bag.ground_truth('depth', stamp),
                     answers[stamp]['labels'][1], bag.ground_truth('labels', stamp)))
    if rows:
        from .figures import save_prediction_grid
        save_prediction_grid(out / 'replay.png', rows)
        report['figure'] = str(out / 'replay.png')


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(type(obj))


def format_report(report):
    lat = report['latency_ms']
    lines = [
        f'Replay of {report["bag"]} ({report["mode"]}, rate x{report["rate_factor"]})'
        + (' - INTERRUPTED, partial' if report['interrupted'] else ''),
        f'  frames: {report["frames_in_bag"]} in bag, {report["frames_sent"]} sent, '
        f'{report["frames_answered"]} answered, {report["frames_dropped"]} dropped',
        '  latency ms: ' + (f'p50 {lat["p50"]:.1f}  p90 {lat["p90"]:.1f}  p99 {lat["p99"]:.1f}'
                            if lat['p50'] is not None else 'n/a'),
        f'  achieved rate: {report["achieved_rate_hz"]:.2f} Hz over {report["wall_s"]:.1f} s',
    ]
    if report.get('depth'):
        d = report['depth']
        lines.append(f'  depth ({report["depth_frames"]} frames): AbsRel {d["abs_rel"]:.3f}  '
                     f'SqRel {d["sq_rel"]:.3f}  RMSE {d["rmse"]:.3f}  '
                     f'RMSElog {d["rmse_log"]:.3f}  d1 {d["a1"]:.3f}')
    if report.get('segmentation'):
        s = report['segmentation']
        lines.append(f'  segmentation ({report["segmentation_frames"]} frames): '
                     f'mIoU {s["miou"]:.3f}  pixel acc {s["pixel_acc"]:.3f}')
    if report.get('figure'):
        lines.append(f'  figure: {report["figure"]}')
    return '\n'.join(lines)


def build_parser():
    d = ReplayOptions(bag='')
    p = argparse.ArgumentParser(prog='python -m training.replay',
                                description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--bag', required=True, help='rosbag2 directory (mcap or sqlite3)')
    p.add_argument('--mode', default=d.mode, choices=['timed', 'lockstep', 'listen'],
                   help='timed: recorded timing / rate; lockstep: wait for each answer; '
                        'listen: you run `ros2 bag play` yourself')
    p.add_argument('--rate', type=float, default=d.rate, help='speed factor for timed mode')
    p.add_argument('--image-topic', default=d.image_topic, help='image topic in the bag')
    p.add_argument('--publish-topic', default='',
                   help='topic to publish frames on (default: same as --image-topic)')
    p.add_argument('--depth-topic', default=d.depth_topic, help="node's depth output topic")
    p.add_argument('--labels-topic', default=d.labels_topic, help="node's label output topic")
    p.add_argument('--gt-depth-topic', default=d.gt_depth_topic)
    p.add_argument('--gt-labels-topic', default=d.gt_labels_topic)
    p.add_argument('--timeout', type=float, default=d.timeout,
                   help='seconds to wait for the node / for answers')
    p.add_argument('--max-frames', type=int, default=0, help='0 = all')
    p.add_argument('--min-depth', type=float, default=d.min_depth, help='metric lower cap (m)')
    p.add_argument('--max-depth', type=float, default=d.max_depth, help='metric upper cap (m)')
    p.add_argument('--out', default='', help='directory for replay.json and replay.png')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    opts = ReplayOptions(**{k: v for k, v in vars(args).items()})
    try:
        report = run_replay(opts)
    except ReplayError as exc:
        print(f'[replay] error: {exc}', file=sys.stderr)
        return 2
    print(format_report(report))
    return 130 if report['interrupted'] else 0


if __name__ == '__main__':
    sys.exit(main())
