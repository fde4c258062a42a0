"""Start-up with a model directory that changes under it: one export's model or a clear error.

A second process exports two different models (other weights, other ``max_depth``) into the
same directory again and again with ``export_model_dir``, as a training run re-exporting
would, while this process loads it the way ``depth_seg_node`` does
(``Predictor.from_path``). Every load must give model A or model B exactly, or raise a
ModelLoadError saying the directory is being rewritten; never config of one and weights of
the other. A ``model.onnx`` left over from an earlier export is refused by name.
"""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sim2real_perception import model_io
from sim2real_perception.model_io import export_model_dir, ModelLoadError
from sim2real_perception.predictor import Predictor
from test_node_support import onnx_model, test_image  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
LOADS = 40  # without the handling about a third of the loads mix (39 of 120)

WRITER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import torch
    sys.path.insert(0, {repo!r})
    from sim2real_perception.config import load_config
    from sim2real_perception.model import build_model
    from sim2real_perception.model_io import export_model_dir

    def net(seed, max_depth):
        cfg = dict(load_config('test')['model'], max_depth=max_depth)
        torch.manual_seed(seed)
        return build_model(cfg).eval()

    nets = [net(1, 80.0), net(2, 40.0)]
    target, ready, stop = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    n = 0
    while not stop.exists():
        export_model_dir(nets[n % 2], target)
        n += 1
        time.sleep(0.002)  # leave the loader some CPU
        if n == 2:
            ready.write_text('')
    print(n)
''').format(repo=str(REPO))


def _model(seed, max_depth):
    import torch
    from sim2real_perception.config import load_config
    from sim2real_perception.model import build_model
    cfg = dict(load_config('test')['model'], max_depth=max_depth)
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _close(a, b):
    both = np.isfinite(a) & np.isfinite(b)
    return (np.array_equal(np.isfinite(a), np.isfinite(b))
            and np.allclose(a[both], b[both], rtol=1e-4, atol=1e-4))


def test_loading_while_an_export_is_rewritten_gives_one_model_or_a_clear_error(tmp_path):
    refs = {}
    for name, seed, max_depth in (('A', 1, 80.0), ('B', 2, 40.0)):
        path = export_model_dir(_model(seed, max_depth), tmp_path / name)
        refs[name] = Predictor.from_path(path, backend='torch', device='cpu')
    image = test_image(160, 96, seed=3)
    ref_depth = {name: p.predict(image).depth for name, p in refs.items()}
    assert not _close(ref_depth['A'], ref_depth['B'])  # the two exports are told apart

    target, ready, stop = tmp_path / 'live', tmp_path / 'ready', tmp_path / 'stop'
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(target), str(ready),
                               str(stop)], stdout=subprocess.PIPE, text=True)
    seen = {'A': 0, 'B': 0, 'error': 0}
    mixed = []
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert writer.poll() is None and time.monotonic() < deadline, 'writer failed'
            time.sleep(0.05)
        for _ in range(LOADS):
            try:
                pred = Predictor.from_path(target, backend='torch', device='cpu')
            except ModelLoadError as exc:
                assert 'being rewritten' in str(exc) and str(target) in str(exc), exc
                seen['error'] += 1
                continue
            depth = pred.predict(image).depth
            match = [name for name, ref in ref_depth.items() if _close(depth, ref)]
            if len(match) == 1:
                seen[match[0]] += 1
            else:
                mixed.append(pred.model_config.max_depth)
    finally:
        stop.write_text('')
        exports = int(writer.communicate(timeout=60)[0])
    print(f'{LOADS} loads during {exports} exports: {seen}, {len(mixed)} mixed')
    assert not mixed, f'{len(mixed)} of {LOADS} loads mixed the two exports ({seen})'
    assert seen['A'] + seen['B'] > 0 and exports > LOADS


def test_a_stale_model_onnx_is_refused_naming_it(onnx_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(model_io, 'SETTLE_SECONDS', 0.3)
    stale = tmp_path / 'stale'
    stale.mkdir()
    (stale / 'model.onnx').write_bytes((onnx_model[0] / 'model.onnx').read_bytes())
    export_model_dir(_model(5, 80.0), stale)  # new weights + config, old graph
    with pytest.raises(ModelLoadError, match='model.onnx was exported from other weights'):
        Predictor.from_path(stale, backend='onnxruntime', device='cpu')
    # The graph that belongs to the weights loads (its metadata names them).
    fresh = tmp_path / 'fresh'
    fresh.mkdir()
    for name in ('config.json', 'model.safetensors', 'model.onnx'):
        (fresh / name).write_bytes((onnx_model[0] / name).read_bytes())
    assert Predictor.from_path(fresh, backend='onnxruntime', device='cpu').backend == \
        'onnxruntime'
