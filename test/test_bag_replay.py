"""make_bag -> replay through a real depth_seg_node over loopback DDS, scored like offline.

The node runs in-process (its own rclpy context, spun in a thread) with a tiny random model;
bags are real rosbag2 directories in both storage formats, written from procedural data
through the dataset readers, and read back with ``rosbags``.
"""
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image

from sim2real_perception.depth_seg_node import DepthSegNode
from sim2real_perception.predictor import Predictor
from test_node_support import make_model_dir, RELIABLE
from training import bag_format as bf
from training import make_bag, replay
from training.data import iter_frames
from training.data.make_procedural import generate
from training.evaluate import evaluate_model
from training.metrics import DepthMetrics, LabelVariation, SegMetrics

NS = '/bagtest'
N_FRAMES = 6
DATA_SETS = ['data.eval.val_fraction=0.5']  # 6 of the 12 generated frames


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """Tiny procedural dataset (12 real-style frames, one drive) and a random model."""
    root = tmp_path_factory.mktemp('bagdata')
    generate(root / 'proc', sim_frames=0, real_frames=2 * N_FRAMES, height=64, width=192,
             frames_per_sequence=2 * N_FRAMES, workers=1)
    model = make_model_dir(root / 'model')
    return {'root': root, 'data': root / 'proc', 'model': model}


def data_cfg(work):
    cfg, split = make_bag.select_data('test', None, 'eval',
                                      [f'data.eval.root={work["data"]}'] + DATA_SETS)
    return cfg, split


@pytest.fixture(scope='module')
def bags(work):
    """Write the eval split with the CLI in both storage formats."""
    out = {}
    for storage in ('mcap', 'sqlite3'):
        path = work['root'] / f'eval_{storage}'
        rc = make_bag.main(['--data', 'test', '--split', 'eval', '--storage', storage,
                            '--out', str(path), '--quiet', '--set',
                            f'data.eval.root={work["data"]}', *DATA_SETS])
        assert rc == 0
        out[storage] = path
    return out


@pytest.fixture(scope='module')
def node(work):
    """Run a real depth_seg_node in namespace /bagtest, spinning in a background thread."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    params = {'model_path': str(work['model']), 'backend': 'torch', 'device': 'cpu',
              'log_period': 0.0, 'diagnostics_period': 1.0}
    n = DepthSegNode(context=ctx, namespace=NS,
                     parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(n)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield n
    executor.shutdown()
    thread.join(timeout=5)
    n.destroy_node()
    rclpy.try_shutdown(context=ctx)


def options(bag, out=None, **kw):
    values = dict(bag=str(bag), mode='lockstep', publish_topic=f'{NS}/image',
                  depth_topic=f'{NS}/depth', labels_topic=f'{NS}/segmentation', timeout=20.0,
                  idle=2.0, out=str(out) if out else '', progress=False)
    values.update(kw)
    return replay.ReplayOptions(**values)


def offline_metrics(work):
    """Score the same frames without ROS: Predictor (as the node) + training.metrics."""
    cfg, split = data_cfg(work)
    predictor = Predictor.from_path(work['model'], backend='torch', device='cpu')
    depth, seg = DepthMetrics(), SegMetrics()
    follow, gt_follow = LabelVariation(), LabelVariation()
    n = 0
    for frame in iter_frames(cfg, split=split):
        pred = predictor.predict(frame['image'])
        depth.update(pred.depth, frame['depth'])
        seg.update(pred.labels, frame['labels'])
        follow.update(pred.labels)
        gt_follow.update(frame['labels'])
        n += 1
    return n, depth.compute(), {**seg.compute(), 'label_change_share': follow.compute(),
                                'gt_label_change_share': gt_follow.compute()}


def assert_same(a, b, path=''):
    """Metric dicts equal up to float rounding (same model, same frames, same order)."""
    assert set(a) == set(b), path
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            assert_same(x, y, f'{path}.{key}')
        elif x is None or y is None or (isinstance(x, float) and math.isnan(x)):
            assert (x is None or math.isnan(x)) == (y is None or math.isnan(y)), f'{path}.{key}'
        else:
            assert x == pytest.approx(y, rel=1e-6, abs=1e-9), f'{path}.{key}: {x} != {y}'


def read_bag(path):
    ts = bf.typestore()
    msgs = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return msgs


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_write_bag_layout_and_rep117(tmp_path, storage):
    """Topics, encodings, stamps, intrinsics; depth 0 -> NaN, +inf stays +Inf; labels kept."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(3):
        depth = rng.uniform(1, 50, (24, 40)).astype(np.float32)
        depth[:4] = np.inf
        depth[10:12, :] = 0.0
        labels = rng.integers(0, 12, (24, 40)).astype(np.uint8)
        labels[0, :5] = 255
        image = rng.integers(0, 256, (24, 40, 3)).astype(np.uint8)
        frames.append({'image': image, 'depth': depth, 'labels': labels})
    frames[2]['labels'] = None  # a frame without label ground truth
    n = make_bag.write_bag(frames, tmp_path / 'b', storage, rate_hz=20.0,
                           start_ns=5 * 10**9)
    assert n == 3
    suffix = {'mcap': '.mcap', 'sqlite3': '.db3'}[storage]
    assert [p.suffix for p in sorted((tmp_path / 'b').iterdir())] == [suffix, '.yaml']
    assert f'storage_identifier: {storage}' in (tmp_path / 'b' / 'metadata.yaml').read_text()
    msgs = read_bag(tmp_path / 'b')
    assert {t: len(m) for t, m in msgs.items()} == {
        bf.IMAGE_TOPIC: 3, bf.CAMERA_INFO_TOPIC: 3, bf.GT_DEPTH_TOPIC: 3, bf.GT_LABELS_TOPIC: 2}
    for i, (t, msg) in enumerate(msgs[bf.IMAGE_TOPIC]):
        assert t == replay.stamp_ns(msg.header) == 5 * 10**9 + i * 50_000_000
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', 40, 24, 120)
        assert np.array_equal(np.asarray(msg.data).reshape(24, 40, 3), frames[i]['image'])
    info = msgs[bf.CAMERA_INFO_TOPIC][0][1]
    assert (info.width, info.height) == (40, 24)
    assert info.k[0] == pytest.approx(make_bag.KITTI_FX_PER_WIDTH * 40)
    assert info.k[2] == 20.0 and info.k[5] == 12.0
    for (_, msg), frame in zip(msgs[bf.GT_DEPTH_TOPIC], frames):
        assert msg.encoding == '32FC1' and msg.step == 160
        d = np.frombuffer(np.asarray(msg.data).tobytes(), '<f4').reshape(24, 40)
        assert np.isnan(d[10:12]).all() and np.isposinf(d[:4]).all()
        keep = np.isfinite(frame['depth']) & (frame['depth'] > 0)
        assert np.array_equal(d[keep], frame['depth'][keep])
    for (_, msg), frame in zip(msgs[bf.GT_LABELS_TOPIC], frames):
        assert msg.encoding == 'mono8'
        assert np.array_equal(np.asarray(msg.data).reshape(24, 40), frame['labels'])
    with pytest.raises(FileExistsError):
        make_bag.write_bag(frames, tmp_path / 'b', storage)


def test_write_bag_leaves_no_partial_bag(tmp_path):
    def frames():
        yield {'image': np.zeros((8, 8, 3), np.uint8)}
        raise RuntimeError('reader failed')

    with pytest.raises(RuntimeError, match='reader failed'):
        make_bag.write_bag(frames(), tmp_path / 'p')
    assert not (tmp_path / 'p').exists()


def test_make_bag_cli_errors(tmp_path, capsys):
    assert make_bag.main(['--data', 'test', '--out', str(tmp_path / 'x'), '--quiet',
                          '--set', f'data.eval.root={tmp_path / "nothing"}']) == 2
    assert 'manifest.json missing' in capsys.readouterr().err
    assert make_bag.main(['--data', 'test', '--split', 'nope', '--out',
                          str(tmp_path / 'y')]) == 2
    assert "--split 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_lockstep_replay_equals_offline(work, bags, node, tmp_path, storage):
    """Every frame answered; metrics equal Predictor+metrics offline and training.evaluate."""
    report = replay.run_replay(options(bags[storage], tmp_path / 'out'))
    assert not report['interrupted'] and report['error'] is None
    assert report['frames_in_bag'] == report['frames_sent'] == N_FRAMES
    assert report['frames_answered'] == N_FRAMES and report['frames_dropped'] == 0
    assert report['depth_frames'] == report['segmentation_frames'] == N_FRAMES
    lat = report['latency_ms']
    assert 0 < lat['p50'] <= lat['p90'] <= lat['p99'] <= lat['max']
    n, depth, seg = offline_metrics(work)
    assert n == N_FRAMES
    assert depth['n_pixels'] > 0 and seg['n_pixels'] > 0
    assert_same(report['depth'], depth)
    assert_same(report['segmentation'], seg)
    cfg, split = data_cfg(work)
    ev = evaluate_model(work['model'], cfg, split=split, backend='torch', device='cpu',
                        batch_size=1)
    assert ev['frames'] == N_FRAMES
    assert_same(report['depth'], ev['depth'])
    assert_same(report['segmentation'], ev['segmentation'])
    saved = (tmp_path / 'out' / 'replay.json').read_text()
    assert '"frames_answered": 6' in saved and 'NaN' not in saved
    assert (tmp_path / 'out' / 'replay.png').stat().st_size > 1000


def test_timed_replay_answers_every_frame(bags, node, tmp_path):
    """Recorded 10 Hz timing at half speed: the tiny model keeps up, nothing is dropped."""
    report = replay.run_replay(options(bags['mcap'], mode='timed', rate=0.5))
    assert report['frames_sent'] == report['frames_answered'] == N_FRAMES
    assert report['frames_dropped'] == 0
    # frames went out 0.2 s apart, so the answered rate is about 5 Hz, not lockstep speed
    assert 3.0 < report['achieved_rate_hz'] < 8.0


def test_bag_without_ground_truth_reports_latency_only(node, tmp_path):
    """A plain recording (no /ground_truth topics) still replays: counts and latency."""
    frames = [{'image': np.full((48, 64, 3), 40 * i, np.uint8)} for i in range(3)]
    make_bag.write_bag(frames, tmp_path / 'plain', 'sqlite3')
    report = replay.run_replay(options(tmp_path / 'plain', tmp_path / 'out'))
    assert report['frames_answered'] == 3 and report['ground_truth_topics'] == {}
    assert report['depth'] is None and report['segmentation'] is None
    assert 'metrics     none (no ground-truth topics in the bag)' in replay.format_report(report)


def test_listen_mode_scores_frames_played_by_someone_else(bags, node):
    """Listen mode: a separate player (as `ros2 bag play`) publishes the bag's bytes."""
    done, ready = {}, threading.Event()
    opts = options(bags['sqlite3'], mode='listen', listen_timeout=20.0, idle=2.0)
    listener = threading.Thread(target=lambda: done.update(replay.run_replay(opts, ready.set)))
    listener.start()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    player = rclpy.create_node('player', context=ctx)
    pub = player.create_publisher(Image, f'{NS}/image', RELIABLE)
    try:
        deadline = time.monotonic() + 20
        while not (ready.is_set() and pub.get_subscription_count() == 2):
            assert time.monotonic() < deadline, 'listener or node not ready'
            time.sleep(0.05)  # the node and the listener hear the player
        time.sleep(0.3)
        ts = bf.typestore()
        with Reader(bags['sqlite3']) as reader:
            conns = [c for c in reader.connections if c.topic == bf.IMAGE_TOPIC]
            for _, _, raw in reader.messages(connections=conns):
                pub.publish(bytes(raw))
                assert ts.deserialize_cdr(raw, bf.IMAGE_TYPE).encoding == 'rgb8'
                time.sleep(0.3)
        listener.join(timeout=30)
    finally:
        player.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert not listener.is_alive()
    assert done['frames_answered'] == done['frames_sent'] == N_FRAMES
    assert done['segmentation_frames'] == N_FRAMES


def test_bag_errors(bags, tmp_path, capsys):
    assert replay.main(['--bag', str(tmp_path / 'missing')]) == 2
    assert f'bag not found: {tmp_path / "missing"}' in capsys.readouterr().err
    assert replay.main(['--bag', str(bags['mcap']), '--image-topic', '/nope']) == 2
    err = capsys.readouterr().err
    assert 'topic /nope not in bag' in err
    assert '/camera/image_raw (sensor_msgs/msg/Image)' in err
    assert '/ground_truth/depth (sensor_msgs/msg/Image)' in err
    assert replay.main(['--bag', str(bags['mcap']), '--image-topic',
                        bf.CAMERA_INFO_TOPIC]) == 2
    assert 'unsupported message type sensor_msgs/msg/CameraInfo' in capsys.readouterr().err


def test_no_node_names_the_topic(bags, capsys):
    assert replay.main(['--bag', str(bags['mcap']), '--publish-topic', '/nobody/image',
                        '--timeout', '1.5', '--quiet']) == 2
    assert 'no subscriber on /nobody/image after 1.5 s' in capsys.readouterr().err


def test_silent_node_names_the_topics_waited_on(bags):
    """A node that subscribes and advertises but never answers: the first frame times out."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    silent = rclpy.create_node('silent', namespace='/silent', context=ctx)
    silent.create_subscription(Image, 'image', lambda m: None, RELIABLE)
    silent.create_publisher(Image, 'depth', RELIABLE)
    silent.create_publisher(Image, 'segmentation', RELIABLE)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(silent)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        with pytest.raises(replay.ReplayError) as err:
            replay.run_replay(replay.ReplayOptions(
                bag=str(bags['mcap']), mode='lockstep', publish_topic='/silent/image',
                depth_topic='/silent/depth', labels_topic='/silent/segmentation',
                timeout=2.0, progress=False))
    finally:
        executor.shutdown()
        thread.join(timeout=5)
        silent.destroy_node()
        rclpy.try_shutdown(context=ctx)
    msg = str(err.value)
    assert 'did not answer frame 1' in msg
    assert 'nothing on /silent/depth and /silent/segmentation' in msg


def _default_sigint():
    """Give the child Ctrl-C's default action (a suite started with ``&`` ignores SIGINT).

    A shell runs background jobs with SIGINT ignored and children inherit that, so Python
    in the replay would install no KeyboardInterrupt handler and never see the signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_gives_partial_report(bags, node, tmp_path, repo_root):
    """SIGINT mid-replay: exit 130, the report and replay.json cover what was answered."""
    out = tmp_path / 'partial'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'training.replay', '--bag', str(bags['mcap']), '--mode',
         'timed', '--rate', '0.01', '--publish-topic', f'{NS}/image', '--depth-topic',
         f'{NS}/depth', '--labels-topic', f'{NS}/segmentation', '--out', str(out)],
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'}, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.startswith('[replay] 1/6 answered') or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Frames 5 s apart at rate 0.01: the signal lands mid-replay even on a loaded machine.
    assert proc.returncode == 130, f'stdout:\n{stdout}\nstderr:\n{stderr}'
    assert 'INTERRUPTED, partial report' in stdout
    assert 'interrupted: partial report' in stderr
    import json
    report = json.loads((out / 'replay.json').read_text())
    assert report['interrupted'] is True
    assert 1 <= report['frames_answered'] <= report['frames_sent'] < N_FRAMES
    assert report['depth_frames'] == report['frames_answered']
