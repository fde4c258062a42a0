"""A real ``colcon build`` of the package, plain and ``--symlink-install``, and its install space.

colcon-core, colcon-ros, colcon-python-setup-py, colcon-package-selection, colcon-bash and
ament_package install from PyPI (requirements.txt), so this is the build a ROS user runs:
the package is copied into ``src/`` of a temporary workspace and built with
``colcon build --packages-select sim2real_perception``. The build must write nothing to
stderr, the install space must have the ament layout, and the installed ``depth_seg_node``,
started from the install space after ``source install/local_setup.bash``, must answer one
image over loopback DDS and stop cleanly on SIGINT.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_node_support import Harness, test_image

REPO = Path(__file__).resolve().parent.parent
PACKAGE = 'sim2real_perception'
#: Never part of a source checkout: local environments, outputs, build products.
IGNORE = shutil.ignore_patterns('.git', '.venv', 'outputs', '__pycache__', '*.egg-info',
                                '.pytest_cache', 'build', 'install', 'log', 'results')


def colcon_env(tmp):
    """Return the environment of a user's shell: no workspace sourced, bytecode compiled."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('COLCON_', 'AMENT_', 'PYTHONDONTWRITEBYTECODE'))}
    env.pop('PYTHONPATH', None)
    env['COLCON_HOME'] = str(tmp / 'colcon_home')  # no user defaults / mixins
    return env


@pytest.fixture(scope='module', params=['plain', 'symlink'])
def workspace(request, tmp_path_factory):
    ws = tmp_path_factory.mktemp(f'ws_{request.param}')
    shutil.copytree(REPO, ws / 'src' / PACKAGE, ignore=IGNORE)
    cmd = [sys.executable, '-m', 'colcon', 'build', '--packages-select', PACKAGE]
    if request.param == 'symlink':
        cmd.append('--symlink-install')
    proc = subprocess.run(cmd, cwd=ws, env=colcon_env(ws), capture_output=True, text=True,
                          timeout=300)
    return request.param, ws, proc


def test_build_succeeds_without_stderr_output(workspace):
    _, ws, proc = workspace
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == '', proc.stderr
    assert 'stderr output' not in proc.stdout, proc.stdout
    assert f'Finished <<< {PACKAGE}' in proc.stdout
    assert (ws / 'log' / 'latest_build' / PACKAGE / 'stderr.log').read_text() == ''


def test_install_layout(workspace):
    kind, ws, proc = workspace
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = ws / 'install' / PACKAGE
    share = prefix / 'share' / PACKAGE
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE).is_file()
    assert (share / 'package.xml').is_file()
    assert (share / 'launch' / 'depth_seg.launch.py').is_file()
    for name in ('depth_seg.yaml', 'fastdds_large_shm.xml'):
        assert (share / 'config' / name).is_file(), name
    script = prefix / 'lib' / PACKAGE / 'depth_seg_node'
    assert os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == f'#!{sys.executable}'
    assert (ws / 'install' / 'local_setup.bash').is_file()
    assert (share / 'package.bash').is_file()
    src = ws / 'src' / PACKAGE
    launch = share / 'launch' / 'depth_seg.launch.py'
    if kind == 'symlink':  # edits in src/ take effect without a rebuild
        assert launch.is_symlink()
        assert launch.resolve() == (src / 'launch' / 'depth_seg.launch.py').resolve()
    else:
        assert not launch.is_symlink()
        assert launch.read_bytes() == (src / 'launch' / 'depth_seg.launch.py').read_bytes()


def test_installed_node_answers_over_dds(workspace, model_dir, context, tmp_path):
    kind, ws, proc = workspace
    assert proc.returncode == 0, proc.stdout + proc.stderr
    share = ws / 'install' / PACKAGE / 'share' / PACKAGE
    ns = f'colcon_{kind}_{os.getpid()}'
    node_cmd = (f'exec {ws}/install/{PACKAGE}/lib/{PACKAGE}/depth_seg_node --ros-args '
                f'-r __ns:=/{ns} --params-file {share}/config/depth_seg.yaml '
                f'-p model_path:={model_dir} -p backend:=torch -p device:=cpu')
    env = colcon_env(ws) | {'PYTHONUNBUFFERED': '1', 'RCUTILS_LOGGING_BUFFERED_STREAM': '0',
                            'OMP_NUM_THREADS': '1'}
    for var in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                'RMW_IMPLEMENTATION'):
        env.pop(var, None)
    log = tmp_path / 'node.log'
    with open(log, 'wb') as out:
        node = subprocess.Popen(
            ['bash', '-c', f'source {ws}/install/local_setup.bash && {node_cmd}'],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    h = Harness(context, namespace=f'/{ns}')
    try:
        assert h.spin_until(lambda: node.poll() is None and h.matched(), timeout=60), \
            log.read_text()
        assert h.send_until(lambda: h.send(test_image(64, 48), 'rgb8', stamp=(5, 1)),
                            lambda: h.received['depth'] and h.received['segmentation']), \
            log.read_text()
        depth = h.received['depth'][0]
        assert (depth.width, depth.height, depth.encoding) == (64, 48, '32FC1')
        assert (depth.header.stamp.sec, depth.header.stamp.nanosec) == (5, 1)
    finally:
        h.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    out = log.read_text()
    assert node.returncode == 0, out
    # The code that ran is the workspace's: it found its profile in the workspace
    # (install share, or src/ through the symlink install), not in this checkout.
    profile_line = next(line for line in out.splitlines() if 'Fast DDS profile' in line)
    assert str(ws) in profile_line and str(REPO / 'config') not in profile_line, out
