# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""``training.evaluate`` end to end: real KITTI files, real exported models, both backends."""
import json

import cv2
import numpy as np
import pytest
import torch

from margins import DEPTH_RTOL, METRIC_RTOL, Reference, to_size
from sim2real_perception.config import load_config
from sim2real_perception.labels import CLASS_NAMES, cityscapes_lut
from sim2real_perception.model import build_model
from sim2real_perception.model_io import export_model_dir
from sim2real_perception.onnx_export import export_onnx
from sim2real_perception.predictor import Predictor
from training.evaluate import center_crop, evaluate_model, main, parse_model_arg
from training.metrics import DepthMetrics, SegMetrics

H, W, FRAMES = 40, 100, 3
DRIVE = '2011_09_26_drive_0001_sync'
CITYSCAPES_IDS = np.array([0, 7, 11, 21, 23, 26], np.uint8)  # unlabeled, road, building, ...
SKY = CLASS_NAMES.index('sky')


def write_kitti_tree(root, seed=0, models=()):
    """Write a tiny KITTI raw tree (images, sparse depth PNGs, semantic ids); return the GT.

    Ground truth is left out ("no depth", unlabeled) where any of ``models`` (exported dirs)
    gives a result float rounding can change (:func:`float_sensitive`), so scores agree
    across batch sizes and backends on any CPU.
    """
    rng = np.random.default_rng(seed)
    judges = [(Predictor.from_path(m, backend='torch', device='cpu'), Reference(m))
              for m in models]
    drive = root / 'raw' / '2011_09_26' / DRIVE
    truth = []
    for i in range(FRAMES):
        name = f'{i:010d}.png'
        yy, xx = np.mgrid[0:H, 0:W]
        rgb = np.stack([xx * 2 + 10 * i, yy * 5, (xx + yy) % 255], -1) \
            + rng.integers(0, 30, (H, W, 3))
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        depth_png = np.where(rng.random((H, W)) < 0.3,
                             rng.integers(256, 70 * 256, (H, W)), 0).astype(np.uint16)
        ids = CITYSCAPES_IDS[rng.integers(0, len(CITYSCAPES_IDS), (H, W))]
        drop = np.zeros((H, W), bool)
        for predictor, reference in judges:
            drop |= float_sensitive(predictor, reference, rgb, depth_png / 256.0)
        depth_png[drop], ids[drop] = 0, 0  # id 0: unlabeled (ignored)
        for path, array in (
                (drive / 'image_02' / 'data' / name, rgb[..., ::-1]),
                (root / 'depth' / DRIVE / 'proj_depth' / 'groundtruth' / 'image_02' / name,
                 depth_png),
                (drive / 'semantic' / 'image_02' / name, ids)):
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), np.ascontiguousarray(array))
        truth.append((rgb, depth_png.astype(np.float32) / 256.0, cityscapes_lut()[ids]))
    return truth


def float_sensitive(predictor, reference, rgb, gt_depth):
    """Return the pixels of one frame whose score float rounding could change.

    Those whose label has a top-2 logit margin within ``margins.EPS`` (a sky flip also
    changes depth to +inf), and those whose depth ratio max(g/p, p/g) is within
    ``margins.DEPTH_RTOL`` of an a1/a2/a3 threshold. At most a few percent of the frame.
    """
    labels, ambiguous, depth = reference(predictor.preprocess(rgb))
    drop = to_size(ambiguous[0], H, W)
    pred = cv2.resize(depth[0], (W, H), interpolation=cv2.INTER_LINEAR)
    pred[cv2.resize(labels[0], (W, H), interpolation=cv2.INTER_NEAREST) == SKY] = 80.0
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = np.maximum(gt_depth / pred, pred / gt_depth)
    for threshold in (1.25, 1.25 ** 2, 1.25 ** 3):
        drop |= np.abs(ratio / threshold - 1.0) <= DEPTH_RTOL
    assert drop.mean() <= 0.05, f'{drop.mean():.1%} of the frame is float-sensitive'
    return drop


def make_model(path, seed):
    torch.manual_seed(seed)
    net = build_model(load_config('test')['model']).eval()
    return export_model_dir(net, path, metadata={'method': f'random{seed}'})


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    model_a = make_model(root / 'a', 0)
    model_b = make_model(root / 'run_b' / 'export', 1)  # a run dir: evaluate finds export/
    export_onnx(model_a)
    truth = write_kitti_tree(root / 'kitti', models=(model_a, model_b))
    data_cfg = {'format': 'kitti', 'root': str(root / 'kitti' / 'raw'),
                'depth_root': str(root / 'kitti' / 'depth'), 'with_labels': True}
    return root, truth, data_cfg


def direct_metrics(model_dir, truth, backend):
    """Score the predictor's own outputs on the written ground truth, without evaluate."""
    predictor = Predictor.from_path(model_dir, backend=backend, device='cpu')
    depth, seg = DepthMetrics(), SegMetrics()
    for rgb, gt_depth, gt_labels in truth:
        pred = predictor.predict(rgb)
        assert pred.depth.shape == gt_depth.shape  # scored at the ground-truth resolution
        depth.update(pred.depth, gt_depth)
        seg.update(pred.labels, gt_labels)
    return {'depth': depth.compute(), 'segmentation': seg.compute()}


def assert_same_metrics(got, want, rel=1e-6):
    """Equal scores: counts and fractions exactly; means of depths to float32 error."""
    for key in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log'):
        # Means of per-pixel terms, each within float32 error (margins.METRIC_RTOL).
        assert got['depth'][key] == pytest.approx(want['depth'][key], rel=METRIC_RTOL), key
    for key in ('a1', 'a2', 'a3', 'n_pixels'):
        assert got['depth'][key] == pytest.approx(want['depth'][key], rel=rel), key
    for key in ('miou', 'pixel_acc', 'n_pixels'):
        assert got['segmentation'][key] == pytest.approx(want['segmentation'][key], rel=rel)
    assert got['segmentation']['per_class_iou'] == pytest.approx(
        want['segmentation']['per_class_iou'], rel=rel)


def test_cli_table_json_figure(setup, capsys):
    root, truth, data_cfg = setup
    out = root / 'out_cli'
    rc = main(['--model', f'a={root / "a"}', '--model', f'b={root / "run_b"}',
               '--config', 'test', '--split', 'all', '--backend', 'torch', '--quiet',
               '--set', 'data.eval.format=kitti', '--set', f'data.eval.root={data_cfg["root"]}',
               '--set', f'data.eval.depth_root={data_cfg["depth_root"]}',
               '--set', 'data.eval.with_labels=true', '--set', 'eval.figure_rows=3',
               '--out', str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'AbsRel' in printed and 'mIoU' in printed
    assert printed.count('\na ') + printed.count('\nb ') == 2  # one row per method
    report = json.loads((out / 'eval.json').read_text())
    assert list(report['models']) == ['a', 'b']
    assert report['data']['split'] == 'all' and report['data']['format'] == 'kitti'
    for name, model_dir in (('a', root / 'a'), ('b', root / 'run_b' / 'export')):
        got = report['models'][name]
        assert got['frames'] == got['depth_frames'] == got['segmentation_frames'] == FRAMES
        assert got['backend'] == 'torch' and got['model_dir'] == str(model_dir)
        assert_same_metrics(got, direct_metrics(model_dir, truth, 'torch'))
    assert report['models']['b']['metadata'] == {'method': 'random1'}
    assert report['models']['a']['depth']['abs_rel'] != report['models']['b']['depth']['abs_rel']
    assert '| a |' in (out / 'eval.md').read_text()
    fig = cv2.imread(str(out / 'eval.png'))
    # 3 frame rows + header; 2 + 2 methods depth columns + 2 label columns, 192 px tiles.
    assert fig.shape[1] == 192 * (1 + 1 + 2 + 1 + 2)
    assert fig.shape[0] == 22 + 3 * round(192 * H / W)


def test_onnxruntime_backend_matches_its_own_predictions(setup):
    root, truth, data_cfg = setup
    got = evaluate_model(root / 'a', data_cfg, split='all', backend='onnxruntime')
    assert got['backend'] == 'onnxruntime'
    assert_same_metrics(got, direct_metrics(root / 'a', truth, 'onnxruntime'))
    torch_result = evaluate_model(root / 'a', data_cfg, split='all', backend='torch',
                                  batch_size=2)
    # Same network through two runtimes: numbers agree to float noise.
    assert got['depth']['abs_rel'] == pytest.approx(torch_result['depth']['abs_rel'], rel=1e-3)
    assert got['segmentation']['pixel_acc'] == pytest.approx(
        torch_result['segmentation']['pixel_acc'], abs=1e-3)


def test_options_reach_the_metrics(setup):
    root, truth, data_cfg = setup
    capped = evaluate_model(root / 'a', data_cfg, split='all', backend='torch', max_depth=30.0,
                            median_scaling=True, max_frames=2)
    assert capped['frames'] == 2
    assert capped['depth']['max_depth'] == 30.0 and capped['depth']['median_scaling']
    want = DepthMetrics(max_depth=30.0, median_scaling=True)
    predictor = Predictor.from_path(root / 'a', backend='torch', device='cpu')
    for i in (0, 1):  # max_frames=2 of 3: frames int(0 * 1.5), int(1 * 1.5)
        want.update(predictor.predict(truth[i][0]).depth, truth[i][1])
    assert capped['depth']['abs_rel'] == pytest.approx(want.compute()['abs_rel'], rel=METRIC_RTOL)
    cropped = evaluate_model(root / 'a', data_cfg, split='all', backend='torch', crop='center',
                             max_frames=1)
    valid = truth[0][1][:, 30:70]  # the 128x128 model's aspect: the centre 40x40 of 40x100
    assert cropped['depth']['n_pixels'] == np.count_nonzero(valid > 1e-3)
    assert cropped['segmentation']['n_pixels'] == np.count_nonzero(truth[0][2][:, 30:70] != 255)


def test_center_crop_keeps_native_resolution():
    frame = {'image': np.zeros((40, 100, 3), np.uint8),
             'depth': np.arange(4000.0).reshape(40, 100), 'labels': np.zeros((40, 100), np.uint8)}
    out = center_crop(frame, 128, 128)
    assert out['image'].shape == (40, 40, 3) and out['labels'].shape == (40, 40)
    assert out['depth'][0, 0] == 30.0  # columns 30..69
    tall = center_crop(frame, 128, 640)
    assert tall['depth'].shape == (20, 100) and tall['depth'][0, 0] == 1000.0


def test_model_argument_forms(tmp_path):
    make_model(tmp_path / 'run' / 'export', 0)
    assert parse_model_arg(f'x={tmp_path / "run"}') == ('x', tmp_path / 'run' / 'export')
    assert parse_model_arg(str(tmp_path / 'run'))[0] == 'run'
    assert parse_model_arg(str(tmp_path / 'run' / 'export'))[0] == 'run'


def test_errors_are_reported_not_raised(setup, tmp_path, capsys):
    root, _, data_cfg = setup
    base = ['--config', 'test', '--set', 'data.eval.format=kitti',
            '--set', f'data.eval.root={data_cfg["root"]}', '--out', str(tmp_path)]
    assert main(['--model', f'x={tmp_path / "missing"}', *base]) == 2
    assert 'missing' in capsys.readouterr().err
    assert main(['--model', f'a={root / "a"}', '--split', 'nonsense', *base]) == 2
    assert 'nonsense' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['--help'])
    assert 'eval.median_scaling=true' in capsys.readouterr().out
