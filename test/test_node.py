"""depth_seg_node in-process over real rclpy + Fast DDS (loopback): outputs, bad input, health."""
import math
import threading

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image

from sim2real_perception import labels
from sim2real_perception.depth_seg_node import DepthSegNode, scale_camera_info
from sim2real_perception.model_io import ModelLoadError
from sim2real_perception.node_params import ParameterError
from test_node_support import Harness, test_image


def make_node(context, model_dir, namespace='', predictor=None, **params):
    values = {'model_path': str(model_dir), 'backend': 'torch', 'device': 'cpu',
              'diagnostics_period': 0.2, 'log_period': 0.0} | params
    return DepthSegNode(predictor=predictor, context=context, namespace=namespace,
                        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


@pytest.fixture
def rig(context, model_dir, request):
    """Start a depth node plus a test harness in a namespace of their own."""
    ns = '/' + request.node.name.replace('[', '_').replace(']', '').replace('-', '_')
    made = []

    def build(predictor=None, **params):
        node = make_node(context, model_dir, ns, predictor, **params)
        harness = Harness(context, namespace=ns)
        harness.add_node(node)
        made.append((node, harness))
        assert harness.wait_for_subscriber(), 'depth node not discovered'
        return node, harness

    yield build
    for node, harness in made:
        harness.close()
        node.destroy_node()


def test_outputs_have_input_header_encoding_and_size(rig):
    node, h = rig()
    info = CameraInfo(width=640, height=400, distortion_model='plumb_bob')
    info.k = [500.0, 0, 320, 0, 500, 200, 0, 0, 1]
    info.p = [500.0, 0, 320, 0, 0, 500, 200, 0, 0, 0, 1, 0]
    h.info_pub.publish(info)
    assert h.spin_until(lambda: node._camera_info is not None)
    rgb = test_image(320, 200)
    h.send(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8', stamp=(123, 456), frame_id='cam_opt')
    assert h.spin_until(lambda: all(h.received[t] for t in h.received)), \
        {k: len(v) for k, v in h.received.items()}
    depth, seg, color = (h.received[t][0] for t in
                         ('depth', 'segmentation', 'segmentation_color'))
    for msg, enc, step in ((depth, '32FC1', 320 * 4), (seg, 'mono8', 320),
                           (color, 'rgb8', 320 * 3)):
        assert (msg.encoding, msg.width, msg.height, msg.step) == (enc, 320, 200, step)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (123, 456)
        assert msg.header.frame_id == 'cam_opt'
    d = np.frombuffer(depth.data, np.float32).reshape(200, 320)
    lab = np.frombuffer(seg.data, np.uint8).reshape(200, 320)
    col = np.frombuffer(color.data, np.uint8).reshape(200, 320, 3)
    assert not np.isnan(d).any()
    assert np.all(d[np.isfinite(d)] > 0)
    assert np.all(np.isinf(d) == (lab == labels.CLASS_NAMES.index('sky')))
    assert lab.max() < labels.NUM_CLASSES
    np.testing.assert_array_equal(col, labels.PALETTE[lab])
    ci = h.received['depth/camera_info'][0]
    assert (ci.width, ci.height, ci.header.frame_id) == (320, 200, 'cam_opt')
    assert ci.k[0] == pytest.approx(250.0) and ci.k[5] == pytest.approx(100.0)
    # The same result as the library on the same image: the node adds no maths of its own.
    pred = node.predictor.predict(rgb)
    np.testing.assert_array_equal(lab, pred.labels)


def test_rgb8_prediction_matches_predictor_for_every_encoding(rig):
    node, h = rig(publish_segmentation_color=False, publish_camera_info=False)
    rgb = test_image(96, 64, seed=3)
    expected = node.predictor.predict(rgb).labels
    gray = rgb.mean(axis=2).astype(np.uint8)
    expected_gray = node.predictor.predict(np.repeat(gray[..., None], 3, axis=2)).labels
    alpha = np.full((64, 96, 1), 7, np.uint8)
    cases = [('rgb8', rgb, expected), ('bgr8', rgb[..., ::-1], expected),
             ('rgba8', np.concatenate([rgb, alpha], 2), expected),
             ('bgra8', np.concatenate([rgb[..., ::-1], alpha], 2), expected),
             ('mono8', gray, expected_gray)]
    for i, (encoding, arr, want) in enumerate(cases):
        h.clear()
        msg = array_to_msg(np.ascontiguousarray(arr), encoding)
        msg.header.stamp.sec = i
        h.image_pub.publish(msg)
        assert h.spin_until(lambda: h.received['segmentation']), encoding
        got = np.frombuffer(h.received['segmentation'][0].data, np.uint8).reshape(64, 96)
        np.testing.assert_array_equal(got, want, err_msg=encoding)


@pytest.mark.parametrize('pipeline', [True, False])
def test_a_burst_is_answered_in_order_by_the_configured_threads(rig, pipeline):
    node, h = rig(pipeline=pipeline, input_reliability='reliable', input_depth=20,
                  max_queued_frames=20, output_depth=20, publish_camera_info=False)
    finish, threads = node.predictor.finish, []

    def spy(out):
        threads.append(threading.current_thread().name)
        return finish(out)

    node.predictor.finish = spy
    images = [test_image(160, 100, seed=s) for s in range(6)]
    for i, img in enumerate(images):
        h.send(img, 'rgb8', stamp=(i, 0))
    assert h.spin_until(lambda: len(h.received['segmentation_color']) == 6), \
        {k: len(v) for k, v in h.received.items()}
    # pipeline: the output thread upsampled and published, the worker only ran the model.
    assert set(threads) == {'depth_seg_output' if pipeline else 'depth_seg_worker'}
    node.predictor.finish = finish
    assert [m.header.stamp.sec for m in h.received['depth']] == list(range(6))
    for img, d, seg in zip(images, h.received['depth'], h.received['segmentation']):
        want = node.predictor.predict(img)
        np.testing.assert_array_equal(np.frombuffer(d.data, np.float32).reshape(100, 160),
                                      want.depth)
        np.testing.assert_array_equal(np.frombuffer(seg.data, np.uint8).reshape(100, 160),
                                      want.labels)
    assert node.stats.counts['dropped'] == 0


def test_a_failing_output_stage_is_counted_and_the_next_frame_served(rig):
    node, h = rig(warn_throttle_period=0.0)
    assert node.params.pipeline  # the default
    finish, calls = node.predictor.finish, []

    def flaky(out):
        calls.append(out)
        if len(calls) == 1:
            raise RuntimeError('upsampling exploded')
        return finish(out)

    node.predictor.finish = flaky
    assert h.send_until(lambda: h.send(test_image(64, 48), 'rgb8'),
                        lambda: h.received['depth'])
    assert node.stats.counts['failed'] == 1
    assert 'upsampling exploded' in node.stats.last_error
    assert node._output_thread.is_alive()


def array_to_msg(arr, encoding):
    from sim2real_perception.image_conversion import array_to_imgmsg
    if encoding in ('rgba8', 'bgra8'):
        msg = array_to_imgmsg(arr[..., :3].copy(), 'rgb8')
        msg.encoding, msg.step = encoding, arr.shape[1] * 4
        msg.data = arr.tobytes()
        return msg
    return array_to_imgmsg(arr, encoding)


def _bad(width, height, encoding, step, size):
    msg = Image(width=width, height=height, encoding=encoding, step=step)
    msg.data = bytes(size)
    return msg


def test_bad_frames_are_counted_and_the_next_good_frame_served(rig):
    node, h = rig(max_input_pixels=100_000, warn_throttle_period=0.0)
    bad = {
        'wrong step': _bad(100, 50, 'rgb8', 200, 200 * 50),
        'truncated': _bad(100, 50, 'rgb8', 300, 300 * 50 - 7),
        'unsupported encoding': _bad(100, 50, 'yuv422', 200, 200 * 50),
        'empty 0x0': _bad(0, 0, 'rgb8', 0, 0),
        'huge': _bad(400, 300, 'mono8', 400, 400 * 300),
    }
    for n, (what, msg) in enumerate(bad.items(), start=1):
        h.image_pub.publish(msg)
        assert h.spin_until(lambda: node.stats.counts['malformed'] == n), what
    assert node.stats.counts['processed'] == 0
    assert 'max_input_pixels' in node.stats.last_error
    h.send(test_image(100, 50), 'rgb8', stamp=(9, 0))
    assert h.spin_until(lambda: h.received['depth'])
    assert h.received['depth'][0].header.stamp.sec == 9
    report = node.stats.report()
    assert report['counts']['malformed'] == 5 and report['counts']['processed'] == 1


class _NanOnBrightFrames:
    """Wraps a runner: the model 'produces' NaN depth for a bright frame."""

    def __init__(self, runner):
        self.runner, self.name, self.description = runner, runner.name, runner.description

    def __call__(self, batch):
        depth, lab = self.runner(batch)
        if batch.mean() > 250:
            depth = np.full_like(depth, np.nan)
        return depth, lab


def test_nan_model_output_is_counted_published_as_nan_and_node_keeps_serving(
        rig, model_dir):
    from sim2real_perception.predictor import Predictor
    predictor = Predictor.from_path(model_dir, backend='torch', device='cpu')
    predictor.runner = _NanOnBrightFrames(predictor.runner)
    node, h = rig(predictor=predictor, warn_throttle_period=0.0)
    h.send(np.full((40, 60, 3), 255, np.uint8), 'rgb8', stamp=(1, 0))
    assert h.spin_until(lambda: h.received['depth'])
    d = np.frombuffer(h.received['depth'][0].data, np.float32)
    assert np.isnan(d[np.isfinite(d) | np.isnan(d)]).all()  # NaN (invalid), sky stays +inf
    assert node.stats.counts['nonfinite'] == 1
    h.clear()
    h.send(test_image(60, 40), 'rgb8', stamp=(2, 0))
    assert h.spin_until(lambda: h.received['depth'])
    assert not np.isnan(np.frombuffer(h.received['depth'][0].data, np.float32)).any()
    assert node.stats.counts['nonfinite'] == 1


class _SlowRunner:
    def __init__(self, runner, seconds):
        self.runner, self.seconds = runner, seconds
        self.name, self.description = runner.name, runner.description

    def __call__(self, batch):
        import time
        time.sleep(self.seconds)
        return self.runner(batch)


def test_slow_model_processes_newest_frame_and_counts_drops(rig, model_dir):
    from sim2real_perception.predictor import Predictor
    predictor = Predictor.from_path(model_dir, backend='torch', device='cpu')
    predictor.runner = _SlowRunner(predictor.runner, 0.4)
    node, h = rig(predictor=predictor, publish_segmentation_color=False)
    for i in range(12):
        h.send(test_image(64, 48), 'rgb8', stamp=(100 + i, 0))
        h.spin_until(lambda: False, timeout=0.03)
    c = node.stats.counts
    assert h.spin_until(lambda: c['frames_in'] == c['processed'] + c['dropped']
                        and not node._queue, timeout=10)
    assert c['dropped'] > 0 and c['processed'] < c['frames_in']
    assert h.spin_until(lambda: h.received['depth'] and
                        h.received['depth'][-1].header.stamp.sec == 111, timeout=5), \
        'the newest frame must be processed last'


def test_diagnostics_report_counts_and_latency(rig):
    node, h = rig()
    h.send(test_image(64, 48), 'rgb8')
    assert h.spin_until(lambda: h.received['depth'])
    h.image_pub.publish(_bad(8, 8, 'yuv422', 16, 128))
    assert h.spin_until(lambda: node.stats.counts['malformed'] == 1)
    ours = lambda: [s for a in h.diagnostics for s in a.status  # noqa: E731
                    if s.name.startswith(node.get_fully_qualified_name())]
    assert h.spin_until(lambda: any(dict((kv.key, kv.value) for kv in s.values).get(
        'processed') == '1' for s in ours()))
    values = {}
    for s in ours():
        values.update({kv.key: kv.value for kv in s.values})
    for key in ('frames_in', 'processed', 'dropped', 'malformed', 'rate_hz', 'inference_ms',
                'conversion_ms', 'publish_ms', 'latency_p50_ms', 'latency_p99_ms', 'backend'):
        assert key in values, key
    assert values['malformed'] == '1'
    assert any(s.level == b'\x01' for s in ours())  # WARN for the malformed frame


def test_bad_parameters_and_models_fail_with_a_clear_message(context, model_dir, tmp_path):
    with pytest.raises(ParameterError, match='backend'):
        make_node(context, model_dir, backend='tensorflow')
    with pytest.raises(ParameterError, match='max_queued_frames'):
        make_node(context, model_dir, max_queued_frames=0)
    with pytest.raises(ParameterError, match='diagnostics_period'):
        make_node(context, model_dir, diagnostics_period='fast')
    with pytest.raises(ModelLoadError, match=str(tmp_path / 'missing')):
        make_node(context, tmp_path / 'missing')
    with pytest.raises(ParameterError, match="'publish_deph' \\(did you mean 'publish_depth'"):
        make_node(context, model_dir, publish_deph=False)


def test_class_names_and_colors_are_read_only_parameters(rig):
    node, _ = rig()
    names = node.get_parameter('class_names').value
    colors = node.get_parameter('class_colors').value
    assert list(names) == list(labels.CLASS_NAMES[:labels.NUM_CLASSES])
    assert len(colors) == len(names) and colors[0] == '#%02x%02x%02x' % tuple(labels.PALETTE[0])
    assert not node.set_parameters([Parameter('class_names', value=['x'])])[0].successful


def test_scale_camera_info_follows_image_proc_resize():
    info = CameraInfo(width=1000, height=500)
    info.k = [800.0, 0, 500, 0, 800, 250, 0, 0, 1]
    info.p = [800.0, 0, 500, -40, 0, 800, 250, 0, 0, 0, 1, 0]
    info.roi.width, info.roi.height = 1000, 500
    header = Image().header
    out = scale_camera_info(info, header, 500, 250)
    assert list(out.k) == [400.0, 0, 250, 0, 400, 125, 0, 0, 1]
    assert out.p[3] == -20 and out.p[5] == 400 and out.p[6] == 125
    assert (out.roi.width, out.roi.height, out.width, out.height) == (500, 250, 500, 250)
    assert math.isclose(scale_camera_info(info, header, 1000, 500).k[0], 800.0)


def test_params_file_lists_every_parameter_with_its_default(repo_root):
    import yaml
    from sim2real_perception import node_params
    data = yaml.safe_load((repo_root / 'config' / 'depth_seg.yaml').read_text())
    assert data['/**']['ros__parameters'] == node_params.defaults()


def test_label_info_is_latched_where_vision_msgs_exists(rig, context):
    vision_msgs = pytest.importorskip('vision_msgs.msg', reason='vision_msgs not installed')
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    node, h = rig()
    got = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    h.node.create_subscription(vision_msgs.LabelInfo, 'label_info', got.append, qos)
    assert h.spin_until(lambda: got)
    assert [c.class_name for c in got[0].class_map] == list(node.predictor.class_names)
