"""The inference library: any image size in, metric depth + class ids out, both backends.

Models are real exported directories (random weights, ``test`` preset); the ONNX one comes
from the session's CLI export. Broken files must fail with ModelLoadError naming the file,
and nothing is ever unpickled.
"""
import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from margins import assert_labels_agree, for_predictor, Reference
from sim2real_perception import labels as label_set
from sim2real_perception.model_io import ModelLoadError
from sim2real_perception.predictor import (InputImageError, Predictor, resize_to_model,
                                           resolve_model_path)
from test_node_support import make_model_dir, onnx_model, test_image  # noqa: F401

SKY = label_set.CLASS_NAMES.index('sky')


@pytest.fixture(scope='module')
def torch_predictor(onnx_model):  # noqa: F811
    return Predictor.from_path(onnx_model[0], backend='torch', device='cpu')


@pytest.fixture(scope='module')
def ort_predictor(onnx_model):  # noqa: F811
    return Predictor.from_path(onnx_model[0], backend='onnxruntime', device='cpu')


@pytest.mark.parametrize('height, width', [(128, 128), (37, 53), (75, 248), (300, 90)])
def test_any_size_gives_metric_depth_and_class_ids_at_input_size(torch_predictor, height,
                                                                 width):
    pred = torch_predictor.predict(test_image(width, height, seed=width))
    assert pred.depth.shape == pred.labels.shape == (height, width)
    assert pred.depth.dtype == np.float32 and pred.labels.dtype == np.uint8
    assert pred.nan_pixels == 0 and not np.isnan(pred.depth).any()
    # +inf exactly where the model says sky (REP 117 out of range); metres elsewhere.
    np.testing.assert_array_equal(np.isposinf(pred.depth), pred.labels == SKY)
    finite = pred.depth[np.isfinite(pred.depth)]
    assert finite.size and finite.min() >= 0.5 - 1e-4 and finite.max() <= 80.0 + 1e-3
    # Nearest-neighbour resizing: only ids the model produced, never blends.
    assert set(np.unique(pred.labels)) <= set(np.unique(pred.small_labels))
    assert pred.labels.max() < label_set.NUM_CLASSES
    np.testing.assert_array_equal(pred.color, label_set.PALETTE[pred.labels])
    for stage in ('preprocess_ms', 'inference_ms', 'postprocess_ms'):
        assert pred.timings[stage] >= 0


def test_model_size_input_is_not_resized(torch_predictor):
    pred = torch_predictor.predict(test_image(128, 128))
    np.testing.assert_array_equal(pred.labels, pred.small_labels)


def test_sky_as_infinity_false_keeps_network_depth(onnx_model):  # noqa: F811
    predictor = Predictor.from_path(onnx_model[0], backend='torch', device='cpu',
                                    sky_as_infinity=False)
    pred = predictor.predict(test_image(64, 48))
    assert np.isfinite(pred.depth).all()


@pytest.fixture(scope='module')
def reference(onnx_model):  # noqa: F811
    return Reference(onnx_model[0])


def test_batch_equals_single_images(torch_predictor, reference):
    images = [test_image(60, 40, seed=1), test_image(200, 70, seed=3)]
    batch = torch_predictor.predict_batch(images)
    assert len(batch) == 2 and torch_predictor.predict_batch([]) == []
    for img, got in zip(images, batch):
        one = torch_predictor.predict(img)
        assert got.depth.shape == img.shape[:2]
        want, ambiguous = for_predictor(torch_predictor, reference, img)
        assert_labels_agree(got.labels, want, ambiguous, what='batched')
        assert_labels_agree(one.labels, want, ambiguous, what='single')
        both = np.isfinite(got.depth) & np.isfinite(one.depth)
        np.testing.assert_allclose(got.depth[both], one.depth[both], atol=1e-3)


def test_onnxruntime_and_torch_agree_on_a_kitti_sized_frame(torch_predictor, ort_predictor,
                                                            reference):
    assert ort_predictor.backend == 'onnxruntime' and torch_predictor.backend == 'torch'
    assert 'CPUExecutionProvider' in ort_predictor.description
    rgb = test_image(1242, 375, seed=7)
    a, b = torch_predictor.predict(rgb), ort_predictor.predict(rgb)
    assert b.depth.shape == (375, 1242)
    want, ambiguous = for_predictor(torch_predictor, reference, rgb)
    assert_labels_agree(a.labels, want, ambiguous, what='torch')
    assert_labels_agree(b.labels, want, ambiguous, what='onnxruntime')
    both = np.isfinite(a.depth) & np.isfinite(b.depth)
    assert np.abs(a.depth[both] - b.depth[both]).max() < 1e-2


def test_auto_backend_picks_onnxruntime_only_when_model_onnx_exists(onnx_model, tmp_path):  # noqa: F811,E501
    assert Predictor.from_path(onnx_model[0], device='cpu').backend == 'onnxruntime'
    no_onnx = tmp_path / 'no_onnx'
    no_onnx.mkdir()
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(onnx_model[0] / name, no_onnx / name)
    assert Predictor.from_path(no_onnx, device='cpu').backend == 'torch'
    with pytest.raises(ModelLoadError, match='python -m sim2real_perception.onnx_export'):
        Predictor.from_path(no_onnx, backend='onnxruntime', device='cpu')


def test_model_path_may_name_the_directory_config_weights_or_onnx(onnx_model):  # noqa: F811
    model_dir = onnx_model[0]
    assert resolve_model_path(model_dir) == (model_dir, model_dir / 'model.onnx')
    assert resolve_model_path(model_dir / 'config.json')[0] == model_dir
    assert resolve_model_path(model_dir / 'model.safetensors')[0] == model_dir
    assert resolve_model_path(model_dir / 'model.onnx') == (model_dir,
                                                            model_dir / 'model.onnx')
    pred = Predictor.from_path(model_dir / 'model.onnx', device='cpu')
    assert pred.backend == 'onnxruntime'


def test_bad_options_and_images_are_refused(torch_predictor, onnx_model):  # noqa: F811
    with pytest.raises(ValueError, match='backend must be one of'):
        Predictor.from_path(onnx_model[0], backend='tensorrt')
    with pytest.raises(ValueError, match='device must be one of'):
        Predictor.from_path(onnx_model[0], device='gpu')
    with pytest.raises(ValueError, match='needs a CUDA device'):
        Predictor.from_path(onnx_model[0], backend='torch', device='cpu', precision='fp16')
    for bad, match in ((np.zeros((10, 10, 3), np.float32), 'uint8'),
                       (np.zeros((10, 10), np.uint8), 'HxWx3'),
                       (np.zeros((10, 10, 4), np.uint8), 'HxWx3'),
                       (np.zeros((0, 10, 3), np.uint8), 'empty image')):
        with pytest.raises(InputImageError, match=match):
            torch_predictor.predict(bad)


def _copy_model(src, dst):
    dst.mkdir()
    for p in Path(src).iterdir():
        shutil.copy(p, dst / p.name)
    return dst


def test_broken_model_files_fail_naming_the_file(onnx_model, tmp_path):  # noqa: F811
    src = onnx_model[0]
    with pytest.raises(ModelLoadError, match='model path not found'):
        Predictor.from_path(tmp_path / 'missing')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=str(empty / 'config.json')):
        Predictor.from_path(empty)

    corrupt = _copy_model(src, tmp_path / 'corrupt_weights')
    (corrupt / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{junk')
    with pytest.raises(ModelLoadError, match=str(corrupt / 'model.safetensors')):
        Predictor.from_path(corrupt, backend='torch')

    bad_onnx = _copy_model(src, tmp_path / 'corrupt_onnx')
    (bad_onnx / 'model.onnx').write_bytes(b'definitely not protobuf' * 3)
    with pytest.raises(ModelLoadError, match=str(bad_onnx / 'model.onnx')):
        Predictor.from_path(bad_onnx, device='cpu')

    other_size = _copy_model(src, tmp_path / 'other_size')
    config = json.loads((other_size / 'config.json').read_text())
    config['model']['width'] = 256
    (other_size / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match='does not match'):
        Predictor.from_path(other_size, backend='onnxruntime', device='cpu')

    lonely = tmp_path / 'lonely'
    lonely.mkdir()
    shutil.copy(src / 'model.onnx', lonely / 'model.onnx')
    with pytest.raises(ModelLoadError, match='needs its config.json'):
        Predictor.from_path(lonely / 'model.onnx')


class _Trap:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_posing_as_weights_is_never_unpickled(onnx_model, tmp_path):  # noqa: F811
    marker = tmp_path / 'pwned'
    trap = _copy_model(onnx_model[0], tmp_path / 'trap')
    (trap / 'model.onnx').unlink()
    (trap / 'model.safetensors').write_bytes(pickle.dumps({'w': _Trap(marker)}))
    with pytest.raises(ModelLoadError, match='model.safetensors'):
        Predictor.from_path(trap, backend='torch', device='cpu')
    assert not marker.exists()


@pytest.mark.parametrize('src, dst', [((1242, 375), (256, 128)), ((640, 192), (256, 128)),
                                      ((1920, 1080), (256, 256)), ((300, 140), (256, 128)),
                                      ((512, 256), (256, 128)), ((200, 100), (256, 128))])
def test_resize_to_model_is_close_to_inter_area(src, dst):
    w, h = src
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(src[0])
    # Camera-like: smooth shading, edges and mild noise.
    scene = (80 + 0.1 * xx + 40 * (xx % 97 < 30) + 30 * (yy > h // 2))[..., None] + \
        rng.normal(0, 3, (h, w, 3))
    # Adversarial: texture near the Nyquist limit plus strong noise, where aliasing shows.
    texture = (127 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0))[..., None] + \
        rng.normal(0, 12, (h, w, 3))
    for image, bound, vs_linear in ((scene, 1.0, 2.0), (texture, 3.0, 2.5)):
        image = np.clip(image, 0, 255).astype(np.uint8)
        got = resize_to_model(image, *dst)
        ref = cv2.resize(image, dst, interpolation=cv2.INTER_AREA).astype(np.int16)
        assert got.shape == ref.shape == (dst[1], dst[0], 3) and got.dtype == np.uint8
        diff = np.abs(got - ref).mean()
        assert diff < bound, (diff, bound)
        if src[0] >= 2 * dst[0]:  # plain bilinear shrinking is far worse
            lin = np.abs(cv2.resize(image, dst, interpolation=cv2.INTER_LINEAR) - ref).mean()
            assert diff <= lin / vs_linear, (diff, lin)


def test_colorize_is_the_palette_lookup():
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 256, (375, 1242)).astype(np.uint8)
    np.testing.assert_array_equal(label_set.colorize(lab), label_set.PALETTE[lab])
    strided = lab[::2, ::3]  # not contiguous
    np.testing.assert_array_equal(label_set.colorize(strided), label_set.PALETTE[strided])
    assert label_set.colorize(np.zeros((0, 4), np.uint8)).shape == (0, 4, 3)


def test_one_predictor_serves_two_threads_with_different_sizes(torch_predictor):
    # The node's output thread and a direct predict() call may share a predictor.
    import threading
    errors = []

    def run(width, height):
        try:
            for seed in range(12):
                pred = torch_predictor.predict(test_image(width, height, seed=seed))
                assert pred.depth.shape == (height, width)
                np.testing.assert_array_equal(np.isposinf(pred.depth), pred.labels == SKY)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=size) for size in ((53, 37), (248, 75))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_sim2real_threads_sets_onnxruntime_intra_op_threads(onnx_model, monkeypatch):  # noqa: F811,E501
    """ONNX Runtime ignores OMP_NUM_THREADS; $SIM2REAL_THREADS reaches its session."""
    monkeypatch.setenv('SIM2REAL_THREADS', '1')
    pred = Predictor.from_path(onnx_model[0], backend='onnxruntime', device='cpu')
    assert pred.runner.session.get_session_options().intra_op_num_threads == 1
    # An explicit value wins over the environment.
    pred = Predictor.from_path(onnx_model[0], backend='onnxruntime', device='cpu', threads=2)
    assert pred.runner.session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv('SIM2REAL_THREADS', 'two')
    with pytest.raises(ValueError, match='SIM2REAL_THREADS'):
        Predictor.from_path(onnx_model[0], backend='onnxruntime', device='cpu')
