"""depth_seg_node as a separate process, started through its console script with the YAML file.

The command line is the one ``launch/depth_seg.launch.py`` documents (its ``node_command``),
so these tests run exactly what the launch file starts. A camera process publishes
1242x375 frames to show the Fast DDS large shared-memory profile at work; bad frames, a
NaN-producing model and broken model files check the failure behaviour from outside.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from sensor_msgs.msg import CameraInfo, Image

from test_node_support import Harness, test_image

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / 'config' / 'depth_seg.yaml'
PROFILE = REPO / 'config' / 'fastdds_large_shm.xml'
SCRIPT = Path(sys.executable).parent / 'depth_seg_node'


def load_launch_module():
    spec = importlib.util.spec_from_file_location('depth_seg_launch',
                                                  REPO / 'launch' / 'depth_seg.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def console_command(model_path, **kwargs):
    """Return the launch file's node as a console-script command (module fallback)."""
    exe = str(SCRIPT) if SCRIPT.is_file() else 'depth_seg_node'
    cmd = load_launch_module().node_command(PARAMS, str(model_path), executable=exe, **kwargs)
    if not SCRIPT.is_file():
        cmd[:1] = [sys.executable, '-m', 'sim2real_perception.depth_seg_node']
    return cmd


def node_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0',
               OMP_NUM_THREADS='1', **extra)
    for var in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE'):
        env.pop(var, None)  # the console script must apply the shipped profile itself
    env.pop('RMW_IMPLEMENTATION', None)
    return env


class NodeProcess:
    """A console-script node whose combined output goes to a log file."""

    def __init__(self, cmd, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env or node_env(), cwd=REPO)

    def output(self):
        return self.log_path.read_text(errors='replace')

    def stop(self, timeout=15.0):
        """Ctrl-C the node like a user would; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path):
    started = []

    def start(model_path, *extra, **kwargs):
        cmd = console_command(model_path, **kwargs) + list(extra)
        node = NodeProcess(cmd, tmp_path / f'node{len(started)}.log')
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def wait_for_node(h, node):
    ok = h.spin_until(lambda: node.proc.poll() is None and h.matched(), timeout=40)
    assert ok, f'node process not discovered:\n{node.output()}'


def diag_values(h):
    values = {}
    for array in h.diagnostics:
        for status in array.status:
            if 'depth_seg_node' in status.name:
                values = {kv.key: kv.value for kv in status.values} | {'_level': status.level}
    return values


def _bad(width, height, encoding, step, size):
    msg = Image(width=width, height=height, encoding=encoding, step=step)
    msg.data = bytes(size)
    return msg


def test_console_script_serves_1242x375_frames_across_processes_and_survives_bad_ones(
        start_node, model_dir, context):
    ns = f'proc{os.getpid()}'
    image_topic = f'/{ns}/camera/image_raw'
    node = start_node(model_dir, '-p', 'diagnostics_period:=0.3', '-p',
                      'warn_throttle_period:=60.0', '-p', 'max_input_pixels:=1000000',
                      image_topic=image_topic, backend='torch', device='cpu', namespace=ns)
    h = Harness(context, namespace=f'/{ns}', image_topic=image_topic,
                info_topic=f'/{ns}/camera/camera_info')
    try:
        wait_for_node(h, node)
        info = CameraInfo(width=640, height=400, distortion_model='plumb_bob')
        info.k = [500.0, 0, 320, 0, 500, 200, 0, 0, 1]
        info.p = [500.0, 0, 320, 0, 0, 500, 200, 0, 0, 0, 1, 0]
        bgr = np.ascontiguousarray(test_image(320, 200)[..., ::-1])

        def send():  # like a camera driver: camera_info and image, again and again
            h.info_pub.publish(info)
            h.send(bgr, 'bgr8', stamp=(42, 7), frame_id='cam')

        # Resent until answered: a best-effort reader drops samples from a writer it has
        # not matched yet, so the first frames after discovery can vanish.
        assert h.send_until(send, lambda: all(h.received.values())), node.output()
        for topic, enc, step in (('depth', '32FC1', 320 * 4), ('segmentation', 'mono8', 320),
                                 ('segmentation_color', 'rgb8', 320 * 3)):
            msg = h.received[topic][0]
            assert (msg.encoding, msg.width, msg.height, msg.step) == (enc, 320, 200, step)
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (42, 7)
            assert msg.header.frame_id == 'cam' and len(msg.data) == step * 200
        ci = h.received['depth/camera_info'][0]
        assert (ci.width, ci.height, ci.header.stamp.sec) == (320, 200, 42)
        assert ci.k[0] == pytest.approx(250.0)

        # A camera driver in a third process sends 1242x375 rgb8 frames (1.4 MB, best
        # effort). It gets the profile through the variable, as the README tells users.
        h.clear()
        camera = subprocess.run(
            [sys.executable, str(REPO / 'test' / 'test_node_support.py'), '--topic',
             image_topic, '--width', '1242', '--height', '375', '--count', '6',
             '--period', '0.3'],
            env=dict(node_env(), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE)),
            capture_output=True, text=True, timeout=90)
        assert camera.returncode == 0, camera.stderr

        def large(topic):
            return [m for m in h.received[topic] if m.width == 1242]

        assert h.spin_until(lambda: len(large('segmentation_color')) >= 2, timeout=10), \
            f'{len(large("depth"))} large frames answered\n{node.output()}'
        for topic, enc, nbytes in (('depth', '32FC1', 4), ('segmentation', 'mono8', 1),
                                   ('segmentation_color', 'rgb8', 3)):
            msg = large(topic)[-1]
            assert (msg.encoding, msg.width, msg.height) == (enc, 1242, 375)
            assert len(msg.data) == 1242 * 375 * nbytes
            assert msg.header.stamp.sec >= 1000
        assert 'fastdds_large_shm.xml (large shared-memory segment) applied' in node.output()

        # Bad frames: each counted as malformed, the node keeps serving.
        h.spin_until(lambda: False, timeout=0.7)
        processed = diag_values(h)['processed']
        assert int(processed) >= 3 and diag_values(h)['malformed'] == '0'
        h.clear()
        bad = [_bad(100, 50, 'rgb8', 200, 200 * 50),          # step shorter than a row
               _bad(100, 50, 'rgb8', 300, 300 * 50 - 7),      # truncated data
               _bad(100, 50, 'yuv422', 200, 200 * 50),        # unsupported encoding
               _bad(0, 0, 'rgb8', 0, 0),                      # 0x0
               _bad(40000, 30000, 'mono8', 40000, 64)]        # 1.2 gigapixel header
        for n, msg in enumerate(bad, start=1):
            h.image_pub.publish(msg)
            assert h.spin_until(lambda: int(diag_values(h).get('malformed', 0)) >= n), \
                node.output()
        values = diag_values(h)
        assert values['processed'] == processed and values['_level'] == b'\x02'  # ERROR
        assert not h.received['depth']
        h.send(test_image(100, 50), 'rgb8', stamp=(9, 0))
        assert h.spin_until(lambda: h.received['depth']), node.output()
        assert h.received['depth'][0].header.stamp.sec == 9
        assert h.spin_until(lambda: int(diag_values(h)['processed']) == int(processed) + 1)
        assert diag_values(h)['malformed'] == '5'
    finally:
        h.close()
    assert node.stop() == 0, node.output()
    out = node.output()
    # Five rejections, one warning line: the throttle works (the first names the problem).
    assert out.count('rejected image') == 1, out
    assert 'step 200 is smaller than one row' in out


def test_nan_weights_are_counted_published_as_nan_and_serving_goes_on(
        start_node, model_dir, context, tmp_path):
    broken = tmp_path / 'nan_model'
    broken.mkdir()
    # Hand-edited weights: the config must not name the original ones (weights_sha256).
    config = json.loads((model_dir / 'config.json').read_text())
    config.pop('weights_sha256')
    (broken / 'config.json').write_text(json.dumps(config))
    state = load_file(str(model_dir / 'model.safetensors'))
    last_depth_bias = [k for k in state if k.startswith('dec_depth.')
                       and k.endswith('.bias')][-1]
    state[last_depth_bias].fill_(float('nan'))
    save_file(state, str(broken / 'model.safetensors'))
    ns = f'nan{os.getpid()}'
    node = start_node(broken, '-p', 'diagnostics_period:=0.3', '-p',
                      'warn_throttle_period:=60.0', backend='torch', device='cpu',
                      namespace=ns)
    h = Harness(context, namespace=f'/{ns}')
    try:
        wait_for_node(h, node)
        assert h.send_until(lambda: h.send(test_image(64, 48), 'rgb8', stamp=(1, 0)),
                            lambda: h.received['depth']), node.output()
        for sec in (2, 3):
            h.send(test_image(64, 48, seed=sec), 'rgb8', stamp=(sec, 0))
            assert h.spin_until(lambda: any(m.header.stamp.sec == sec
                                            for m in h.received['depth'])), node.output()
        for msg in h.received['depth']:
            d = np.frombuffer(msg.data, np.float32)
            assert np.isnan(d[~np.isinf(d)]).all() and np.isnan(d).any()
        labels = np.frombuffer(h.received['segmentation'][-1].data, np.uint8)
        assert labels.max() < 12  # labels come from the other (intact) decoder

        def all_counted():  # every processed frame counted as NaN, none failed or lost
            v = diag_values(h)
            return (v and v['processed'] == v['nonfinite'] and int(v['processed']) >= 3
                    and int(v['frames_in']) == int(v['processed']) + int(v['dropped']))

        assert h.spin_until(all_counted), diag_values(h)
        assert diag_values(h)['failed'] == '0'
    finally:
        h.close()
    assert node.stop() == 0
    assert node.output().count('model produced NaN depth') == 1  # throttled


def test_missing_or_corrupt_model_exits_nonzero_naming_the_file(model_dir, tmp_path):
    cases = {}
    for case in ('missing_dir', 'corrupt_safetensors', 'corrupt_onnx'):
        target = tmp_path / case
        if case == 'missing_dir':
            bad_file = target
        else:
            target.mkdir()
            for name in ('config.json', 'model.safetensors'):
                (target / name).write_bytes((model_dir / name).read_bytes())
            bad_file = target / ('model.onnx' if case == 'corrupt_onnx' else
                                 'model.safetensors')
            bad_file.write_bytes(b'\x08\x07 this is not a model ' * 10)
        backend = 'auto' if case == 'corrupt_onnx' else 'torch'  # auto picks model.onnx
        proc = subprocess.Popen(console_command(target, backend=backend, device='cpu'),
                                env=node_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        cases[case] = (proc, bad_file)
    for case, (proc, bad_file) in cases.items():
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 1, (case, out)
        assert 'cannot start' in out and str(bad_file) in out, (case, out)
