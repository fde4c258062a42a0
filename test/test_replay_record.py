"""``training.replay --record``: an mcap rosbag2 of what went into the node and what came back.

The recording is read back with ``rosbags`` and checked against the replay itself: the
metrics computed from the recorded answers and the source bag's ground truth equal the ones
the replay scored, every answer carries its input's header, and segmentation_color and
depth/camera_info are there for each frame. The node is the console script in its own
process, as in the main job.
"""
import os

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from sim2real_perception.labels import IGNORE_INDEX, NUM_CLASSES, PALETTE
from test_bag_replay import assert_same, bags, options, work  # noqa: F401
from test_node_process import console_command, NodeProcess
from training import bag_format as bf
from training import replay
from training.bag_recorder import ROLES
from training.data.ros_images import decode, raw_array
from training.metrics import DepthMetrics, LabelVariation, SegMetrics

NS = f'/bagrec{os.getpid()}'


def read_recording(path):
    """Return {topic: [(log time, message)]} and {topic: msgtype} of a recorded bag."""
    ts = bf.typestore()
    out, types = {}, {}
    assert list(path.glob('*.mcap')) and (path / 'metadata.yaml').is_file()
    with Reader(path) as reader:
        for conn in reader.connections:
            types[conn.topic] = conn.msgtype
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out, types


def stamp(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def ground_truth(bag):
    ts = bf.typestore()
    gt = {'depth': {}, 'labels': {}}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            role = {bf.GT_DEPTH_TOPIC: 'depth', bf.GT_LABELS_TOPIC: 'labels'}.get(conn.topic)
            if role:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                gt[role][stamp(msg)] = decode(msg, role)
    return gt


@pytest.fixture
def node_process(work, tmp_path):  # noqa: F811
    node = NodeProcess(console_command(work['model'], backend='torch', device='cpu',
                                       namespace=NS), tmp_path / 'node.log')
    yield node
    assert node.stop() == 0, node.output()


def test_recorded_bag_holds_inputs_and_answers_and_scores_like_the_replay(bags, node_process,  # noqa: F811,E501
                                                                          tmp_path):
    rec = tmp_path / 'outputs_bag'
    report = replay.run_replay(options(
        bags['mcap'], record=str(rec), publish_topic=f'{NS}/image', depth_topic=f'{NS}/depth',
        labels_topic=f'{NS}/segmentation', timeout=60.0))
    n = report['frames_answered']
    assert n == report['frames_in_bag'] > 0 and not report['error']
    topics = {'image': f'{NS}/image', 'camera_info': f'{NS}/camera_info',
              'depth': f'{NS}/depth', 'segmentation': f'{NS}/segmentation',
              'segmentation_color': f'{NS}/segmentation_color',
              'depth_camera_info': f'{NS}/depth/camera_info'}
    assert list(topics) == list(ROLES)
    msgs, types = read_recording(rec)
    assert types == {t: (bf.CAMERA_INFO_TYPE if r.endswith('camera_info') else bf.IMAGE_TYPE)
                     for r, t in topics.items()}
    assert report['recording'] == {'bag': str(rec),
                                   'messages': {t: len(msgs[t]) for t in topics.values()}}
    images = {stamp(m): m for _, m in msgs[topics['image']]}
    assert len(images) == n
    # Every answer topic: one message per frame, with the input's header; depth/camera_info
    # too, since each frame's camera_info goes out before it and the first frame is sent
    # again until the node has one (test_a_node_that_hears_camera_info_late_...).
    order = [stamp(m) for _, m in msgs[topics['image']]]
    answers = {}
    for role in ('depth', 'segmentation', 'segmentation_color', 'depth_camera_info'):
        by_stamp = {stamp(m): m for _, m in msgs[topics[role]]}
        assert len(msgs[topics[role]]) == len(by_stamp) == n, role
        assert set(by_stamp) == set(order), role
        for s, m in by_stamp.items():
            assert m.header.frame_id == images[s].header.frame_id
            assert (m.width, m.height) == (images[s].width, images[s].height)
        answers[role] = by_stamp
    # The colours are the labels in the palette.
    for s, m in answers['segmentation_color'].items():
        labels = raw_array(answers['segmentation'][s])
        assert np.array_equal(raw_array(m), PALETTE[labels])
    # Scored again from the recording, in the replay's (bag) order: the same metrics.
    gt = ground_truth(bags['mcap'])
    depth = DepthMetrics(min_depth=1e-3, max_depth=80.0)
    seg = SegMetrics(num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX)
    follow, gt_follow = LabelVariation(NUM_CLASSES), LabelVariation(NUM_CLASSES)
    for s in order:
        depth.update(raw_array(answers['depth'][s]), gt['depth'][s])
        seg.update(raw_array(answers['segmentation'][s]), gt['labels'][s])
        follow.update(raw_array(answers['segmentation'][s]))
        gt_follow.update(gt['labels'][s])
    assert_same(depth.compute(), report['depth'])
    assert_same({**seg.compute(), 'label_change_share': follow.compute(),
                 'gt_label_change_share': gt_follow.compute()}, report['segmentation'])
    assert 'recording' in replay.format_report(report)


class StandInNode:
    """A real rclpy node on real DDS that answers images as depth_seg_node's outputs do.

    ``on_image(node, msg)`` is the answer; ``answer(msg, keys)`` publishes blank images
    with the input's header on ``keys`` and ``camera_info(msg)`` the node's
    depth/camera_info, so a test can change the order and timing a real node has.
    """

    def __init__(self, ns, on_image, hear_camera_info=True):
        import threading
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CameraInfo, Image
        from test_node_support import RELIABLE
        self.rclpy, self.Image, self.CameraInfo = rclpy, Image, CameraInfo
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node('stand_in', namespace=ns, context=self.ctx)
        self.pubs = {k: self.node.create_publisher(Image, k, RELIABLE)
                     for k in ('depth', 'segmentation', 'segmentation_color')}
        self.info_pub = self.node.create_publisher(CameraInfo, 'depth/camera_info', RELIABLE)
        self.answered = 0
        if hear_camera_info:  # as the node does, best effort
            self.listen_to_camera_info()
        self.node.create_subscription(Image, 'image', lambda msg: on_image(self, msg),
                                      RELIABLE)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen_to_camera_info(self):
        from rclpy.qos import qos_profile_sensor_data
        self.info = None
        self.node.create_subscription(self.CameraInfo, 'camera_info',
                                      lambda m: setattr(self, 'info', m),
                                      qos_profile_sensor_data)

    def answer(self, msg, keys=('depth', 'segmentation', 'segmentation_color')):
        steps = {'depth': ('32FC1', 4), 'segmentation': ('mono8', 1),
                 'segmentation_color': ('rgb8', 3)}
        for key in keys:
            encoding, step = steps[key]
            self.pubs[key].publish(self.Image(
                header=msg.header, height=msg.height, width=msg.width, encoding=encoding,
                step=msg.width * step, data=bytes(msg.height * msg.width * step)))

    def camera_info(self, msg):
        self.info_pub.publish(self.CameraInfo(header=msg.header, height=msg.height,
                                              width=msg.width))

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)


def replay_through(node_factory, ns, bag, rec):
    """Replay ``bag`` through a stand-in node under ``ns``, recording to ``rec``."""
    node = node_factory()
    try:
        return replay.run_replay(options(
            bag, record=str(rec), publish_topic=f'{ns}/image', depth_topic=f'{ns}/depth',
            labels_topic=f'{ns}/segmentation', timeout=20.0))
    finally:
        node.close()


def assert_every_output_recorded(report, rec, ns):
    n = report['frames_answered']
    assert n == report['frames_in_bag'] > 1 and not report['error']
    msgs, _ = read_recording(rec)
    order = [stamp(m) for _, m in msgs[f'{ns}/image']]
    assert len(order) == len(set(order)) == n       # each frame is in the bag once
    for topic in (f'{ns}/depth', f'{ns}/segmentation', f'{ns}/segmentation_color',
                  f'{ns}/depth/camera_info'):
        assert [stamp(m) for _, m in msgs[topic]] == order, topic
    assert report['recording']['messages'][f'{ns}/depth/camera_info'] == n


def test_a_node_that_hears_camera_info_late_still_answers_every_recorded_frame(bags, tmp_path):  # noqa: F811,E501
    """The first frame is sent again until its depth/camera_info comes back, recorded once.

    This node subscribes to camera_info only after it answered its first image, as a
    best-effort reader that matched late does: the camera_info sent with the first frame
    never reaches it, so it has no depth/camera_info to send for it.
    """
    ns = f'/latecam{os.getpid()}'

    def on_image(stand_in, msg):
        stand_in.answer(msg)
        if getattr(stand_in, 'info', None) is not None:
            stand_in.camera_info(msg)
        stand_in.answered += 1
        if stand_in.answered == 1:
            stand_in.listen_to_camera_info()

    nodes = []

    def factory():
        nodes.append(StandInNode(ns, on_image, hear_camera_info=False))
        return nodes[-1]
    rec = tmp_path / 'outputs_bag'
    report = replay_through(factory, ns, bags['mcap'], rec)
    assert nodes[0].answered > report['frames_answered']   # the first frame went out again
    assert_every_output_recorded(report, rec, ns)


def test_outputs_sent_after_the_answer_are_still_recorded_for_the_last_frame(bags, tmp_path):  # noqa: F811,E501
    """segmentation_color and depth/camera_info go out after depth and labels.

    This node sends them half a second after a frame's depth and labels, from a timer,
    so the replay sees every frame answered well before the last frame's arrive: the
    recording must wait for them instead of closing.
    """
    ns = f'/slowinfo{os.getpid()}'
    late = []

    def on_image(stand_in, msg):
        stand_in.answer(msg, ('depth', 'segmentation'))
        stand_in.answered += 1

        def send_rest():
            timer.cancel()
            stand_in.answer(msg, ('segmentation_color',))
            if stand_in.info is not None:
                stand_in.camera_info(msg)
            late.append(msg.header.stamp)
        timer = stand_in.node.create_timer(0.5, send_rest)

    rec = tmp_path / 'outputs_bag'
    report = replay_through(lambda: StandInNode(ns, on_image), ns, bags['mcap'], rec)
    assert len(late) >= report['frames_answered']
    assert_every_output_recorded(report, rec, ns)


def test_recorder_reads_the_stamp_from_the_wire_and_keeps_one_message_per_stamp(tmp_path):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo, Image
    from training.bag_recorder import cdr_stamp_ns, OutputRecorder
    image, info = Image(), CameraInfo()
    image.header.stamp.sec, image.header.stamp.nanosec = 1700000000, 123456789
    info.header.stamp.sec, info.header.stamp.nanosec = -2, 5
    assert cdr_stamp_ns(serialize_message(image)) == 1700000000123456789
    assert cdr_stamp_ns(serialize_message(info)) == -2 * 10**9 + 5
    rec = OutputRecorder(tmp_path / 'bag', {'image': '/im', 'camera_info': '/info'})
    assert rec.write('image', serialize_message(image)) is True
    assert rec.write('image', serialize_message(image)) is False     # the same frame again
    assert rec.write('camera_info', serialize_message(info)) is True  # another topic
    image.header.stamp.nanosec += 1
    assert rec.write('image', serialize_message(image)) is True
    assert rec.close() == {'/im': 2, '/info': 1}
    msgs, _ = read_recording(tmp_path / 'bag')
    assert [stamp(m) for _, m in msgs['/im']] == [
        (1700000000, 123456789), (1700000000, 123456790)]
