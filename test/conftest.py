"""Test-wide setup, run before any test module imports rclpy.

DDS must never leave loopback, and parallel test runs must not hear each other.
"""
import os
import sys
from pathlib import Path

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# One DDS domain per test process (0..101 are the ids whose ports fit on Linux).
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def repo_root():
    return REPO


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    """Export one random `test`-preset model per test module (node and replay tests)."""
    from test_node_support import make_model_dir
    return make_model_dir(tmp_path_factory.mktemp('model'))


@pytest.fixture(scope='module')
def context():
    """Give a test module its own rclpy context, shut down at the end."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    """Write a tiny procedural dataset (8 + 8 frames at 128x128) for short real trainings."""
    from training.data.make_procedural import generate
    out = tmp_path_factory.mktemp('procedural')
    generate(out, sim_frames=8, real_frames=8, height=128, width=128, seed=3,
             frames_per_sequence=4, workers=1)
    return out
