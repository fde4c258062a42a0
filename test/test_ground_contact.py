# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""Ground-contact depth: upright runs take the ground depth at their foot.

Checked by hand on small label maps, then end to end: an export with
``model.ground_contact: true`` (a mean_prior net with hand-made maps, so labels are exact)
served by the predictor on both backends and by the node over DDS.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter

from sim2real_perception.config import load_config
from sim2real_perception.depth_seg_node import DepthSegNode
from sim2real_perception.ground_contact import ground_contact_depth
from sim2real_perception.labels import CLASS_NAMES
from sim2real_perception.model import MeanPriorNet, ModelConfig
from sim2real_perception.model_io import export_model_dir
from sim2real_perception.onnx_export import export_onnx
from sim2real_perception.predictor import Predictor
from test_node_support import Harness, test_image

SKY, BUILDING, ROAD, TERRAIN, CAR, POLE = (CLASS_NAMES.index(n) for n in (
    'sky', 'building', 'road', 'terrain', 'car', 'pole'))


def test_each_upright_run_takes_the_ground_depth_below_its_foot():
    # One column per case, top row first.
    labels = np.array([
        [SKY, SKY, SKY, SKY],
        [BUILDING, BUILDING, POLE, SKY],
        [BUILDING, CAR, POLE, BUILDING],
        [CAR, CAR, POLE, BUILDING],
        [CAR, ROAD, TERRAIN, BUILDING],
        [ROAD, ROAD, TERRAIN, BUILDING],
    ], np.uint8)
    depth = np.arange(24, dtype=np.float32).reshape(6, 4) + 1.0
    out = ground_contact_depth(depth, labels)
    want = depth.copy()
    # Column 0: the car stands on the road at row 5; the building above it is hidden at
    # its foot by the car, so it keeps the network's depth; sky is never touched.
    want[3:5, 0] = depth[5, 0]
    # Column 1: the car (rows 2-3) stands on road row 4; the building above keeps its own.
    want[2:4, 1] = depth[4, 1]
    # Column 2: a pole on terrain.
    want[1:4, 2] = depth[4, 2]
    # Column 3: the building reaches the image's bottom edge: no foot seen, unchanged.
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(depth, np.arange(24, dtype=np.float32).reshape(6, 4) + 1)


def test_ground_ids_choose_what_counts_as_ground_and_shapes_must_match():
    labels = np.array([[CAR], [TERRAIN], [ROAD]], np.uint8)
    depth = np.array([[9.0], [5.0], [4.0]], np.float32)
    assert ground_contact_depth(depth, labels)[:, 0].tolist() == [5.0, 5.0, 4.0]
    # With only road as ground, terrain is an upright run on the road, and the car stands
    # on terrain, not on ground: it keeps its depth.
    assert ground_contact_depth(depth, labels, [ROAD])[:, 0].tolist() == [9.0, 4.0, 4.0]
    with pytest.raises(ValueError, match='one HxW frame'):
        ground_contact_depth(depth, labels[:2])


def _scene(height=128, width=128):
    """Return a hand-made label map (sky, buildings, cars, poles on road, terrain) + depth."""
    labels = np.full((height, width), ROAD, np.uint8)
    labels[:40] = SKY
    labels[40:80] = BUILDING
    labels[80:, :20] = TERRAIN
    labels[60:100, 30:60] = CAR          # stands on the road at row 100
    labels[50:90, 8:12] = POLE           # stands on terrain at row 90
    labels[70:85, 90:100] = CAR          # a second car, in front of the buildings
    yy = np.mgrid[0:height, 0:width][0]
    depth = (80.0 - yy * 0.5).astype(np.float32)   # nearer lower down, as on a road
    return depth, labels


@pytest.fixture(scope='module')
def contact_model(tmp_path_factory):
    """Export :func:`_scene` as a mean_prior net (with ONNX) with ``ground_contact: true``."""
    cfg = ModelConfig.from_dict({**load_config('test')['model'], 'architecture': 'mean_prior',
                                 'ground_contact': True})
    depth, labels = _scene(cfg.height, cfg.width)
    net = MeanPriorNet(cfg, torch.from_numpy(depth), torch.from_numpy(labels))
    out = export_model_dir(net, tmp_path_factory.mktemp('contact') / 'model')
    export_onnx(out)
    return out, depth, labels


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_the_predictor_applies_the_exports_ground_contact(contact_model, backend):
    path, depth, labels = contact_model
    want = ground_contact_depth(depth, labels)
    assert not np.allclose(want, depth)   # the scene has runs to move
    image = test_image(128, 128)
    got = Predictor.from_path(path, backend=backend, device='cpu', sky_as_infinity=False)
    assert got.ground_contact
    pred = got.predict(image)
    np.testing.assert_array_equal(pred.labels, labels)
    np.testing.assert_allclose(pred.depth, want, rtol=1e-6)
    # The car at columns 30-59 stands on road row 100: all of it at that row's depth.
    np.testing.assert_allclose(pred.depth[60:100, 30:60], depth[100, 30], rtol=1e-6)
    plain = Predictor.from_path(path, backend=backend, device='cpu', sky_as_infinity=False,
                                ground_contact=False).predict(image)
    np.testing.assert_allclose(plain.depth, depth, rtol=1e-6)
    # At another size the contact depth is taken at the model size, then resized.
    big = got.predict(test_image(256, 200))
    np.testing.assert_allclose(big.depth, got.postprocess(want, labels, (200, 256))[0],
                               rtol=1e-6)


@pytest.mark.parametrize('param', ['model', 'false'])
def test_the_node_publishes_ground_contact_depth(context, contact_model, param):
    path, depth, labels = contact_model
    ns = f'/contact_{param}'
    node = DepthSegNode(context=context, namespace=ns, parameter_overrides=[
        Parameter('model_path', value=str(path)), Parameter('backend', value='onnxruntime'),
        Parameter('device', value='cpu'), Parameter('log_period', value=0.0),
        Parameter('ground_contact', value=param)])
    harness = Harness(context, namespace=ns)
    harness.add_node(node)
    try:
        assert harness.wait_for_subscriber()
        img = test_image(128, 128, seed=3)
        assert harness.send_until(lambda: harness.send(img, 'rgb8'),
                                  lambda: harness.received['depth'])
        msg = harness.received['depth'][0]
        got = np.frombuffer(bytes(msg.data), np.float32).reshape(128, 128)
        # ground_contact: model -> as the export says (on); false -> the network's depth.
        want = ground_contact_depth(depth, labels) if param == 'model' else depth.copy()
        want[labels == SKY] = np.inf   # the node marks sky as +inf (REP 117)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    finally:
        harness.close()
        node.destroy_node()


def test_bench_ground_contact_times_both_settings(contact_model, tmp_path):
    import json
    import sys
    import cv2
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))
    import bench_ground_contact
    frames = tmp_path / 'kitti' / 'drive_0001' / 'image_02' / 'data'
    frames.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(frames / f'{i:010d}.png'), test_image(160, 96, seed=i))
    out = tmp_path / 'time.json'
    assert bench_ground_contact.main(['--model', str(contact_model[0]), '--data',
                                      str(tmp_path), '--backend', 'torch', '--out',
                                      str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['frames'] == 3 and result['frame_size'] == [96, 160]
    assert set(result['postprocess_ms_median']) == {'off', 'on'}
    assert all(v >= 0 for v in result['postprocess_ms_median'].values())
    with pytest.raises(SystemExit, match='no .*image_02'):
        bench_ground_contact.main(['--model', str(contact_model[0]), '--data',
                                   str(tmp_path / 'nothing'), '--out', str(out)])
