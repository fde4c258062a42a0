# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""Depth and segmentation metrics against numbers worked out by hand."""
import json
import math

import numpy as np
import pytest
import torch

from training.metrics import DepthMetrics, garg_mask, SegMetrics

INF, NAN = np.inf, np.nan


def test_depth_metrics_by_hand():
    # g = 2, 4, 10 with p = 1, 4, 20 -> ratios 2, 1, 2; the 4th GT (0) is no measurement.
    gt = np.array([[2.0, 4.0], [10.0, 0.0]])
    pred = np.array([[1.0, 4.0], [20.0, 7.0]])
    m = DepthMetrics()
    m.update(pred, gt)
    r = m.compute()
    assert r['n_pixels'] == 3
    assert r['abs_rel'] == pytest.approx((0.5 + 0 + 1.0) / 3)
    assert r['sq_rel'] == pytest.approx((1 / 2 + 0 + 100 / 10) / 3)
    assert r['rmse'] == pytest.approx(math.sqrt((1 + 0 + 100) / 3))
    assert r['rmse_log'] == pytest.approx(math.sqrt(2 * math.log(2) ** 2 / 3))
    assert r['a1'] == pytest.approx(1 / 3)  # only the exact pixel; ratio 2 > 1.25
    assert r['a2'] == pytest.approx(1 / 3)  # 2 > 1.5625
    assert r['a3'] == pytest.approx(1 / 3)  # 1.25**3 = 1.953125 < 2


def test_depth_delta_thresholds():
    gt = np.full((1, 4), 10.0)
    pred = np.array([[12.0, 15.0, 19.0, 25.0]])  # ratios 1.2, 1.5, 1.9, 2.5
    m = DepthMetrics()
    m.update(pred, gt)
    r = m.compute()
    assert (r['a1'], r['a2'], r['a3']) == pytest.approx((0.25, 0.5, 0.75))


def test_depth_pooled_over_pixels_not_images():
    m = DepthMetrics()
    m.update(np.array([[2.0]]), np.array([[1.0]]))          # abs_rel 1 on 1 pixel
    m.update(np.full((1, 3), 1.0), np.full((1, 3), 1.0))   # abs_rel 0 on 3 pixels
    r = m.compute()
    assert r['abs_rel'] == pytest.approx(0.25)  # per-image mean would be 0.5
    assert r['n_images'] == 2


def test_depth_caps_sky_and_clamping():
    # GT: +inf (sky), NaN, 80 (== cap: excluded), 1e-3 (== min: excluded), 50 and 10 valid.
    gt = np.array([[INF, NAN, 80.0, 1e-3, 50.0, 10.0]])
    # Predictions 200 -> clamped to 80; 1e-6 -> clamped to min 1e-3.
    pred = np.array([[5.0, 5.0, 5.0, 5.0, 200.0, 1e-6]])
    m = DepthMetrics(min_depth=1e-3, max_depth=80.0)
    m.update(pred, gt)
    r = m.compute()
    assert r['n_pixels'] == 2
    assert r['abs_rel'] == pytest.approx((30 / 50 + (10 - 1e-3) / 10) / 2)
    # A 50 m cap drops the 50 m pixel and clamps predictions to 50.
    m50 = DepthMetrics(max_depth=50.0)
    m50.update(np.array([[200.0, 10.0]]), np.array([[40.0, 10.0]]))
    assert m50.compute()['abs_rel'] == pytest.approx((10 / 40) / 2)


def test_depth_sky_prediction_counts_as_cap():
    # The predictor marks sky as +inf; on a LiDAR pixel that is scored as max_depth.
    m = DepthMetrics(max_depth=80.0)
    m.update(np.array([[INF]]), np.array([[40.0]]))
    assert m.compute()['abs_rel'] == pytest.approx(1.0)


def test_depth_nan_prediction_is_counted_and_penalised():
    m = DepthMetrics(max_depth=80.0)
    m.update(np.array([[NAN, 10.0]]), np.array([[40.0, 10.0]]))
    r = m.compute()
    assert r['n_nan_pred'] == 1
    assert r['abs_rel'] == pytest.approx(0.5)


def test_depth_empty_mask_gives_nan_not_crash():
    m = DepthMetrics()
    r = m.compute()
    assert r['n_pixels'] == 0 and all(math.isnan(r[k]) for k in
                                      ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2'))
    m.update(np.ones((3, 3)), np.zeros((3, 3)))      # no measurement at all
    m.update(np.ones((3, 3)), np.full((3, 3), INF))  # all sky
    r = m.compute()
    assert r['n_pixels'] == 0 and r['n_empty_images'] == 2 and math.isnan(r['rmse'])
    m.update(np.full((1, 1), 2.0), np.full((1, 1), 4.0))
    assert m.compute()['abs_rel'] == pytest.approx(0.5)


def test_median_scaling_per_image():
    gt = np.array([[2.0, 4.0, 8.0]])
    m = DepthMetrics(median_scaling=True)
    m.update(gt / 3.0, gt)                  # right shape, wrong scale: perfect after scaling
    m.update(np.array([[1.0, 1.0, 4.0]]), np.array([[2.0, 2.0, 2.0]]))  # ratio 2 -> 2, 2, 8
    r = m.compute()
    assert r['abs_rel'] == pytest.approx((0 + 0 + 0 + 0 + 0 + 3.0) / 6)
    assert r['scale_ratio_median'] == pytest.approx(2.5)
    plain = DepthMetrics()
    plain.update(gt / 3.0, gt)
    assert plain.compute()['abs_rel'] == pytest.approx(2 / 3)


def test_median_scaling_clamps_after_scaling():
    m = DepthMetrics(max_depth=80.0, median_scaling=True)
    # median(g)=60, median(p)=30 -> ratio 2: the 50 m prediction becomes 100, clamped to 80.
    m.update(np.array([[10.0, 30.0, 50.0]]), np.array([[20.0, 60.0, 70.0]]))
    assert m.compute()['abs_rel'] == pytest.approx((10 / 70) / 3)


def test_garg_crop():
    mask = garg_mask(375, 1242)
    rows, cols = np.nonzero(mask)
    # monodepth2: crop = [0.40810811*H, 0.99189189*H, 0.03594771*W, 0.96405229*W] as int32.
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (153, 371, 44, 1197)
    gt = np.full((10, 10), 5.0)
    pred = np.full((10, 10), 5.0)
    pred[0, 0] = 10.0  # outside the crop (top-left corner)
    on = DepthMetrics(garg_crop=True)
    on.update(pred, gt)
    off = DepthMetrics()
    off.update(pred, gt)
    assert on.compute()['abs_rel'] == 0.0
    assert on.compute()['n_pixels'] == int(garg_mask(10, 10).sum()) < 100
    assert off.compute()['abs_rel'] == pytest.approx(1 / 100)


def test_depth_accepts_torch_batches():
    gt = torch.tensor([[[[2.0, 4.0]]], [[[8.0, 0.0]]]])  # N x 1 x H x W
    pred = gt * 2
    m = DepthMetrics()
    m.update(pred, gt)
    r = m.compute()
    assert r['n_images'] == 2 and r['n_pixels'] == 3 and r['abs_rel'] == pytest.approx(1.0)
    with pytest.raises(ValueError, match='ground-truth resolution'):
        m.update(np.ones((2, 3)), np.ones((3, 2)))


def test_seg_metrics_by_hand():
    # 3 classes; GT row 0 / pred row 1; 255 pixels are ignored whatever is predicted.
    gt = np.array([[0, 0, 1, 1, 2, 255]])
    pred = np.array([[0, 1, 1, 1, 0, 2]])
    m = SegMetrics(num_classes=3, class_names=('a', 'b', 'c'))
    m.update(pred, gt)
    r = m.compute()
    # class a: TP 1, FP 1 (pixel 4), FN 1 -> 1/3; b: TP 2, FP 1 -> 2/3; c: TP 0, FN 1 -> 0.
    assert r['per_class_iou'] == pytest.approx({'a': 1 / 3, 'b': 2 / 3, 'c': 0.0})
    assert r['miou'] == pytest.approx(1 / 3) == r['miou_all']
    assert r['pixel_acc'] == pytest.approx(3 / 5)
    assert r['n_pixels'] == 5
    assert r['per_class_acc'] == pytest.approx({'a': 0.5, 'b': 1.0, 'c': 0.0})


def test_seg_absent_classes_convention():
    m = SegMetrics(num_classes=4, class_names=('a', 'b', 'c', 'd'))
    # d is in neither GT nor prediction; c is predicted but never in GT.
    m.update(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1]))
    r = m.compute()
    assert r['per_class_iou']['d'] is None
    assert r['per_class_iou']['c'] == 0.0
    assert r['classes_in_miou'] == 3
    assert r['miou'] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r['miou_all'] == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_seg_accumulates_over_dataset_and_accepts_torch():
    m = SegMetrics()
    m.update(torch.tensor([[4, 4]]), torch.tensor([[4, 4]]))
    m.update(np.array([[4, 1]], np.uint8), np.array([[1, 1]], np.uint8))
    r = m.compute()
    # road: TP 2, FP 1 -> 2/3; sky: TP 1, FN 1 -> 1/2. Dataset-pooled, not per image.
    assert r['per_class_iou']['road'] == pytest.approx(2 / 3)
    assert r['per_class_iou']['sky'] == pytest.approx(1 / 2)
    assert r['pixel_acc'] == pytest.approx(3 / 4)
    assert r['n_images'] == 2 and r['classes_in_miou'] == 2


def test_seg_empty_and_ignore_only():
    m = SegMetrics()
    r = m.compute()
    assert math.isnan(r['miou']) and math.isnan(r['pixel_acc']) and r['n_pixels'] == 0
    m.update(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8))
    r = m.compute()
    assert r['n_pixels'] == 0 and math.isnan(r['miou'])
    assert all(v is None for v in r['per_class_iou'].values())


def test_seg_out_of_range_ids():
    m = SegMetrics(num_classes=3, class_names=('a', 'b', 'c'))
    m.update(np.array([7, 0]), np.array([0, 0]))  # a prediction outside the classes is wrong
    r = m.compute()
    assert r['n_invalid_pred'] == 1 and r['pixel_acc'] == 0.5
    assert r['per_class_iou']['a'] == 0.5
    with pytest.raises(ValueError, match='neither classes'):
        m.update(np.array([0]), np.array([5]))


def test_results_are_json_serialisable():
    d, s = DepthMetrics(median_scaling=True), SegMetrics()
    d.update(np.ones((2, 2)), np.ones((2, 2)))
    s.update(np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8))
    back = json.loads(json.dumps({'depth': d.compute(), 'segmentation': s.compute()}))
    assert back['depth']['abs_rel'] == 0.0 and back['segmentation']['miou'] == 1.0
