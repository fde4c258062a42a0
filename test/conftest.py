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
