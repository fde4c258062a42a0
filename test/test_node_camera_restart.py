"""A camera process killed and started again while depth_seg_node keeps running.

Three processes over loopback DDS, as on a robot: the console-script node, a camera driver
(``test/test_node_support.py`` run as a script: 1242x375 rgb8, best effort, the large
shared-memory profile) and this test listening to the node's outputs. The camera is
SIGKILLed mid-stream (no clean DDS goodbye) and a new camera process starts; the node must
answer its frames within 2 s of the first one, without being restarted.
"""
import os
import re
import subprocess
import sys
import time

from sensor_msgs.msg import Image

from test_node_process import (console_command, diag_values, node_env, NodeProcess,  # noqa: F401
                               PROFILE, REPO, start_node, wait_for_node)
from test_node_support import Harness, RELIABLE

FIRST = {'old': 1000, 'new': 500}  # the new camera's stamps restart lower, like a reboot


def camera(topic, first_stamp, log_path):
    """Start a camera driver process streaming 1242x375 frames at 10 Hz."""
    log = open(log_path, 'w')
    proc = subprocess.Popen(
        [sys.executable, str(REPO / 'test' / 'test_node_support.py'), '--topic', topic,
         '--width', '1242', '--height', '375', '--count', '100000', '--period', '0.1',
         '--first-stamp', str(first_stamp)],
        env=dict(node_env(), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE)), stdout=log,
        stderr=subprocess.STDOUT, text=True)
    proc.log, proc.log_path = log, log_path
    return proc


def first_frame_time(cam, timeout=60.0):
    """Wall-clock time the camera process published its first frame (it prints it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(r'first frame published at ([0-9.]+)', cam.log_path.read_text())
        if found:
            return float(found[1])
        assert cam.poll() is None, cam.log_path.read_text()
        time.sleep(0.05)
    raise AssertionError(f'camera never published: {cam.log_path.read_text()}')


def test_node_answers_a_restarted_camera_within_2_s(start_node, model_dir, context,  # noqa: F811
                                                    tmp_path):
    ns = f'camrestart{os.getpid()}'
    topic = f'/{ns}/camera/image_raw'
    node = start_node(model_dir, '-p', 'diagnostics_period:=0.5', image_topic=topic,
                      backend='torch', device='cpu', namespace=ns)
    h = Harness(context, namespace=f'/{ns}', image_topic=topic)
    answered = {}  # stamp sec -> wall-clock time of the depth answer
    h.node.create_subscription(
        Image, f'/{ns}/depth', lambda m: answered.setdefault(m.header.stamp.sec, time.time()),
        RELIABLE)
    cams = []
    try:
        wait_for_node(h, node)
        pid = node.proc.pid

        def new_answers(first):
            return [s for s in answered if first <= s < first + 100000]

        cams.append(camera(topic, FIRST['old'], tmp_path / 'camera_old.log'))
        assert h.spin_until(lambda: len(new_answers(FIRST['old'])) >= 3, timeout=60), \
            node.output() + cams[0].log_path.read_text()
        cams[0].kill()  # SIGKILL: the camera vanishes without leaving the DDS graph
        cams[0].wait()
        h.spin_until(lambda: False, timeout=1.0)
        before = int(diag_values(h)['processed'])

        cams.append(camera(topic, FIRST['new'], tmp_path / 'camera_new.log'))
        t_first = first_frame_time(cams[1])
        assert h.spin_until(lambda: new_answers(FIRST['new']), timeout=30), \
            f'no answer to the restarted camera\n{node.output()}'
        delay = min(answered[s] for s in new_answers(FIRST['new'])) - t_first
        assert delay <= 2.0, f'first answer {delay:.2f} s after the first new frame'
        # Same node process all along, still serving, nothing failed.
        assert h.spin_until(lambda: len(new_answers(FIRST['new'])) >= 5, timeout=30)
        assert node.proc.poll() is None and node.proc.pid == pid
        assert h.spin_until(lambda: int(diag_values(h).get('processed', 0)) > before + 3,
                            timeout=10)
        assert diag_values(h)['failed'] == '0'
    finally:
        for cam in cams:
            cam.kill()
            cam.wait()
            cam.log.close()
        h.close()
    assert node.stop(timeout=60.0) == 0, node.output()  # a clean Ctrl-C exit
