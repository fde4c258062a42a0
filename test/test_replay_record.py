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
    # Every answer topic: one message per frame, with the input's header. The node sends
    # depth/camera_info once a camera_info reached it: a best-effort reader can miss the
    # first one, sent before it matched, so from the first frame that has it on.
    order = [stamp(m) for _, m in msgs[topics['image']]]
    answers = {}
    for role in ('depth', 'segmentation', 'segmentation_color', 'depth_camera_info'):
        by_stamp = {stamp(m): m for _, m in msgs[topics[role]]}
        want = set(order)
        if role == 'depth_camera_info':
            assert len(by_stamp) >= n - 1
            want = set(order[order.index(min(by_stamp, key=order.index)):])
        assert set(by_stamp) == want, role
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
