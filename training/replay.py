"""Replay a recorded rosbag2 through ``depth_seg_node`` and score what comes back.

``python -m training.replay --bag BAG [--mode timed|lockstep|listen] [--rate 1.0] --out DIR``

It does what ``ros2 bag play`` does, and measures: the recorded image (and camera_info)
messages are published unchanged (the bag's CDR bytes) on the node's input topic, either on
the recorded timing scaled by ``--rate`` (``timed``) or one at a time, waiting for each
answer (``lockstep``). Answers on the depth and segmentation topics are matched to inputs by
header stamp (the node copies the input header) and scored against the bag's ground-truth
topics with ``training.metrics``, the code ``training.evaluate`` uses.

On a real ROS 2 machine use ``--mode listen`` and play the bag yourself (see README,
"Replay evaluation"). Ctrl-C stops early and still writes the partial report (exit 130).
``--record OUT`` also writes an mcap rosbag2 of the frames sent and every answer received
(``training.bag_recorder``: image, camera_info, depth, segmentation, segmentation_color,
depth/camera_info) for Foxglove, RViz or ``ros2 bag play``.
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

from sim2real_perception.labels import IGNORE_INDEX, NUM_CLASSES

from . import bag_format as bf
from .bag_check import BagError, check_bag
from .cli_format import DefaultsHelpFormatter
from .data.ros_images import decode, ImageDecodeError, raw_array

MODES = ('timed', 'lockstep', 'listen')
FIGURE_ROWS = 4
LOCKSTEP_MAX_MISSES = 3  # consecutive unanswered frames that end a lockstep replay
RESEND_PERIOD = 2.0  # s; the first lockstep frame is re-sent while discovery settles


class ReplayError(RuntimeError):
    """A problem the user must fix (bag, topics, node not answering)."""


@dataclass
class ReplayOptions:
    """Everything ``run_replay`` needs; the CLI fills it (see ``--help``)."""

    bag: str
    mode: str = 'timed'
    rate: float = 1.0
    image_topic: str = bf.IMAGE_TOPIC
    camera_info_topic: str = bf.CAMERA_INFO_TOPIC
    publish_topic: str = ''
    publish_camera_info_topic: str = ''
    depth_topic: str = '/depth'
    labels_topic: str = '/segmentation'
    gt_depth_topic: str = bf.GT_DEPTH_TOPIC
    gt_labels_topic: str = bf.GT_LABELS_TOPIC
    answer_reliability: str = 'reliable'
    timeout: float = 20.0
    idle: float = 3.0
    listen_timeout: float = 300.0
    max_frames: int = 0
    min_depth: float = 1e-3
    max_depth: float = 80.0
    garg_crop: bool = False
    median_scaling: bool = False
    out: str = ''
    record: str = ''
    progress: bool = True

    def input_topic(self):
        """Return the topic frames are published on (or heard on, in listen mode)."""
        return self.publish_topic or self.image_topic

    def info_topic(self):
        """Return the camera_info topic to publish on: next to the image topic by default."""
        if self.publish_camera_info_topic:
            return self.publish_camera_info_topic
        if not self.publish_topic:
            return self.camera_info_topic
        return self.publish_topic.rsplit('/', 1)[0] + '/camera_info'


def stamp_ns(header):
    """Return a header's stamp as integer nanoseconds (the key that pairs inputs and answers)."""
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


class RecordedBag:
    """A bag's image stream and ground truth, checked and indexed up front with clear errors.

    Only stamps and recording times are kept in memory; images and ground truth are read
    from the bag when needed, so long recordings replay in constant memory.
    """

    def __init__(self, opts):
        self.path = Path(opts.bag)
        if not self.path.exists():
            raise ReplayError(f'bag not found: {self.path}')
        self.ts = bf.typestore()
        try:  # a bag cut short is read up to its last complete message (training.bag_check)
            self.check = check_bag(self.path)
        except BagError as exc:
            raise ReplayError(str(exc)) from None
        if self.check.cut_short:
            print(f'[replay] warning: {self.check.summary()}', file=sys.stderr, flush=True)
        self.reader = self._open()
        conns = self.reader.connections
        self.topics = {}
        for conn in conns:
            self.topics.setdefault(conn.topic, conn.msgtype)
        self.image_conns = self._conns(opts.image_topic, bf.IMAGE_TYPE, required=True)
        self.info_conns = self._conns(opts.camera_info_topic, bf.CAMERA_INFO_TYPE)
        self.gt_topics = {'depth': opts.gt_depth_topic, 'labels': opts.gt_labels_topic}
        self.gt_conns = {role: self._conns(topic, bf.IMAGE_TYPE)
                         for role, topic in self.gt_topics.items()}
        self.frames = []  # (recording time ns, header stamp ns), in bag order
        self.gt = {'depth': {}, 'labels': {}}  # role -> header stamp -> recording time
        roles = {c.id: role for role, cs in self.gt_conns.items() for c in cs}
        wanted = self.image_conns + [c for cs in self.gt_conns.values() for c in cs]
        for conn, logtime, raw in self.reader.messages(connections=wanted):
            stamp = stamp_ns(self._deserialize(raw, conn).header)
            if conn.id in roles:
                self.gt[roles[conn.id]].setdefault(stamp, logtime)
            elif not opts.max_frames or len(self.frames) < opts.max_frames:
                self.frames.append((logtime, stamp))
        if not self.frames:
            raise ReplayError(f'no messages on {opts.image_topic} in bag {self.path}')
        self.image_logtime = {stamp: logtime for logtime, stamp in self.frames}

    def _open(self):
        try:
            reader = Reader(self.check.read_path)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises several types
            raise ReplayError(f'cannot open bag {self.path}: {exc}') from exc
        return reader

    def _conns(self, topic, msgtype, required=False):
        if not topic or topic not in self.topics:
            if required:
                raise ReplayError(
                    f'topic {topic} not in bag {self.path}; it has: '
                    + ', '.join(f'{t} ({m})' for t, m in sorted(self.topics.items())))
            return []
        if self.topics[topic] != msgtype:
            raise ReplayError(f'topic {topic} in bag {self.path} has unsupported message type '
                              f'{self.topics[topic]} (replay needs {msgtype})')
        return [c for c in self.reader.connections if c.topic == topic]

    def _deserialize(self, raw, conn):
        try:
            return self.ts.deserialize_cdr(raw, conn.msgtype)
        except Exception as exc:  # noqa: BLE001 - corrupt CDR
            raise ReplayError(f'{self.path}: cannot deserialise a {conn.msgtype} message on '
                              f'{conn.topic}: {exc}') from exc

    def stream(self):
        """Yield ``(kind, recording time, stamp, CDR bytes)`` of images and camera_info.

        A camera_info recorded right after the image with its stamp goes out first, so the
        node holds that frame's camera_info when it answers the frame.
        """
        reader = self._open()
        kinds = {c.id: 'image' for c in self.image_conns}
        kinds.update({c.id: 'camera_info' for c in self.info_conns})
        last = self.frames[-1][0]
        sent = 0
        held = None  # an image, until we know whether its camera_info comes next
        try:
            for conn, logtime, raw in reader.messages(
                    connections=self.image_conns + self.info_conns):
                kind = kinds[conn.id]
                if kind == 'image':
                    if sent == len(self.frames):
                        break
                    sent += 1
                elif logtime > last:
                    break
                item = (kind, logtime, stamp_ns(self._deserialize(raw, conn).header),
                        bytes(raw))
                if held is not None and not (kind == 'camera_info' and item[2] == held[2]):
                    yield held
                    held = None
                if kind == 'image':
                    held = item
                else:
                    yield item
                    if held is not None:
                        yield held
                        held = None
            if held is not None:
                yield held
        finally:
            reader.close()

    def _fetch(self, conns, logtime, stamp, role):
        for conn, _, raw in self.reader.messages(connections=conns, start=logtime,
                                                 stop=logtime + 1):
            msg = self._deserialize(raw, conn)
            if stamp_ns(msg.header) == stamp:
                try:
                    return decode(msg, role)
                except ImageDecodeError as exc:
                    raise ReplayError(f'{self.path}:{conn.topic} at stamp {stamp}: {exc}') \
                        from None
        return None

    def ground_truth(self, role, stamp):
        """Return the decoded ground truth of a frame (depth: 0 invalid, +inf far), or None."""
        logtime = self.gt[role].get(stamp)
        if logtime is None:
            return None
        return self._fetch(self.gt_conns[role], logtime, stamp, role)

    def image(self, stamp):
        """Decode the recorded image with this stamp (RGB uint8)."""
        return self._fetch(self.image_conns, self.image_logtime[stamp], stamp, 'image')

    def close(self):
        """Close the bag."""
        self.reader.close()


class Collector:
    """The rclpy side: publishes frames and gathers the node's answers by stamp.

    It runs in a context of its own, spun by a background thread, so the caller's rclpy
    state (if any) is untouched, and Ctrl-C stays a plain KeyboardInterrupt.
    """

    def __init__(self, opts, order):
        from sim2real_perception import dds
        dds.apply_default_profile()  # large frames over shared memory; before the participant
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (HistoryPolicy, qos_profile_sensor_data, QoSProfile,
                               ReliabilityPolicy)
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import CameraInfo, Image
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('sim2real_replay', context=self.context)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.index = {stamp: i for i, stamp in enumerate(order)}
        self.sent = {}       # stamp -> monotonic time it was sent / heard
        self.answers = {}    # stamp -> {'depth'|'labels': (monotonic time, Image)}
        self.max_done = -1   # highest bag index answered on both topics
        self.n_answers = 0   # answer messages received (any topic)
        self.last_event = time.monotonic()
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                              reliability=ReliabilityPolicy.RELIABLE)
        self.topics = {'depth': opts.depth_topic, 'labels': opts.labels_topic}
        self.pub = self.info_pub = None
        self.recorder = None
        if opts.record:
            from rclpy.serialization import serialize_message
            from .bag_recorder import output_topics, OutputRecorder
            self._serialize = serialize_message
            extra = output_topics(opts.depth_topic, opts.labels_topic)
            self.recorder = OutputRecorder(opts.record, {
                'image': opts.input_topic(), 'camera_info': opts.info_topic(),
                'depth': opts.depth_topic, 'segmentation': opts.labels_topic, **extra})
        if opts.mode == 'listen':
            self.node.create_subscription(Image, opts.input_topic(), self._on_input,
                                          qos_profile_sensor_data)
        else:
            self.pub = self.node.create_publisher(Image, opts.input_topic(), reliable)
            self.info_pub = self.node.create_publisher(CameraInfo, opts.info_topic(), reliable)
        answer_qos = reliable if opts.answer_reliability == 'reliable' else \
            qos_profile_sensor_data
        self.subs = [self.node.create_subscription(Image, topic, self._on_answer(key),
                                                   answer_qos)
                     for key, topic in self.topics.items()]
        self.record_subs = []
        self.color_sub = self.info_sub = None  # the node's other outputs, when recording
        # Stamps of the node's other outputs as recorded, per role: they go out after depth
        # and labels, so a frame is answered before they arrive.
        self.recorded = {'segmentation_color': set(), 'depth_camera_info': set()}
        self.last_info = None     # the last camera_info published: CDR bytes
        if self.recorder is not None:  # the other outputs, recorded as they arrive (CDR)
            for role, msgtype in (('segmentation_color', Image),
                                  ('depth_camera_info', CameraInfo)):
                self.record_subs.append(self.node.create_subscription(
                    msgtype, self.recorder.topics[role], self._on_recorded(role), answer_qos,
                    raw=True))
            self.color_sub, self.info_sub = self.record_subs
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self._spin, name='replay_spin', daemon=True)
        self.thread.start()

    def _spin(self):
        while self.running and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_input(self, msg):
        if self.recorder is not None:
            self.recorder.write('image', self._serialize(msg))
        with self.changed:
            self.sent.setdefault(stamp_ns(msg.header), time.monotonic())
            self.last_event = time.monotonic()
            self.changed.notify_all()

    def _on_recorded(self, role):
        from .bag_recorder import cdr_stamp_ns

        def callback(raw):
            self.recorder.write(role, raw)
            with self.changed:
                self.recorded[role].add(cdr_stamp_ns(raw))
                self.changed.notify_all()
        return callback

    def info_expected(self):
        """Whether the node should answer with a depth/camera_info we record.

        It sends one only after a camera_info reached it, and it reads camera_info best
        effort, so one sent before its reader matched ours is lost without a trace.
        """
        return self.info_sub is not None and self.last_info is not None \
            and self.info_sub.get_publisher_count() > 0

    def _on_answer(self, key):
        def callback(msg):
            now = time.monotonic()
            stamp = stamp_ns(msg.header)
            if self.recorder is not None:
                self.recorder.write('depth' if key == 'depth' else 'segmentation',
                                    self._serialize(msg))
            with self.changed:
                entry = self.answers.setdefault(stamp, {})
                entry.setdefault(key, (now, msg))
                self.n_answers += 1
                self.last_event = now
                if len(entry) == len(self.topics) and stamp in self.index:
                    self.max_done = max(self.max_done, self.index[stamp])
                self.changed.notify_all()
        return callback

    def wait_for_node(self, timeout):
        """Block until the node subscribes to our input and publishes the answer topics."""
        deadline = time.monotonic() + timeout
        while self.pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise ReplayError(
                    f'no subscriber on {self.pub.topic_name} after {timeout:g} s: is '
                    f'depth_seg_node running with its input remapped there '
                    f'(-r image:={self.pub.topic_name})?')
            time.sleep(0.05)
        # The node reads camera_info best-effort: a message sent before its reader matched
        # ours is lost, and so is that frame's depth/camera_info. Wait for it (a node with
        # publish_camera_info off never subscribes: then give up after a few seconds).
        info_deadline = min(deadline, time.monotonic() + 5.0)
        while self.info_pub is not None and self.info_pub.get_subscription_count() == 0 \
                and time.monotonic() < info_deadline:
            time.sleep(0.05)
        self.wait_for_answers(deadline - time.monotonic(), timeout)

    def wait_for_answers(self, remaining, timeout):
        """Block until a publisher on every answer topic is matched, then let it settle."""
        deadline = time.monotonic() + remaining
        for sub in self.subs + self.record_subs:
            while sub.get_publisher_count() == 0:
                if time.monotonic() > deadline:
                    raise ReplayError(f'no publisher on {sub.topic_name} after {timeout:g} s '
                                      '(is depth_seg_node running, publishing there?)')
                time.sleep(0.05)
        time.sleep(0.3)  # let the node's side of the new connections settle too

    def trailing_roles(self):
        """Return the recorded outputs the node sends after depth and labels, per frame."""
        if self.recorder is None:
            return []
        roles = ['depth_camera_info'] if self.info_expected() else []
        if self.color_sub.get_publisher_count() > 0:
            roles.append('segmentation_color')
        return roles

    def publish(self, kind, stamp, raw, retime=True):
        """Publish recorded bytes; images are timed from here (unless not ``retime``)."""
        if kind == 'camera_info':
            self.last_info = raw
            self.info_pub.publish(raw)
            if self.recorder is not None:
                self.recorder.write('camera_info', raw)
            return
        if retime:
            with self.lock:
                self.sent[stamp] = time.monotonic()
        self.pub.publish(raw)
        if self.recorder is not None:
            self.recorder.write('image', raw)

    def complete(self, stamp):
        """Tell whether both answers for ``stamp`` arrived (call with the lock held)."""
        return len(self.answers.get(stamp, ())) == len(self.topics)

    def missing(self, stamp):
        """Name the answer topics that have nothing for ``stamp`` yet."""
        with self.lock:
            got = self.answers.get(stamp, {})
            return [t for k, t in self.topics.items() if k not in got]

    def wait(self, predicate, timeout):
        """Wait until ``predicate()`` holds (evaluated with the lock held) or time runs out."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def close(self):
        """Stop spinning and shut the context down."""
        self.running = False
        self.thread.join(timeout=2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
        if self.recorder is not None:
            self.recorded = self.recorder.close()


class Scorer:
    """Score answered frames in bag order against ground truth, as they arrive.

    Frames are scored in bag order so the metric sums accumulate exactly as an offline
    evaluation over the same frames does; answers are freed once scored.
    """

    def __init__(self, opts, bag, col=None):
        from .metrics import DepthMetrics, LabelVariation, SegMetrics
        self.opts, self.bag, self.col = opts, bag, col
        # How much the answers follow the image, as training.evaluate reports it.
        self.variation, self.gt_variation = LabelVariation(NUM_CLASSES), \
            LabelVariation(NUM_CLASSES)
        self.depth = DepthMetrics(min_depth=opts.min_depth, max_depth=opts.max_depth,
                                  garg_crop=opts.garg_crop, median_scaling=opts.median_scaling)
        self.seg = SegMetrics(num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX)
        self.order = [stamp for _, stamp in bag.frames]
        n = len(self.order)
        self.picks = {self.order[i * n // FIGURE_ROWS] for i in range(min(FIGURE_ROWS, n))}
        self.kept = {}
        self.next = 0
        self.answered, self.dropped, self.latencies = [], [], []
        self.n_depth = self.n_seg = 0
        self.first_sent = self.last_answer = None
        self.every = max(1, n // 10)

    def advance(self, final=False):
        """Score every frame that is settled (answered, or given up on when ``final``)."""
        col = self.col
        while self.next < len(self.order):
            stamp = self.order[self.next]
            with col.lock:
                complete = col.complete(stamp)
                was_sent = stamp in col.sent
                passed = self.next < col.max_done
                entry = col.answers.pop(stamp, None) if complete or passed or final else None
                sent_at = col.sent.get(stamp)
            if complete:
                self._score(stamp, entry, sent_at)
            elif passed or final:
                if was_sent:
                    self.dropped.append(stamp)
            else:
                return
            self.next += 1

    def _score(self, stamp, entry, sent_at):
        depth, labels = raw_array(entry['depth'][1]), raw_array(entry['labels'][1])
        done = max(t for t, _ in entry.values())
        if sent_at is not None:
            self.latencies.append(done - sent_at)
            self.first_sent = sent_at if self.first_sent is None else \
                min(self.first_sent, sent_at)
        self.last_answer = done if self.last_answer is None else max(self.last_answer, done)
        gt_depth = self.bag.ground_truth('depth', stamp)
        gt_labels = self.bag.ground_truth('labels', stamp)
        for key, answer, gt in (('depth', depth, gt_depth), ('labels', labels, gt_labels)):
            if gt is not None and answer.shape[:2] != gt.shape[:2]:
                raise ReplayError(
                    f'answer on {self.col.topics[key]} is {answer.shape[1]}x{answer.shape[0]} '
                    f'but the ground truth on {self.bag.gt_topics[key]} is '
                    f'{gt.shape[1]}x{gt.shape[0]} (stamp {stamp}); the node must answer at '
                    'the input resolution')
        if gt_depth is not None:
            self.depth.update(depth, gt_depth)
            self.n_depth += 1
        if gt_labels is not None:
            self.seg.update(labels, gt_labels)
            self.gt_variation.update(gt_labels)
            self.n_seg += 1
        self.variation.update(labels)
        if stamp in self.picks:
            self.kept[stamp] = (depth, labels)
        self.answered.append(stamp)
        n = len(self.answered)
        if self.opts.progress and (n % self.every == 0 or n == 1 or n == len(self.order)):
            with self.col.lock:
                sent = len(self.col.sent)
            print(f'[replay] {n}/{len(self.order)} answered ({sent} sent, '
                  f'{len(self.dropped)} dropped), last latency '
                  f'{self.latencies[-1] * 1000 if self.latencies else float("nan"):.0f} ms',
                  flush=True)

    def metrics(self):
        """Return the depth and segmentation metric dicts (None without ground truth)."""
        return {'depth': self.depth.compute() if self.n_depth else None,
                'depth_frames': self.n_depth,
                'segmentation': {**self.seg.compute(),
                                 'label_change_share': self.variation.compute(),
                                 'gt_label_change_share': self.gt_variation.compute()}
                if self.n_seg else None,
                'segmentation_frames': self.n_seg}


def _send(opts, bag, col, scorer):
    """Publish the recording per mode; return an error message if the node stopped answering."""
    t0 = None
    misses = 0
    n_images = 0
    for kind, logtime, stamp, raw in bag.stream():
        if opts.mode == 'timed':
            t0 = (time.monotonic(), logtime) if t0 is None else t0
            target = t0[0] + (logtime - t0[1]) / 1e9 / opts.rate
            while time.monotonic() < target:
                scorer.advance()
                time.sleep(min(0.02, max(0.0, target - time.monotonic())))
        col.publish(kind, stamp, raw)
        if kind != 'image':
            continue
        n_images += 1
        if opts.mode == 'lockstep':
            ok = col.wait(lambda s=stamp: col.complete(s), opts.timeout
                          if n_images > 1 else RESEND_PERIOD)
            waited = RESEND_PERIOD
            while not ok and n_images == 1 and waited < opts.timeout:
                col.publish(kind, stamp, raw)  # first frame: discovery may still be settling
                step = min(RESEND_PERIOD, opts.timeout - waited)
                ok = col.wait(lambda s=stamp: col.complete(s), step)
                waited += step
            if ok and n_images == 1 and col.info_expected():
                _first_camera_info(opts, col, stamp, raw)
            if not ok:
                missing = ' and '.join(col.missing(stamp))
                msg = (f'depth_seg_node did not answer frame {n_images} (stamp {stamp}) within '
                       f'{opts.timeout:g} s: nothing on {missing} (waited on '
                       f'{opts.depth_topic} and {opts.labels_topic}, sent on '
                       f'{opts.input_topic()})')
                if n_images == 1:
                    raise ReplayError(msg)
                print(f'[replay] warning: {msg}', file=sys.stderr, flush=True)
                misses += 1
                if misses >= LOCKSTEP_MAX_MISSES:
                    return f'stopped after {misses} unanswered frames in a row: {msg}'
            else:
                misses = 0
        scorer.advance()
    return None


def _first_camera_info(opts, col, stamp, raw):
    """Send the first frame's camera_info and image again until the node answers it too.

    Without this, every frame sent before the node's camera_info reader matched ours would
    miss its depth/camera_info in the recording. Repeats are recorded once (the recorder
    keeps one message per topic and stamp), and the scorer keeps the first answer.
    """
    waited = 0.0
    step = 0.25
    while waited < opts.timeout:
        if col.wait(lambda: stamp in col.recorded['depth_camera_info'], step):
            return
        col.publish('camera_info', None, col.last_info)
        col.publish('image', stamp, raw, retime=False)   # its latency is already measured
        waited += step
    print(f'[replay] warning: no {col.info_sub.topic_name} from depth_seg_node for the first '
          f'frame within {opts.timeout:g} s', file=sys.stderr, flush=True)


def _wait_until_idle(opts, col, scorer, first_timeout=None):
    """Wait until every sent frame is answered or answers stop arriving for ``idle`` s."""
    if first_timeout is not None:  # listen: the user starts `ros2 bag play` now
        if not col.wait(lambda: bool(col.sent), first_timeout):
            raise ReplayError(f'nothing heard on {opts.input_topic()} within '
                              f'{first_timeout:g} s (is `ros2 bag play` running?)')
        if not col.wait(lambda: col.n_answers > 0, opts.timeout):
            raise ReplayError(f'frames arrive on {opts.input_topic()} but nothing on '
                              f'{opts.depth_topic} / {opts.labels_topic} within '
                              f'{opts.timeout:g} s (is depth_seg_node running?)')
    while True:
        scorer.advance()
        with col.lock:
            target = len(scorer.order) if opts.mode == 'listen' else len(col.sent)
            quiet = time.monotonic() - col.last_event
        if scorer.next >= target or quiet >= opts.idle:
            return
        time.sleep(0.05)


def _wait_for_trailing_outputs(opts, col, stamps):
    """Wait (up to ``idle`` s) for the outputs the node sends after a frame's answer.

    The node publishes segmentation_color and depth/camera_info after depth and labels, so
    without this the recording could close before the last frame's arrive.
    """
    roles = col.trailing_roles()
    stamps = set(stamps)
    if not roles or not stamps:
        return
    if col.wait(lambda: all(stamps <= col.recorded[r] for r in roles), opts.idle):
        return
    with col.lock:
        short = {col.recorder.topics[r]: len(stamps - col.recorded[r]) for r in roles}
    print(f'[replay] warning: recording closed without these answered frames\' outputs '
          f'(topic: frames) after {opts.idle:g} s: '
          + ', '.join(f'{t}: {n}' for t, n in short.items() if n), file=sys.stderr, flush=True)


def _percentiles(values):
    if not values:
        return {'p50': None, 'p90': None, 'p99': None, 'mean': None, 'max': None}
    arr = np.asarray(values) * 1000.0
    return {'p50': float(np.percentile(arr, 50)), 'p90': float(np.percentile(arr, 90)),
            'p99': float(np.percentile(arr, 99)), 'mean': float(arr.mean()),
            'max': float(arr.max())}


def _check_options(opts):
    if opts.mode not in MODES:
        raise ReplayError(f'mode {opts.mode!r} not in {"|".join(MODES)}')
    if opts.rate <= 0:
        raise ReplayError('--rate must be positive')
    if opts.timeout <= 0 or opts.idle <= 0:
        raise ReplayError('--timeout and --idle must be positive')
    if opts.answer_reliability not in ('reliable', 'best_effort'):
        raise ReplayError('--answer-reliability must be reliable or best_effort')


def run_replay(opts, on_ready=None):
    """Replay (or listen), score, write outputs; return the report dict.

    Ctrl-C (KeyboardInterrupt) ends the run early with a partial report
    (``report['interrupted']``). Raises ReplayError for problems the user must fix.
    Listen mode calls ``on_ready()`` once the node's answer topics are connected, the
    moment to start playing the bag.
    """
    _check_options(opts)
    bag = RecordedBag(opts)
    order = [stamp for _, stamp in bag.frames]
    scorer = Scorer(opts, bag)
    col = scorer.col = Collector(opts, order)
    interrupted, error = False, None
    t0 = time.monotonic()
    try:
        if opts.mode == 'listen':
            col.wait_for_answers(opts.timeout, opts.timeout)
            if on_ready is not None:
                on_ready()
            if opts.progress:
                print(f'[replay] listening on {opts.input_topic()} -> {opts.depth_topic}, '
                      f'{opts.labels_topic}; play the bag now (Ctrl-C to stop)', flush=True)
            _wait_until_idle(opts, col, scorer, first_timeout=opts.listen_timeout)
        else:
            col.wait_for_node(opts.timeout)
            if opts.progress:
                print(f'[replay] node found; {opts.mode} replay of {len(order)} frames on '
                      f'{opts.input_topic()}', flush=True)
            error = _send(opts, bag, col, scorer)
            _wait_until_idle(opts, col, scorer)
        _wait_for_trailing_outputs(opts, col, scorer.answered)
    except KeyboardInterrupt:
        interrupted = True
        print('\n[replay] interrupted: partial report', file=sys.stderr, flush=True)
    finally:
        col.close()
    wall = time.monotonic() - t0
    scorer.advance(final=True)
    n_sent = len(col.sent)
    span = (scorer.last_answer - scorer.first_sent) if scorer.latencies else 0.0
    n = len(scorer.answered)
    report = {
        'bag': str(opts.bag), 'mode': opts.mode, 'rate_factor': opts.rate,
        'input_topic': opts.input_topic(),
        'answer_topics': [opts.depth_topic, opts.labels_topic],
        'ground_truth_topics': {r: t for r, t in bag.gt_topics.items() if bag.gt[r]},
        'interrupted': interrupted, 'error': error,
        'frames_in_bag': len(order), 'bag_check': bag.check.as_dict(),
        'frames_sent': n_sent, 'frames_answered': n,
        'frames_dropped': max(n_sent - n, 0),
        'latency_ms': _percentiles(scorer.latencies),
        'achieved_rate_hz': (n - 1) / span if n > 1 and span > 0 else 0.0,
        'wall_s': wall,
        'options': asdict(opts),
    }
    if col.recorder is not None:
        report['recording'] = {'bag': opts.record, 'messages': col.recorded}
    report.update(scorer.metrics())
    if opts.out:
        write_outputs(report, bag, scorer, Path(opts.out))
    bag.close()
    return report


def write_outputs(report, bag, scorer, out):
    """Write ``replay.json`` and ``replay.png`` (input, depth and labels vs ground truth)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for stamp in sorted(scorer.kept, key=scorer.order.index):
        depth, labels = scorer.kept[stamp]
        rows.append((bag.image(stamp), depth, bag.ground_truth('depth', stamp), labels,
                     bag.ground_truth('labels', stamp)))
    if rows:
        from .figures import save_prediction_grid
        report['figure'] = str(save_prediction_grid(out / 'replay.png', rows, tile_width=256))
    report['json'] = str(out / 'replay.json')
    (out / 'replay.json').write_text(json.dumps(_clean(report), indent=2,
                                                default=_json_default, allow_nan=False))


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    raise TypeError(f'{type(obj).__name__} is not JSON serialisable')


def _clean(value):
    """Replace NaN/inf (not JSON) by None, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def format_report(report):
    """Return the human-readable summary table of a replay report."""
    lat = report['latency_ms']
    lines = [
        f'Replay of {report["bag"]} ({report["mode"]}'
        + (f', rate x{report["rate_factor"]:g}' if report['mode'] == 'timed' else '') + ')'
        + (' - INTERRUPTED, partial report' if report['interrupted'] else ''),
        f'  frames      {report["frames_in_bag"]} in bag, {report["frames_sent"]} sent, '
        f'{report["frames_answered"]} answered, {report["frames_dropped"]} dropped'
        + (f' (bag cut short: {report["bag_check"]["messages_lost"]} messages lost)'
           if report.get('bag_check', {}).get('cut_short') else ''),
        '  latency ms  ' + (f'p50 {lat["p50"]:.1f}  p90 {lat["p90"]:.1f}  p99 {lat["p99"]:.1f}'
                            if lat['p50'] is not None else 'n/a'),
        f'  rate        {report["achieved_rate_hz"]:.2f} Hz answered '
        f'({report["wall_s"]:.1f} s wall)',
    ]
    d = report.get('depth')
    if d:
        lines.append(f'  depth       AbsRel {d["abs_rel"]:.4f}  SqRel {d["sq_rel"]:.4f}  '
                     f'RMSE {d["rmse"]:.3f}  RMSElog {d["rmse_log"]:.4f}  d<1.25 {d["a1"]:.4f}'
                     f'  ({report["depth_frames"]} frames)')
    s = report.get('segmentation')
    if s:
        lines.append(f'  segment.    mIoU {s["miou"]:.4f}  pixel acc {s["pixel_acc"]:.4f}  '
                     f'({report["segmentation_frames"]} frames)')
    if not d and not s:
        lines.append('  metrics     none (no ground-truth topics in the bag)')
    if report.get('error'):
        lines.append(f'  error       {report["error"]}')
    for key in ('json', 'figure'):
        if report.get(key):
            lines.append(f'  {key:<11} {report[key]}')
    if report.get('recording'):
        rec = report['recording']
        lines.append(f'  recording   {rec["bag"]} (mcap: ' + ', '.join(
            f'{topic} {n}' for topic, n in rec['messages'].items()) + ')')
    return '\n'.join(lines)


def build_parser():
    """Return the CLI parser (every option documented in ``--help``)."""
    d = ReplayOptions(bag='')
    p = argparse.ArgumentParser(
        prog='python -m training.replay',
        description=__doc__.split('\n\n')[0].replace('``', ''),
        epilog='Exit status: 0 done, 2 error (message on stderr), 130 interrupted (partial '
               'report written). Set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST to keep DDS on '
               'this machine. Docs: docs/evaluation.md#replay-evaluation',
        formatter_class=DefaultsHelpFormatter)
    p.add_argument('--bag', required=True, help='rosbag2 directory (mcap or sqlite3)')
    p.add_argument('--mode', default=d.mode, choices=MODES,
                   help='timed: recorded timing / --rate; lockstep: send a frame, wait for '
                        'its answer, send the next; listen: you run `ros2 bag play` yourself')
    p.add_argument('--rate', type=float, default=d.rate,
                   help='timed mode: speed factor on the recorded timing')
    p.add_argument('--image-topic', default=d.image_topic, help='image topic in the bag')
    p.add_argument('--camera-info-topic', default=d.camera_info_topic,
                   help='camera_info topic in the bag (published along when present)')
    p.add_argument('--publish-topic', default='',
                   help='topic the node listens on (default: --image-topic); in listen mode '
                        'the topic `ros2 bag play` publishes on')
    p.add_argument('--publish-camera-info-topic', default='',
                   help='where camera_info goes (default: next to --publish-topic)')
    p.add_argument('--depth-topic', default=d.depth_topic, help="node's depth output topic")
    p.add_argument('--labels-topic', default=d.labels_topic,
                   help="node's segmentation (mono8 class ids) output topic")
    p.add_argument('--gt-depth-topic', default=d.gt_depth_topic,
                   help='ground-truth depth topic in the bag (32FC1 m or 16UC1 mm)')
    p.add_argument('--gt-labels-topic', default=d.gt_labels_topic,
                   help='ground-truth label topic in the bag (mono8 class ids, 255 ignore)')
    p.add_argument('--answer-reliability', default=d.answer_reliability,
                   choices=['reliable', 'best_effort'],
                   help='QoS of our answer subscriptions (best_effort for a best-effort node)')
    p.add_argument('--timeout', type=float, default=d.timeout,
                   help='seconds to wait for the node to appear and for each answer')
    p.add_argument('--idle', type=float, default=d.idle,
                   help='after the last frame: stop when no answer came for this many seconds; '
                        'also the longest wait for the segmentation_color and '
                        'depth/camera_info of the frames answered (--record)')
    p.add_argument('--listen-timeout', type=float, default=d.listen_timeout,
                   help='listen mode: seconds to wait for the first frame from `ros2 bag play`')
    p.add_argument('--max-frames', type=int, default=0, help='replay the first N frames; 0 = all')
    p.add_argument('--min-depth', type=float, default=d.min_depth,
                   help='depth metrics: lower cap (m), as training.evaluate')
    p.add_argument('--max-depth', type=float, default=d.max_depth,
                   help='depth metrics: upper cap (m); ground truth beyond it is ignored')
    p.add_argument('--garg-crop', action='store_true', help='depth metrics: Garg/Eigen crop')
    p.add_argument('--median-scaling', action='store_true',
                   help='depth metrics: scale each prediction by median(gt)/median(pred)')
    p.add_argument('--out', default='', help='directory for replay.json and replay.png')
    p.add_argument('--record', default='', metavar='OUT',
                   help='also write an mcap rosbag2 here of the frames sent and the answers '
                        '(image, camera_info, depth, segmentation, segmentation_color, '
                        'depth/camera_info; replaced if it exists)')
    p.add_argument('--quiet', action='store_true', help='no progress lines')
    return p


def main(argv=None):
    """Run the CLI; return the exit status."""
    args = vars(build_parser().parse_args(argv))
    args['progress'] = not args.pop('quiet')
    opts = ReplayOptions(**args)
    try:
        report = run_replay(opts)
    except ReplayError as exc:
        print(f'[replay] error: {exc}', file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    if report['interrupted']:
        return 130
    return 2 if report['error'] else 0


if __name__ == '__main__':
    sys.exit(main())
