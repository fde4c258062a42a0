"""ONNX export: one self-contained file, dynamic batch, and real ONNX Runtime parity with torch.

The export runs once per session through the command's ``main`` (fixture ``onnx_model``).
"""
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from margins import assert_labels_agree, Reference
from sim2real_perception import onnx_export
from sim2real_perception.model_io import load_depth_seg_net
from test_node_support import onnx_model  # noqa: F401 - session fixture

PARITY = re.compile(r'parity torch vs onnxruntime on (\d+) images: max depth error '
                    r'([0-9.]+) m, identical labels ([0-9.]+)%')


def test_cli_writes_one_file_and_prints_the_parity_check(onnx_model):  # noqa: F811
    model_dir, rc, printed = onnx_model
    assert rc == 0, printed
    assert f'wrote {model_dir / "model.onnx"}' in printed
    match = PARITY.search(printed)
    assert match, printed
    images, max_err, same = int(match[1]), float(match[2]), float(match[3])
    assert images == 4 and max_err < 1e-3 and same >= 99.0
    # external_data=False: every weight inside model.onnx, no side files.
    assert sorted(p.name for p in model_dir.iterdir()) == \
        ['config.json', 'model.onnx', 'model.safetensors']
    proto = onnx.load(str(model_dir / 'model.onnx'), load_external_data=False)
    assert proto.graph.initializer
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    onnx.checker.check_model(proto)


def test_graph_takes_uint8_nhwc_with_a_dynamic_batch(onnx_model):  # noqa: F811
    model_dir, _, _ = onnx_model
    proto = onnx.load(str(model_dir / 'model.onnx'))
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == 'image' and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [128, 128, 3]
    outputs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert outputs == {'depth': onnx.TensorProto.FLOAT, 'labels': onnx.TensorProto.UINT8}


@pytest.mark.parametrize('batch', [1, 3])
def test_onnxruntime_session_matches_torch(onnx_model, batch):  # noqa: F811
    model_dir, _, _ = onnx_model
    net, _ = load_depth_seg_net(model_dir)
    images = onnx_export.parity_images(128, 128, count=batch, seed=batch)
    with torch.inference_mode():
        t_depth, t_labels = (t.numpy() for t in net(torch.from_numpy(images)))
    session = ort.InferenceSession(str(model_dir / 'model.onnx'),
                                   providers=['CPUExecutionProvider'])
    o_depth, o_labels = session.run(None, {'image': images})
    assert o_depth.shape == t_depth.shape == (batch, 128, 128)
    assert o_depth.dtype == np.float32 and o_labels.dtype == np.uint8
    assert np.isfinite(o_depth).all()
    max_err = float(np.abs(o_depth - t_depth).max())
    assert max_err < 1e-3, f'max depth error {max_err} m'
    # Equal labels wherever the float64 top-2 margin is clear of float32 rounding.
    want, ambiguous, _ = Reference(net)(images)
    assert_labels_agree(t_labels, want, ambiguous, what='torch')
    assert_labels_agree(o_labels, want, ambiguous, what='onnxruntime')


def test_missing_model_is_reported_with_its_path(tmp_path, capsys):
    assert onnx_export.main(['--model', str(tmp_path / 'nowhere')]) == 2
    assert str(tmp_path / 'nowhere') in capsys.readouterr().err


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        onnx_export.main(['--help'])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ('--model', '--out', '--opset', '--check-images'):
        assert option in text
