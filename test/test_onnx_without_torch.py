"""An ONNX Runtime deployment needs no torch: the ONNX path imports neither torch nor safetensors.

A robot running ``backend: onnxruntime`` has only numpy, OpenCV, onnxruntime and the ROS
packages (docs/node.md, "Minimal robot install"). Each test runs in a subprocess whose
``sitecustomize`` (first on PYTHONPATH) makes importing torch, safetensors or onnx fail and
writes every attempt to a file: the predictor and the console-script node must work there
and attempt none of them.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_node_process import console_command, node_env, NodeProcess
from test_node_support import Harness, onnx_model, test_image  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BLOCKED = ('torch', 'safetensors', 'onnx')

SITECUSTOMIZE = textwrap.dedent('''
    """Test blocker: importing torch, safetensors or onnx fails, and is written down."""
    import os
    import sys

    BLOCKED = {blocked!r}


    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                with open(os.environ['IMPORT_ATTEMPTS'], 'a') as fh:
                    fh.write(name + '\\n')
                raise ModuleNotFoundError(f'No module named {{name!r}} (blocked)', name=name)
            return None


    sys.meta_path.insert(0, _Blocker())
''').format(blocked=BLOCKED)


@pytest.fixture
def no_torch_env(tmp_path):
    site = tmp_path / 'blocker'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    attempts = tmp_path / 'import_attempts.txt'
    attempts.write_text('')
    env = node_env(PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
                   IMPORT_ATTEMPTS=str(attempts))
    return env, attempts


def test_the_blocker_blocks(no_torch_env):
    env, attempts = no_torch_env
    proc = subprocess.run([sys.executable, '-c', 'import torch'], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and 'blocked' in proc.stderr
    assert attempts.read_text().split() == ['torch']


def test_predictor_runs_onnx_without_importing_torch(no_torch_env, onnx_model):  # noqa: F811
    env, attempts = no_torch_env
    script = textwrap.dedent(f'''
        import sys
        import numpy as np
        from sim2real_perception.predictor import Predictor
        for backend in ('onnxruntime', 'auto'):
            pred = Predictor.from_path({str(onnx_model[0])!r}, backend=backend)
            assert pred.backend == 'onnxruntime', pred.backend
            out = pred.predict(np.full((75, 124, 3), 90, np.uint8))
            assert out.depth.shape == (75, 124) and out.labels.max() < 12
        import sim2real_perception.depth_seg_node  # the node module too
        loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({BLOCKED!r}))
        assert not loaded, loaded
        print('ok')
    ''')
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stdout + proc.stderr
    assert attempts.read_text() == ''


def test_console_script_node_serves_onnx_without_torch(no_torch_env, onnx_model,  # noqa: F811
                                                       context, tmp_path):
    env, attempts = no_torch_env
    ns = f'notorch{os.getpid()}'
    node = NodeProcess(console_command(onnx_model[0], backend='onnxruntime', device='cpu',
                                       namespace=ns), tmp_path / 'node.log', env=env)
    h = Harness(context, namespace=f'/{ns}')
    try:
        assert h.spin_until(lambda: node.proc.poll() is None and h.matched(), timeout=60), \
            node.output()
        assert h.send_until(lambda: h.send(test_image(96, 64), 'rgb8', stamp=(3, 0)),
                            lambda: h.received['depth'] and h.received['segmentation']), \
            node.output()
        assert h.received['depth'][0].width == 96
    finally:
        h.close()
    assert node.stop() == 0, node.output()
    assert 'onnxruntime' in node.output()
    assert attempts.read_text() == '', node.output()
