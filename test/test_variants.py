# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""Issue-10 variants: the mean_prior floor, skip connections, appearance randomisation.

Each network variant trains (forward + backward of every stage), exports to ONNX with
parity, and is served by the predictor and the node like the paper's network.
"""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter

from sim2real_perception.config import load_config
from sim2real_perception.depth_seg_node import DepthSegNode
from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX
from sim2real_perception.model import (build_model, decode_depth, DepthSegNet, MeanPriorNet,
                                       ModelConfig, TwinVAE)
from sim2real_perception.model_io import export_model_dir, load_depth_seg_net
from sim2real_perception.onnx_export import export_onnx, parity_check
from sim2real_perception.predictor import Predictor
from test_node_support import Harness, test_image
from training import losses
from training.critic import critic_channels, FeatureCritic
from training.data.data_config import resolve
from training.data.dataset import FrameDataset
from training.data.transforms import appearance_aug, region_aug
from training.mean_prior import fit_maps
from training.metrics import LabelVariation

SKY = losses.SKY_CLASS


def item(depth, labels):
    """Return a FrameDataset-style sample from small maps (1 x H x W depth, H x W labels)."""
    return {'depth': torch.tensor(depth, dtype=torch.float32)[None],
            'labels': torch.tensor(labels, dtype=torch.long),
            'has_depth': True, 'has_labels': True}


def test_mean_prior_by_hand():
    inf = math.inf
    road, car, tree = (losses.CLASS_NAMES.index(c) for c in ('road', 'car', 'vegetation'))
    frames = [item([[2.0, 0.0], [inf, 10.0]], [[road, car], [SKY, tree]]),
              item([[4.0, 0.0], [6.0, 20.0]], [[road, car], [road, 255]]),
              item([[6.0, 0.0], [inf, 30.0]], [[car, car], [SKY, 255]])]
    depth, labels = fit_maps(frames, 2, 2, 12, max_depth=80.0)
    # (0,0): mean of 2, 4, 6. (0,1): never measured -> mean of all 9 measurements.
    # (1,0): inf and sky count as max_depth 80, plus 6. (1,1): 10, 20, 30.
    measured = [2, 4, 6, 80, 6, 80, 10, 20, 30]
    assert depth[0, 0] == pytest.approx(4.0)
    assert depth[0, 1] == pytest.approx(sum(measured) / len(measured))
    assert depth[1, 0] == pytest.approx((80 + 6 + 80) / 3)
    assert depth[1, 1] == pytest.approx(20.0)
    # Votes: (0,0) road twice; (0,1) car; (1,0) sky twice; (1,1) only tree (255 ignored).
    assert labels.tolist() == [[road, car], [SKY, tree]]
    assert labels.dtype == np.uint8


def test_mean_prior_unlabelled_pixel_gets_the_most_frequent_label():
    frames = [item([[1.0, 1.0]], [[4, 255]]), item([[1.0, 1.0]], [[4, 255]])]
    _, labels = fit_maps(frames, 1, 2, 12, max_depth=80.0)
    assert labels.tolist() == [[4, 4]]


def test_mean_prior_needs_labelled_depth_frames():
    frames = [{'depth': torch.zeros(1, 2, 2), 'labels': torch.full((2, 2), 255),
               'has_depth': False, 'has_labels': False}]
    with pytest.raises(ValueError, match='mean_prior needs'):
        fit_maps(frames, 2, 2, 12, max_depth=80.0)


def test_label_variation_by_hand():
    lv = LabelVariation(num_classes=3)
    assert math.isnan(lv.compute())
    for ids in ([[0, 1], [2, 2]], [[0, 1], [1, 2]], [[0, 2], [255, 2]], [[1, 1], [255, 2]]):
        lv.update(np.array(ids, np.uint8))
    # Per pixel: (0,0) 0,0,0,1 -> 1 differs; (0,1) 1,1,2,1 -> 1; (1,0) 2,1 (two ignored)
    # -> 1; (1,1) 2,2,2,2 -> 0. 3 of 14 counted labels differ from their pixel's mode.
    assert lv.compute() == pytest.approx(3 / 14)
    same = LabelVariation(3)
    for _ in range(3):
        same.update(np.ones((4, 4), np.uint8))
    assert same.compute() == 0.0


def test_appearance_aug_changes_look_not_shape_and_is_seeded():
    img = test_image(96, 48)
    assert appearance_aug(img, 0.0, np.random.default_rng(0)) is img
    a = appearance_aug(img, 1.0, np.random.default_rng(1))
    b = appearance_aug(img, 1.0, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - img.astype(int)).mean() > 2.0


def test_region_aug_varies_each_region_keeps_labels_and_is_seeded():
    h, w = 48, 96
    img = np.full((h, w, 3), 128, np.uint8)
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 2:] = 3
    labels[:h // 4] = 255   # ignored pixels, upper rows: no region and no shadow touches them
    assert region_aug(img, labels, 0.0, np.random.default_rng(0)) is img
    assert region_aug(img, None, 1.0, np.random.default_rng(0)) is img
    outs = [region_aug(img, labels, 1.0, np.random.default_rng(k)) for k in range(8)]
    assert np.array_equal(outs[0], region_aug(img, labels, 1.0, np.random.default_rng(0)))
    for out in outs:
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(out[:h // 4], img[:h // 4])
    # Over the draws every region is changed, and the two regions differently (per region).
    left = [o[h // 4:h // 2, :w // 2].astype(float).mean((0, 1)) for o in outs]
    right = [o[h // 4:h // 2, w // 2:].astype(float).mean((0, 1)) for o in outs]
    assert max(np.abs(m - 128).max() for m in left) > 10
    assert max(np.abs(m - 128).max() for m in right) > 10
    assert max(np.abs(a - b).max() for a, b in zip(left, right)) > 10


def test_region_aug_tint_zero_keeps_each_region_hue():
    h, w = 48, 96
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :w // 2] = (160, 80, 40)
    img[:, w // 2:] = (40, 90, 150)
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 2:] = 3

    def hue_shift(tint, keep_hue=()):
        """Largest change of each region's channel proportions over 8 draws: (left, right)."""
        worst = [0.0, 0.0]
        for k in range(8):
            out = region_aug(img, labels, 1.0, np.random.default_rng(k), tint,
                             keep_hue).astype(float)
            for i, sl in enumerate((np.s_[:, :w // 2], np.s_[:, w // 2:])):
                a, b = out[sl].reshape(-1, 3).sum(0), img[sl].reshape(-1, 3).sum(0) + 0.0
                worst[i] = max(worst[i], np.abs(a / a.sum() - b / b.sum()).max())
        return worst
    assert max(hue_shift(0.0)) < 0.02 < min(hue_shift(1.0))
    # keep_hue: class 3 (the right half) keeps its hue at tint 1; class 0 still moves.
    left, right = hue_shift(1.0, keep_hue={3})
    assert right < 0.02 < left


class _Frames:
    """A two-frame reader: a flat grey image, with labels or without."""

    def __init__(self, labels):
        self.labels = labels

    def load(self, i):
        lab = np.full((32, 64), 2, np.uint8) if self.labels else None
        return {'image': np.full((32, 64, 3), 120, np.uint8), 'depth': None, 'labels': lab,
                'name': f'f{i}'}


def test_dataset_applies_region_aug_to_labelled_training_frames_only():
    def image(labels, region, train=True):
        ds = FrameDataset(_Frames(labels), [0, 1], 32, 64, train=train, seed=3, flip=False,
                          region=region)
        return ds[1]['image']
    flat = image(True, 0.0)
    assert torch.equal(image(False, 1.0), flat)           # no labels: nothing to randomise
    assert torch.equal(image(True, 1.0, train=False), flat)   # evaluation: untouched
    assert (image(True, 1.0) - flat).abs().mean() > 0.01


class _DepthFrames:
    """A reader of labelled grey frames with a depth map (10 m everywhere)."""

    def load(self, i):
        return {'image': np.full((32, 64, 3), 120, np.uint8), 'depth':
                np.full((32, 64), 10.0, np.float32), 'labels': np.full((32, 64), 2, np.uint8),
                'name': f'f{i}'}


def test_region_aug_share_and_depth_drop_the_depth_of_changed_frames_only():
    flat = FrameDataset(_DepthFrames(), range(40), 32, 64, train=True, seed=3, flip=False)
    ds = FrameDataset(_DepthFrames(), range(40), 32, 64, train=True, seed=3, flip=False,
                      region=1.0, region_share=0.5, region_depth=False)
    changed = differs = 0
    for i in range(40):
        item, plain = ds[i], flat[i]
        assert torch.equal(item['labels'], plain['labels'])
        if torch.equal(item['depth'], plain['depth']):   # left alone: the image too
            assert torch.equal(item['image'], plain['image'])
        else:          # randomised (a region may stay flat): no depth measurement at all
            assert float(item['depth'].abs().max()) == 0.0
            changed += 1
            differs += not torch.equal(item['image'], plain['image'])
    assert 8 <= changed <= 32 and differs > 0   # about half of 40 (binomial)
    # Share 1 and depth kept (the defaults): no depth is lost, and no extra random number
    # is drawn, so region_aug gets the stream it had before these options existed.
    full = FrameDataset(_DepthFrames(), range(4), 32, 64, train=True, seed=3, flip=False,
                        region=1.0)
    assert any(not torch.equal(full[i]['image'], flat[i]['image']) for i in range(4))
    assert all(torch.equal(full[i]['depth'], flat[i]['depth']) for i in range(4))
    frame = _DepthFrames().load(2)
    want = region_aug(frame['image'], frame['labels'], 1.0, np.random.default_rng([3, 0, 2]))
    assert torch.equal(full[2]['image'], torch.from_numpy(want).permute(2, 0, 1).float()
                       .div_(127.5).sub_(1.0))


def test_dataset_passes_region_keep_hue_by_class_name():
    def worst_hue_shift(keep):   # grey frame, class 2 everywhere: proportions stay 1/3 each
        worst = 0.0
        for index in range(2):
            ds = FrameDataset(_Frames(True), [0, 1], 32, 64, train=True, seed=5, flip=False,
                              region=1.0, region_keep_hue=keep)
            rgb = (ds[index]['image'] + 1.0).sum((1, 2))
            worst = max(worst, float((rgb / rgb.sum() - 1.0 / 3.0).abs().max()))
        return worst
    assert worst_hue_shift([CLASS_NAMES[2]]) < 0.01 < worst_hue_shift([])


class _Vans:
    """A one-frame reader whose labels hold a van, a car, a road and ignored pixels."""

    def load(self, i):
        lab = np.full((32, 64), CLASS_NAMES.index('road'), np.uint8)
        lab[:8, :16] = CLASS_NAMES.index('van')
        lab[8:16, :16] = CLASS_NAMES.index('car')
        lab[16:20] = IGNORE_INDEX
        return {'image': np.full((32, 64, 3), 120, np.uint8), 'depth': None, 'labels': lab,
                'name': f'f{i}'}


def test_relabel_reads_vans_as_cars_and_nothing_else_changes():
    plain = FrameDataset(_Vans(), [0], 32, 64, flip=False)[0]['labels']
    kitti = FrameDataset(_Vans(), [0], 32, 64, flip=False, relabel={'van': 'car'})[0]['labels']
    van, car = CLASS_NAMES.index('van'), CLASS_NAMES.index('car')
    assert (plain == van).sum() == 8 * 16 and not (kitti == van).any()
    assert (kitti[plain == van] == car).all()
    assert torch.equal(kitti[plain != van], plain[plain != van])   # ignore (255) stays
    assert (kitti == IGNORE_INDEX).sum() == 4 * 64


def test_relabel_and_keep_hue_names_are_checked_at_start_up():
    base = {'format': 'procedural_sim', 'root': 'anywhere'}
    assert resolve({**base, 'region_keep_hue': ['vegetation']})['region_keep_hue'] == \
        ['vegetation']
    with pytest.raises(ValueError, match='unknown classes'):
        resolve({**base, 'region_keep_hue': ['trees']})
    with pytest.raises(ValueError, match='list of class names'):
        resolve({**base, 'region_keep_hue': 'vegetation'})
    assert resolve({**base, 'relabel': {'van': 'car'}})['relabel'] == {'van': 'car'}
    with pytest.raises(ValueError, match="relabel: unknown classes \\['lorry'\\]"):
        resolve({**base, 'relabel': {'lorry': 'car'}})
    with pytest.raises(ValueError, match='mapping of class names'):
        resolve({**base, 'relabel': ['van', 'car']})


def test_class_balance_weights_by_hand():
    # shares 0.64, 0.32, 0.04, 0: at power 0.5 weights c / sqrt(share), normalised so the
    # pixel-weighted mean is 1: c * (0.8 + 0.566 + 0.2) = 1.
    w = losses.class_balance_weights([64, 32, 4, 0], 0.5)
    c = 1.0 / (math.sqrt(0.64) + math.sqrt(0.32) + math.sqrt(0.04))
    expect = [c / math.sqrt(0.64), c / math.sqrt(0.32), c / math.sqrt(0.04), 0.0]
    assert torch.allclose(w, torch.tensor(expect), rtol=1e-5)
    assert torch.allclose(losses.class_balance_weights([64, 32, 4, 0], 0.0),
                          torch.tensor([1.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError):
        losses.class_balance_weights([0, 0], 0.5)


def test_weighted_seg_loss_weighs_pixels_by_their_class():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0] = 2.0                      # every pixel says class 0
    labels = torch.tensor([[[0, 0, 0, 2]]])
    per_pixel = [math.log(1 + 2 * math.exp(-2.0))] * 3 + [2.0 + math.log(1 + 2 * math.exp(-2.0))]
    weight = torch.tensor([1.0, 5.0, 3.0])
    expect = (sum(per_pixel[:3]) + 3.0 * per_pixel[3]) / (3 * 1.0 + 3.0)
    got = losses.seg_loss(logits, labels, weight=weight)
    assert math.isclose(float(got), expect, rel_tol=1e-5)
    plain = losses.seg_loss(logits, labels)
    assert math.isclose(float(plain), sum(per_pixel) / 4, rel_tol=1e-5)


def test_weighted_depth_loss_weighs_pixels_by_their_class():
    """loss.depth_class_balance: a weighted mean; unlabelled pixels weigh 1, invalid ones 0."""
    from sim2real_perception.model import ModelConfig
    mc = ModelConfig.from_dict(load_config('test')['model'])
    depth = torch.tensor([[[[4.0, 8.0, 16.0, 0.0, 20.0]]]])      # the fourth: no measurement
    labels = torch.tensor([[[0, 0, 2, 2, 255]]])
    pred = torch.tensor([[[[0.1, -0.2, 0.3, 0.9, 0.0]]]])
    target, valid = losses.depth_targets(depth, mc)
    err = (pred - target).abs()[0, 0, 0]
    weight = torch.tensor([1.0, 5.0, 3.0])
    expect = (err[0] + err[1] + 3.0 * err[2] + 1.0 * err[4]) / (1.0 + 1.0 + 3.0 + 1.0)
    got = losses.depth_loss(pred, depth, mc, labels, norm='l1', sky_as_far=False, weight=weight)
    assert math.isclose(float(got), float(expect), rel_tol=1e-5)
    plain = losses.depth_loss(pred, depth, mc, labels, norm='l1', sky_as_far=False)
    assert math.isclose(float(plain), float(err[[0, 1, 2, 4]].mean()), rel_tol=1e-5)
    ones = losses.depth_loss(pred, depth, mc, labels, norm='l1', sky_as_far=False,
                             weight=torch.ones(3))
    assert math.isclose(float(ones), float(plain), rel_tol=1e-6)


def test_training_with_class_balance_counts_the_labelled_frames(tiny_data, tmp_path, capsys):
    from training import train
    cfg = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                      + ['data.eval.val_fraction=0.25', 'train.supervised_steps=2',
                         'train.prior_frames=4', 'loss.ce_class_balance=0.5',
                         'data.sim.relabel={van: car}'])
    summary = train.run(cfg, tmp_path, method='sim_only')
    line = next(x for x in capsys.readouterr().err.splitlines()
                if 'loss.ce_class_balance=0.5: class weights' in x)
    weights = [float(v) for v in line.split('class weights')[1].split()]
    assert len(weights) == len(CLASS_NAMES)
    assert weights[CLASS_NAMES.index('van')] == 0.0         # read as car: never a target
    assert min(w for w in weights if w > 0) < 1.0 < max(weights)   # common below, rare above
    assert load_depth_seg_net(summary['export_dir'])[0] is not None


def test_training_with_depth_class_balance_weighs_the_depth_term(tiny_data, tmp_path, capsys):
    """The same run with and without the depth weights: its first depth term differs."""
    from training import train
    first = {}
    for power in (0.0, 0.5):
        cfg = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                          + ['data.eval.val_fraction=0.25', 'train.supervised_steps=2',
                             'train.prior_frames=4', 'train.log_every=1',
                             f'loss.depth_class_balance={power}'])
        train.run(cfg, tmp_path / str(power), method='sim_only')
        with open(tmp_path / str(power) / 'logs' / 'supervised.csv') as fh:
            rows = list(csv.DictReader(fh))
        first[power] = float(rows[0]['depth'])
    line = next(x for x in capsys.readouterr().err.splitlines()
                if 'loss.depth_class_balance=0.5: class weights' in x)
    assert len(line.split('class weights')[1].split()) == len(CLASS_NAMES)
    assert abs(first[0.5] - first[0.0]) > 0.01 * first[0.0]


VARIANTS = {'skips_shared': {'skips': 'shared', 'shared_layers': 8},
            'skips_all': {'skips': 'all'},
            'skips_shared_default_sharing': {'skips': 'shared'},
            'prior_residual': {'skips': 'shared', 'shared_layers': 8, 'prior': 'residual'},
            'input_norm_image': {'skips': 'shared', 'shared_layers': 8, 'prior': 'residual',
                                 'input_norm': 'image'},
            'prior_gate_ground': {'skips': 'shared', 'shared_layers': 8, 'prior': 'residual',
                                  'prior_gate': 'ground'},
            'prior_gate_ground_mean': {'skips': 'shared', 'shared_layers': 8,
                                       'prior': 'residual', 'prior_gate': 'ground_mean'}}


def prior_maps(cfg):
    """Depth targets rising down the image and class frequencies favouring columns."""
    h, w, c = cfg.height, cfg.width, cfg.num_classes
    yy, xx = np.mgrid[0:h, 0:w]
    depth_t = torch.tensor(0.8 - 1.6 * yy / h, dtype=torch.float32)
    freq = torch.ones(c, h, w)
    freq[(xx // 16) % c, yy, xx] += 30.0
    return depth_t, freq / freq.sum(0)


def model_cfg(**changes):
    return ModelConfig.from_dict({**load_config('test')['model'], **changes})


def test_skip_sources_follow_the_shared_layers():
    cfg = model_cfg(skips='shared', shared_layers=4)
    # test preset: 5 packings, 1 res block: layers stem(1) p(2) p(4) p(8) p(16) p(32) res(32)
    # bottleneck(64) latent(64); the last 4 are shared: p(32), res(32), bottleneck, latent.
    assert cfg.skip_sources() == {32: (6, 8)}
    assert set(model_cfg(skips='all').skip_sources()) == {1, 2, 4, 8, 16, 32}
    assert model_cfg(skips='none').skip_sources() == {}
    with pytest.raises(ValueError, match='skips'):
        model_cfg(skips='sideways')


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_skip_variant_trains_every_stage(name):
    cfg = model_cfg(**VARIANTS[name])
    torch.manual_seed(0)
    net = TwinVAE(cfg).train()
    assert net.has_skips
    x_r, x_s = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    depth = torch.rand(2, 1, 128, 128) * 50 + 1
    labels = torch.randint(0, 12, (2, 128, 128))
    batch = {'image': x_s, 'depth': depth, 'labels': labels}
    for terms, _ in (losses.stage1_terms(net, x_r, x_s),
                     losses.stage2_terms(net, batch, x_r, cfg),
                     losses.supervised_terms(net, batch, cfg)):
        net.zero_grad()
        total = sum(terms.values())
        total.backward()
        assert math.isfinite(total.item())
    # The heads' first skip layer got a gradient through the skip input.
    grads = [p.grad for p in net.dec_seg.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.fixture(scope='module')
def variant_dirs(tmp_path_factory):
    """Export one random model per skip variant and a mean prior, each with model.onnx."""
    root = tmp_path_factory.mktemp('variants')
    dirs = {}
    for name, changes in VARIANTS.items():
        torch.manual_seed(1)
        net = build_model(model_cfg(**changes)).eval()
        if net.prior is not None:
            depth_t, freq = prior_maps(net.cfg)
            net.prior.set_maps(depth_t, freq, 0.5 * depth_t)
        dirs[name] = export_model_dir(net, root / name)
    cfg = model_cfg(architecture='mean_prior')
    yy, xx = np.mgrid[0:128, 0:128]
    prior = MeanPriorNet(cfg, torch.tensor(5.0 + yy * 0.5, dtype=torch.float32),
                         torch.tensor((xx // 32) % 12, dtype=torch.uint8))
    dirs['mean_prior'] = export_model_dir(prior, root / 'mean_prior')
    # The paper network one packing shallower at 64x128 (bench row twin_vae_paper_64x128).
    torch.manual_seed(1)
    small = build_model(model_cfg(height=64, width=128, pack_channels=[4, 4, 8, 8])).eval()
    dirs['paper_64x128'] = export_model_dir(small, root / 'paper_64x128')
    for d in dirs.values():
        export_onnx(d)
    return dirs


@pytest.mark.parametrize('name', [*sorted(VARIANTS), 'mean_prior', 'paper_64x128'])
def test_variant_onnx_parity(variant_dirs, name):
    d = variant_dirs[name]
    max_err, same = parity_check(d, d / 'model.onnx')
    assert max_err < 1e-2  # metres, float32 through two runtimes
    # Random weights leave near-tie logits; the prior's labels are exact.
    assert same == 1.0 if name == 'mean_prior' else same > 0.97


def test_mean_prior_is_served_as_its_maps(variant_dirs):
    d = variant_dirs['mean_prior']
    net, config = load_depth_seg_net(d)
    assert isinstance(net, MeanPriorNet) and config['model_config'].architecture == 'mean_prior'
    for backend in ('torch', 'onnxruntime'):
        p = Predictor.from_path(d, backend=backend, device='cpu', sky_as_infinity=False)
        a = p.predict(test_image(128, 128, seed=1))
        b = p.predict(test_image(128, 128, seed=2))
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.depth, b.depth)
        assert np.array_equal(a.labels, net.label_map.numpy())
        assert np.allclose(a.depth, net.depth_map.numpy())


@pytest.mark.parametrize('name', ['skips_shared', 'prior_residual', 'input_norm_image',
                                  'prior_gate_ground', 'prior_gate_ground_mean', 'mean_prior',
                                  'paper_64x128'])
def test_variant_is_served_by_the_node(context, variant_dirs, name):
    d = variant_dirs[name]
    node = DepthSegNode(context=context, namespace=f'/variant_{name}', parameter_overrides=[
        Parameter('model_path', value=str(d)), Parameter('backend', value='onnxruntime'),
        Parameter('device', value='cpu'), Parameter('log_period', value=0.0)])
    harness = Harness(context, namespace=f'/variant_{name}')
    harness.add_node(node)
    try:
        assert harness.wait_for_subscriber()
        img = test_image(160, 96, seed=3)
        assert harness.send_until(lambda: harness.send(img, 'rgb8'),
                                  lambda: harness.received['segmentation'])
        seg = harness.received['segmentation'][0]
        assert (seg.height, seg.width, seg.encoding) == (96, 160, 'mono8')
        want = Predictor.from_path(d, backend='onnxruntime', device='cpu').predict(img)
        got = np.frombuffer(bytes(seg.data), np.uint8).reshape(96, 160)
        assert (got == want.labels).mean() > 0.99  # same runtime and path as the node
    finally:
        harness.close()
        node.destroy_node()


def test_input_norm_removes_a_per_channel_gain_and_offset():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128) * 1.6 - 0.8
    gain = torch.tensor([0.7, 1.0, 1.3]).view(1, 3, 1, 1)
    offset = torch.tensor([0.1, -0.05, 0.0]).view(1, 3, 1, 1)
    shifted = x * gain + offset   # a white balance and exposure change
    brighter = x * 1.2 + 0.1    # one gain for every channel: exposure, contrast
    for norm, moved, moved_by_exposure in (('image', False, False), ('image_joint', True, False),
                                           ('none', True, True)):
        stem = TwinVAE(model_cfg(input_norm=norm)).enc_real.layers[0].eval()
        a = stem(x)
        scale = a.abs().max().item()
        # float32: the standardised inputs agree to ~1e-6 of their unit scale
        assert ((a - stem(shifted)).abs().max().item() > 0.05 * scale) is moved
        assert ((a - stem(brighter)).abs().max().item() > 0.05 * scale) is moved_by_exposure
    with pytest.raises(ValueError, match='input_norm'):
        model_cfg(input_norm='sometimes')


def test_input_norm_keeps_checkpoint_keys_and_a_flat_image_finite():
    plain, normed = TwinVAE(model_cfg()), TwinVAE(model_cfg(input_norm='image'))
    assert plain.state_dict().keys() == normed.state_dict().keys()
    net = DepthSegNet(model_cfg(input_norm='image')).eval()
    depth, labels = net(torch.full((1, 128, 128, 3), 77, dtype=torch.uint8))
    assert torch.isfinite(depth).all() and labels.shape == (1, 128, 128)


def test_residual_prior_by_hand():
    from training.mean_prior import fit_residual_prior
    inf = math.inf
    terrain, veg = 0, 2   # three classes here: terrain, sky, vegetation
    cfg = model_cfg(depth_encoding='log', num_classes=3)
    frames = [item([[2.0, inf]], [[terrain, SKY]]), item([[8.0, 5.0]], [[terrain, 255]]),
              item([[0.0, 20.0]], [[veg, 255]])]
    depth_t, freq, ground_t = fit_residual_prior(frames, cfg, smoothing=1.0, shape=(1, 2))
    assert ground_t is None   # no ground gate
    code = lambda m: 2 * math.log(m / cfg.min_depth) / math.log(cfg.max_depth / cfg.min_depth) - 1  # noqa: E731,E501
    # (0,0): codes of 2 and 8 (0 is no measurement); (0,1): inf = max_depth, 5, 20.
    assert depth_t[0, 0] == pytest.approx((code(2) + code(8)) / 2, abs=1e-6)
    assert depth_t[0, 1] == pytest.approx((1.0 + code(5) + code(20)) / 3, abs=1e-6)
    # Votes + 1 per class: (0,0) terrain 2, vegetation 1 -> [3, 1, 2] / 6; (0,1) sky once.
    assert freq[:, 0, 0] == pytest.approx([3 / 6, 1 / 6, 2 / 6])
    assert freq[:, 0, 1] == pytest.approx([1 / 4, 2 / 4, 1 / 4])


def test_residual_prior_starts_at_the_prior_and_is_neutral_unfitted():
    cfg = model_cfg(skips='shared', shared_layers=8, prior='residual')
    torch.manual_seed(0)
    net = TwinVAE(cfg).eval()
    plain = TwinVAE(model_cfg(skips='shared', shared_layers=8)).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items()
                           if not k.startswith('prior.')})
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    # Unfitted maps are neutral: the same depth and the same logits up to a constant.
    (d, s), (d0, s0) = net(x), plain(x)
    assert torch.allclose(d, d0, atol=1e-6)
    assert torch.allclose(s - s.mean(1, keepdim=True), s0 - s0.mean(1, keepdim=True),
                          atol=1e-5)
    # With the heads' last layer at zero, the deployed net outputs exactly the prior.
    depth_t, freq = prior_maps(cfg)
    net.prior.set_maps(depth_t, freq)
    for head in (net.dec_depth, net.dec_seg):
        torch.nn.init.zeros_(head.layers[-1][0].weight)
        torch.nn.init.zeros_(head.layers[-1][0].bias)
    deployed = DepthSegNet.from_twin(net).eval()
    depth, labels = deployed(torch.zeros(1, 128, 128, 3, dtype=torch.uint8))
    want = decode_depth(depth_t.clamp(-0.995, 0.995), 'log' if cfg.depth_encoding == 'log'
                        else cfg.depth_encoding, cfg.min_depth, cfg.max_depth)
    assert torch.allclose(depth[0], want, rtol=1e-5)
    assert torch.equal(labels[0].long(), freq.argmax(0))


def test_ground_gate_gives_flat_grounds_depth_where_the_labels_see_ground_by_hand():
    depth_t, freq = prior_maps(model_cfg())
    ground_t = -0.5 * depth_t
    raw = torch.full((1, 1, 128, 128), 0.7, requires_grad=True)
    logits = torch.full((1, 12, 128, 128), -20.0, requires_grad=True)
    road, terrain, car = (CLASS_NAMES.index(c) for c in ('road', 'terrain', 'car'))
    with torch.no_grad():
        logits[:, road, :, :64] = 20.0      # left half: sure it is road
        logits[:, car, :, 64:] = 20.0       # right half: sure it is a car
        logits[:, terrain, :1, 64:] = 20.0  # top row of the right half: car or terrain
    for gate in ('ground', 'ground_mean'):
        cfg = model_cfg(skips='shared', shared_layers=8, prior='residual', prior_gate=gate)
        net = TwinVAE(cfg)
        net.prior.set_maps(depth_t, freq, ground_t)
        code = net.prior.depth_code
        flat = net.prior.ground_code if gate == 'ground' else code
        if gate == 'ground':
            assert torch.allclose(torch.tanh(flat[0, 0]), ground_t, atol=1e-6)
        else:
            assert 'prior.ground_code' not in net.state_dict()
        raw.grad = None
        d = net.prior.depth(raw, logits)
        assert torch.allclose(d[..., :64], torch.tanh(flat[..., :64]), atol=1e-6)
        assert torch.allclose(d[..., 1:, 64:], torch.tanh(0.7 + code[..., 1:, 64:]), atol=1e-6)
        half = 0.5 * flat[..., :1, 64:] + 0.5 * (0.7 + code[..., :1, 64:])
        assert torch.allclose(d[..., :1, 64:], torch.tanh(half), atol=1e-6)
        d.sum().backward()
        assert logits.grad is None                       # depth never trains the labels
        assert raw.grad[..., :64].abs().max() < 1e-6 < raw.grad[..., 64:].abs().min()
    with pytest.raises(ValueError, match='ground depth map'):
        net = TwinVAE(model_cfg(skips='shared', shared_layers=8, prior='residual',
                                prior_gate='ground'))
        net.prior.set_maps(depth_t, freq)
    # Without the gate the residual applies everywhere; the gate needs the residual prior.
    plain = TwinVAE(model_cfg(skips='shared', shared_layers=8, prior='residual'))
    plain.prior.set_maps(depth_t, freq)
    assert torch.allclose(plain.prior.depth(raw, logits), torch.tanh(0.7 + plain.prior.depth_code))
    with pytest.raises(ValueError, match='needs model.prior: residual'):
        model_cfg(prior_gate='ground')
    with pytest.raises(ValueError, match='prior_gate'):
        model_cfg(prior='residual', prior_gate='sky')


def test_ground_prior_is_the_mean_over_the_frames_where_the_pixel_was_ground():
    from training.mean_prior import fit_residual_prior
    terrain, road, veg = 0, 4, 2
    cfg = model_cfg(depth_encoding='log', prior='residual', prior_gate='ground')
    frames = [item([[2.0, 30.0]], [[road, veg]]), item([[8.0, 5.0]], [[terrain, road]]),
              item([[4.0, 20.0]], [[veg, veg]])]
    depth_t, _, ground_t = fit_residual_prior(frames, cfg, shape=(1, 2))
    code = lambda m: 2 * math.log(m / cfg.min_depth) / math.log(cfg.max_depth / cfg.min_depth) - 1  # noqa: E731,E501
    # (0,0): ground in frames 1 and 2 (2 m, 8 m), all three in the prior; (0,1): road once.
    assert ground_t[0, 0] == pytest.approx((code(2) + code(8)) / 2, abs=1e-6)
    assert depth_t[0, 0] == pytest.approx((code(2) + code(8) + code(4)) / 3, abs=1e-6)
    assert ground_t[0, 1] == pytest.approx(code(5), abs=1e-6)
    frames = [item([[3.0]], [[veg]])]   # never ground: the prior's depth
    depth_t, _, ground_t = fit_residual_prior(frames, cfg, shape=(1, 1))
    assert ground_t[0, 0] == depth_t[0, 0]
    assert fit_residual_prior(frames, model_cfg(prior='residual'), shape=(1, 1))[2] is None


def test_ground_gate_is_the_same_in_training_and_deployed_paths():
    cfg = model_cfg(skips='shared', shared_layers=8, prior='residual', prior_gate='ground')
    torch.manual_seed(0)
    net = TwinVAE(cfg).eval()
    depth_t, freq = prior_maps(cfg)
    net.prior.set_maps(depth_t, freq, 0.5 * depth_t)
    x = torch.rand(1, 128, 128, 3) * 255
    deployed = DepthSegNet.from_twin(net).eval()
    d_dep, l_dep = deployed.heads(deployed.normalise(x.to(torch.uint8)))
    _, z, feats = net.encode_skips(deployed.normalise(x.to(torch.uint8)), 'real')
    d_train = net.decode(z, 'depth', feats)
    assert torch.allclose(d_dep, d_train, atol=1e-6)
    assert torch.allclose(l_dep, net.decode(z, 'seg', feats), atol=1e-6)


def test_training_fits_the_residual_prior_and_exports_it(tiny_data, tmp_path, capsys):
    from training import train
    cfg = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                      + ['data.eval.val_fraction=0.25', 'train.supervised_steps=2',
                         'model.prior=residual', 'train.prior_frames=4'])
    summary = train.run(cfg, tmp_path, method='sim_only')
    assert 'model.prior fitted on 4 frames of sim' in capsys.readouterr().err
    net, _ = load_depth_seg_net(summary['export_dir'])
    neutral = -math.log(net.cfg.num_classes)
    assert not torch.allclose(net.prior.log_freq, torch.full_like(net.prior.log_freq, neutral))
    assert net.prior.depth_code.abs().max() > 0.1
    # Resuming the finished stage keeps the fitted maps (they live in the checkpoint).
    again = train.run(cfg, tmp_path, method='sim_only', resume=True)
    net2, _ = load_depth_seg_net(again['export_dir'])
    assert torch.equal(net.prior.log_freq, net2.prior.log_freq)
    # The twin-VAE fits it when stage 2 starts (stage 1 reads unlabelled real frames only).
    cfg['train'].update(stage1_steps=1, stage2_steps=1)
    twin = train.run(cfg, tmp_path / 'twin', method='twin_vae')
    assert 'stage2] model.prior fitted on 4 frames of sim' in capsys.readouterr().err
    net3, _ = load_depth_seg_net(twin['export_dir'])
    assert torch.allclose(net3.prior.log_freq, net.prior.log_freq)   # the same sim frames


def test_gradient_reversal_flips_the_sign():
    from training.critic import reverse_grad
    x = torch.ones(3, requires_grad=True)
    (reverse_grad(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]


def test_stage2_sim_input_and_critic_train_the_real_encoder():
    from training.critic import critic_channels, critic_scale, FeatureCritic
    cfg = model_cfg(skips='shared', shared_layers=8)
    torch.manual_seed(0)
    net = TwinVAE(cfg).train()
    net.add_module('critic', FeatureCritic(critic_channels(cfg)))
    assert critic_scale(cfg) == 2 and critic_channels(cfg) == cfg.pack_channels[0]
    x_r, x_s = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    batch = {'image': x_s, 'depth': torch.rand(2, 1, 128, 128) * 50 + 1,
             'labels': torch.randint(0, 12, (2, 128, 128))}
    terms, images = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim')
    assert images['sim_to_real'] is x_s          # E_R read the sim frame itself
    assert terms['s2_adv'].item() > 0
    terms['s2_adv'].backward()
    stem_r = net.enc_real.layers[0][0].weight.grad
    assert stem_r is not None and float(stem_r.abs().sum()) > 0   # alignment reaches E_R
    assert all(p.grad is not None for p in net.critic.parameters())
    with pytest.raises(ValueError, match='stage2_real_input'):
        losses.stage2_terms(net, batch, x_r, cfg, real_input='both')
    plain = TwinVAE(cfg)
    zero, _ = losses.stage2_terms(plain, batch, x_r, cfg)
    assert zero['s2_adv'].item() == 0.0           # no critic: the paper's stage 2


def test_stage2_heads_on_mu_decode_the_mean_as_the_deployed_path_does():
    """loss.heads_on: mu gives the heads no latent noise in training; z (default) does."""
    cfg = model_cfg(skips='none', prior='none')
    torch.manual_seed(0)
    net = TwinVAE(cfg).train()
    x_r, x_s = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    batch = {'image': x_s, 'depth': torch.rand(2, 1, 128, 128) * 50 + 1,
             'labels': torch.randint(0, 12, (2, 128, 128))}

    def seg(heads_on):
        torch.manual_seed(1)   # the same draws, so only what the heads read differs
        _, images = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim',
                                        heads_on=heads_on)
        return images['seg_pred']
    with torch.no_grad():
        mean = net.decode(net.encode(x_s, 'sim')[0], 'seg')
    # The heads' output on the mean latent is the eval path's; with z it is not.
    assert torch.allclose(seg('mu'), mean, atol=1e-5)
    assert (seg('z') - mean).abs().max() > 1e-3
    with pytest.raises(ValueError, match='heads_on'):
        losses.stage2_terms(net, batch, x_r, cfg, heads_on='sample')


def lean_stage2_inputs():
    """Return (cfg, twin-VAE in train mode, real images, sim batch) for a stage-2 step."""
    cfg = model_cfg(skips='shared', shared_layers=8)
    torch.manual_seed(0)
    net = TwinVAE(cfg).train()
    x_r, x_s = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    batch = {'image': x_s, 'depth': torch.rand(2, 1, 128, 128) * 50 + 1,
             'labels': torch.randint(0, 12, (2, 128, 128))}
    return cfg, net, x_r, batch


def test_lean_stage2_skips_the_sim_encoder_heads_and_costs_less():
    cfg, net, x_r, batch = lean_stage2_inputs()
    calls = []
    hook = net.dec_seg.register_forward_hook(lambda *a: calls.append('seg'))
    full, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim')
    n_full, calls[:] = len(calls), []
    lean, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim', lean=True)
    hook.remove()
    assert (n_full, len(calls)) == (2, 1)   # the E_S segmentation head is not run
    assert list(lean) == list(losses.STAGE2_TERMS) == list(full)
    for name in ('s2_mmd_r2s', 'depth_sim', 'ce_sim'):
        assert lean[name].item() == 0.0 and full[name].item() != 0.0
    assert lean['ce_real'].item() > 0
    sum(lean.values()).backward()           # the zeros stay in the graph


def test_lean_stage2_without_eqs_12_13_skips_the_sim_encoder():
    from training.train import needs_sim_encoder, StageLoss
    cfg, net, x_r, batch = lean_stage2_inputs()
    stem_calls = []
    hook = net.enc_sim.layers[0].register_forward_hook(lambda *a: stem_calls.append(1))
    on, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim', lean=True)
    n_on, stem_calls[:] = len(stem_calls), []
    off, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim', lean=True,
                                 sim_encoder=False)
    hook.remove()
    assert (n_on, len(stem_calls)) == (1, 0)
    assert off['s2_kl_sim'].item() == 0.0 and on['s2_kl_sim'].item() > 0
    assert list(off) == list(losses.STAGE2_TERMS) and off['ce_real'].item() > 0
    sum(off.values()).backward()
    assert net.enc_sim.layers[0][0].weight.grad is None
    with pytest.raises(ValueError, match='E_S'):
        losses.stage2_terms(net, batch, x_r, cfg, real_input='translated', lean=True,
                            sim_encoder=False)
    zero = {'s2_kl_sim': 0.0, 's2_mmd_s2r': 0.0}
    loss_cfg = {**load_config('test')['loss'], **zero}
    hook = net.enc_sim.layers[0].register_forward_hook(lambda *a: stem_calls.append(1))
    StageLoss(net, 'stage2', cfg, loss_cfg, 'sim', lean=True)(batch, {'image': x_r})
    StageLoss(net, 'stage2', cfg, {**loss_cfg, 's2_kl_sim': 0.01}, 'sim', lean=True)(
        batch, {'image': x_r})
    hook.remove()
    assert len(stem_calls) == 1    # only the second, which weighs eq 12
    assert not needs_sim_encoder(zero, 'sim', True)
    assert needs_sim_encoder({**zero, 's2_kl_sim': 0.01}, 'sim', True)
    assert needs_sim_encoder(zero, 'translated', True) and needs_sim_encoder(zero, 'sim', False)


def test_source_only_stage2_step_supervises_the_real_path_on_sim_alone():
    cfg, net, x_r, batch = lean_stage2_inputs()
    net.add_module('critic', FeatureCritic(critic_channels(cfg)))
    calls = []
    hooks = [net.enc_sim.layers[0].register_forward_hook(lambda *a: calls.append('E_S')),
             net.critic.register_forward_hook(lambda *a: calls.append('critic'))]
    seen = []
    hooks.append(net.enc_real.layers[0].register_forward_hook(
        lambda m, i, o: seen.append(i[0].data_ptr())))
    src, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim', lean=True,
                                 pseudo={'threshold': 0.0, 'strength': 1.0, 'labels': True,
                                         'depth': True}, source_only=True)
    for h in hooks:
        h.remove()
    assert calls == [] and seen == [batch['image'].data_ptr()]   # E_R on the sim frames only
    assert list(src) == list(losses.STAGE2_TERMS)
    sup, _ = losses.supervised_terms(net, batch, cfg)
    torch.testing.assert_close(src['depth_real'], sup['depth'])   # eqs 16, 19 as sim_only's
    torch.testing.assert_close(src['ce_real'], sup['ce'])
    others = [k for k in src if k not in ('depth_real', 'ce_real')]
    assert others and all(src[k].item() == 0.0 for k in others)
    sum(src.values()).backward()
    assert net.enc_real.layers[0][0].weight.grad is not None
    assert all(p.grad is None for p in net.critic.parameters())


def test_training_with_source_steps_switches_to_every_term_after_them(tiny_data, tmp_path):
    from training import train
    cfg = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                      + ['data.eval.val_fraction=0.25', 'train.stage1_steps=1',
                         'train.stage2_steps=4', 'train.stage2_source_steps=2',
                         'train.log_every=1', 'train.stage2_lean=true',
                         'train.stage2_real_input=sim', 'model.skips=shared',
                         'model.shared_layers=8', 'loss.s2_adv=0.1',
                         'loss.s2_pseudo_depth=1.0'])
    summary = train.run(cfg, tmp_path, method='twin_vae')
    rows = (tmp_path / 'logs' / 'stage2.csv').read_text().splitlines()
    steps = [dict(zip(rows[0].split(','), r.split(','))) for r in rows[1:]]
    assert [int(r['step']) for r in steps] == [1, 2, 3, 4]
    for r in steps:
        adapting = int(r['step']) > 2
        assert float(r['ce_real']) > 0
        for name in ('s2_kl_real', 's2_kl_sim', 's2_adv', 's2_pseudo_depth'):
            assert (float(r[name]) != 0.0) == adapting, (r['step'], name)
    assert load_depth_seg_net(summary['export_dir'])[0] is not None
    bad = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                      + ['train.stage1_steps=1', 'train.stage2_source_steps=-1'])
    with pytest.raises(ValueError, match='stage2_source_steps'):
        train.run(bad, tmp_path / 'bad', method='twin_vae')


def test_strong_view_is_a_photometric_re_rendering():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.allclose(losses.strong_view(x, 0.0), x, atol=1e-3)   # strength 0: identity
    torch.manual_seed(1)
    a = losses.strong_view(x)
    torch.manual_seed(1)
    assert torch.equal(a, losses.strong_view(x))                      # torch's RNG: resumable
    assert a.shape == x.shape and float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    per_frame = (a - x).abs().mean(dim=(1, 2, 3))
    assert bool((per_frame > 0.01).all())                             # every frame re-rendered


def test_pseudo_terms_train_on_confident_own_labels():
    cfg = model_cfg(skips='shared', shared_layers=8)
    torch.manual_seed(0)
    net = TwinVAE(cfg).eval()          # eval: z = mu, so a strength-0 view is the clean one
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    mu, _, feats = net.encode_skips(x, 'real')
    ce, depth = losses.pseudo_terms(net, x, mu, feats, threshold=0.0, strength=0.0)
    logits = net.decode(mu, 'seg', feats)
    want = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
    assert ce.item() == pytest.approx(want.item(), rel=1e-4)          # its own argmax labels
    assert depth.item() < 1e-5                                        # same view, same depth
    none, _ = losses.pseudo_terms(net, x, mu, feats, threshold=1.01, strength=0.0)
    assert none.item() == 0.0                                         # nothing confident
    calls = []
    hook = net.dec_seg.register_forward_hook(lambda *a: calls.append('seg'))
    off, depth_only = losses.pseudo_terms(net, x, mu, feats, threshold=0.0, labels=False)
    hook.remove()
    assert off.item() == 0.0 and depth_only.item() > 0 and not calls  # no label head run
    net.train()
    feats = {k: f.detach() for k, f in feats.items()}
    ce, depth = losses.pseudo_terms(net, x, mu.detach(), feats, threshold=0.0)
    assert depth.item() > 0
    (ce + depth).backward()
    for module in (net.enc_real, net.dec_seg, net.dec_depth):         # the student learns
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in module.parameters())


def test_class_mix_mask_pastes_whole_classes_half_of_them():
    labels = torch.full((3, 8, 8), 255)
    labels[:, :, :2], labels[:, :, 2:4], labels[:, :, 4:6], labels[:, :, 6:] = 1, 3, 5, 7
    labels[1] = 4                                   # one class only: that class is pasted
    torch.manual_seed(0)
    m = losses.class_mix_mask(labels, torch.tensor([True, True, False]))
    torch.manual_seed(0)
    assert torch.equal(m, losses.class_mix_mask(labels, torch.tensor([True, True, False])))
    picked = labels[0][m[0]].unique()
    assert picked.numel() == 2 and bool((m[0] == torch.isin(labels[0], picked)).all())
    assert bool(m[1].all()) and not bool(m[2].any())   # unlabelled frame: nothing pasted
    assert not bool(m[0][labels[0] == 255].any())


def test_classmix_self_training_learns_the_pasted_sim_labels():
    cfg = model_cfg(skips='shared', shared_layers=8)
    torch.manual_seed(0)
    net = TwinVAE(cfg).eval()
    x_r, x_s = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    sim_labels = torch.stack([torch.full((128, 128), 2), torch.full((128, 128), 9)])
    mu, _, feats = net.encode_skips(x_r, 'real')
    mu_s, _, f_s = net.encode_skips(x_s, 'real')
    mix = {'image': x_s, 'labels': sim_labels, 'has_labels': None,
           'depth': net.decode(mu_s, 'depth', f_s)}
    # One class per sim frame: the whole frame is pasted, so the view is the sim frame, the
    # targets are its labels (even with no confident real pixel) and its own depth.
    ce, depth = losses.pseudo_terms(net, x_r, mu, feats, threshold=1.01, strength=0.0,
                                    mix=mix)
    want = torch.nn.functional.cross_entropy(net.decode(mu_s, 'seg', f_s), sim_labels)
    assert ce.item() == pytest.approx(want.item(), rel=1e-4)
    assert depth.item() < 1e-5
    plain, _ = losses.pseudo_terms(net, x_r, mu, feats, threshold=1.01, strength=0.0)
    assert plain.item() == 0.0                                        # without the mix: none
    cfg2, net2, x_r2, batch = lean_stage2_inputs()
    with pytest.raises(ValueError, match='pseudo_mix'):
        losses.stage2_terms(net2, batch, x_r2, cfg2, real_input='sim', lean=True,
                            pseudo={'threshold': 0.0, 'strength': 1.0, 'mix': 'cutmix'})
    terms, _ = losses.stage2_terms(net2, batch, x_r2, cfg2, real_input='sim', lean=True,
                                   pseudo={'threshold': 0.9, 'strength': 1.0,
                                           'mix': 'classmix'})
    assert terms['s2_pseudo_ce'].item() > 0
    sum(terms.values()).backward()


def test_stage2_self_training_terms_are_off_unless_asked():
    cfg, net, x_r, batch = lean_stage2_inputs()
    off, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim', lean=True)
    assert off['s2_pseudo_ce'].item() == 0.0 and off['s2_pseudo_depth'].item() == 0.0
    on, _ = losses.stage2_terms(net, batch, x_r, cfg, real_input='sim', lean=True,
                                pseudo={'threshold': 0.0, 'strength': 1.0})
    assert on['s2_pseudo_ce'].item() > 0 and on['s2_pseudo_depth'].item() > 0
    assert list(on) == list(losses.STAGE2_TERMS)
    sum(on.values()).backward()


@pytest.mark.parametrize('norm', ['l2', 'l1'])
def test_stage_loss_reads_the_depth_norm(norm):
    from training.train import StageLoss
    cfg, net, x_r, batch = lean_stage2_inputs()
    loss_cfg = {**load_config('test')['loss'], 'depth_norm': norm}
    terms, images = StageLoss(net, 'stage2', cfg, loss_cfg, 'sim', lean=True)(
        batch, {'image': x_r})
    expected = {n: losses.depth_loss(images['depth_pred'], batch['depth'], cfg,
                                     batch['labels'], norm=n).item() for n in ('l2', 'l1')}
    assert abs(expected['l1'] - expected['l2']) > 1e-3
    assert terms['depth_real'].item() == pytest.approx(expected[norm], rel=1e-5)
    sup, sup_images = StageLoss(net, 'supervised', cfg, loss_cfg)(batch)
    assert sup['depth'].item() == pytest.approx(losses.depth_loss(
        sup_images['depth_pred'], batch['depth'], cfg, batch['labels'], norm=norm).item(),
        rel=1e-5)


@pytest.mark.parametrize('mix', ['none', 'classmix'])
def test_training_with_self_training_logs_its_terms(tiny_data, tmp_path, mix):
    from training import train
    cfg = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                      + ['data.eval.val_fraction=0.25', 'train.stage1_steps=1',
                         'train.stage2_steps=2', 'loss.s2_pseudo_ce=1.0',
                         'loss.s2_pseudo_depth=1.0', 'loss.pseudo_threshold=0.0',
                         f'loss.pseudo_mix={mix}'])
    summary = train.run(cfg, tmp_path, method='twin_vae')
    rows = (tmp_path / 'logs' / 'stage2.csv').read_text().splitlines()
    header = rows[0].split(',')
    last = dict(zip(header, rows[-1].split(',')))
    assert float(last['s2_pseudo_ce']) > 0 and float(last['s2_pseudo_depth']) > 0
    assert load_depth_seg_net(summary['export_dir'])[0] is not None


def test_training_without_eqs_12_13_leaves_the_sim_stem_untrained(tiny_data, tmp_path):
    from training import train
    from training.checkpoint import load_checkpoint
    cfg = load_config('test', [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')]
                      + ['data.eval.val_fraction=0.25', 'train.stage1_steps=1',
                         'train.stage2_steps=2', 'train.stage2_lean=true',
                         'train.stage2_real_input=sim', 'model.skips=shared',
                         'model.shared_layers=8', 'loss.s2_kl_sim=0.0', 'loss.s2_mmd_s2r=0.0'])
    summary = train.run(cfg, tmp_path, method='twin_vae')   # E_S's stem has no gradient
    nets = {}
    for tag in ('stage1_last', 'stage2_last'):
        nets[tag] = TwinVAE(cfg['model'])
        load_checkpoint(tmp_path / 'checkpoints', tag, nets[tag])
    a, b = nets['stage1_last'], nets['stage2_last']
    assert torch.equal(a.enc_sim.layers[0][0].weight, b.enc_sim.layers[0][0].weight)
    assert not torch.equal(a.enc_real.layers[0][0].weight, b.enc_real.layers[0][0].weight)
    assert not torch.equal(a.enc_real.layers[-1][0].weight, b.enc_real.layers[-1][0].weight)
    assert load_depth_seg_net(summary['export_dir'])[0] is not None


def test_cosine_lr_decays_to_zero_and_constant_is_the_paper():
    from training.train import lr_at
    cos = {'lr': 2.0, 'lr_schedule': 'cosine'}
    assert lr_at(cos, 0, 10) == 2.0 and lr_at(cos, 5, 10) == pytest.approx(1.0)
    assert lr_at(cos, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at({'lr': 2.0, 'lr_schedule': 'constant'}, 7, 10) == 2.0
    with pytest.raises(ValueError, match='lr_schedule'):
        lr_at({'lr': 1.0, 'lr_schedule': 'step'}, 0, 10)


def test_the_inference_package_never_imports_training(repo_root):
    """Two rooms, one door: a robot installs sim2real_perception without training/."""
    import ast
    offenders = []
    for path in sorted((repo_root / 'sim2real_perception').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level \
                else []
            offenders += [f'{path.name}: {n}' for n in names if n.split('.')[0] == 'training']
    assert offenders == []


def test_analysis_can_gate_a_trained_network_after_training(variant_dirs):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))
    from analyse_depth_errors import gate_ground
    p = Predictor.from_path(variant_dirs['prior_residual'], backend='torch', device='cpu',
                            sky_as_infinity=False)
    net = p.runner.net
    last = net.dec_seg.layers[-1][0]
    with torch.no_grad():   # a network sure that every pixel is road
        last.weight.zero_()
        last.bias.fill_(-30.0)
        last.bias[CLASS_NAMES.index('road')] = 30.0
    img = test_image(128, 128, seed=4)
    before = p.predict(img).depth
    assert gate_ground(p)
    after = p.predict(img).depth
    prior = decode_depth(torch.tanh(net.prior.depth_code[0, 0]), net.cfg.depth_encoding,
                         net.cfg.min_depth, net.cfg.max_depth).numpy()
    assert not np.allclose(before, prior, rtol=1e-3)
    assert np.allclose(after, prior, rtol=1e-4)
    assert gate_ground(p) is False   # gated once only
    for name in ('mean_prior', 'prior_gate_ground'):   # no prior; a gate of its own
        other = Predictor.from_path(variant_dirs[name], backend='torch', device='cpu')
        assert gate_ground(other) is False


def test_depth_error_analysis_gives_each_class_its_signed_error(variant_dirs):
    """bench/analyse_depth_errors.py: too far is +, too near is -, per class, by hand."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))
    from analyse_depth_errors import markdown, score_model
    p = Predictor.from_path(variant_dirs['mean_prior'], backend='torch', device='cpu',
                            sky_as_infinity=False)
    img = test_image(128, 128, seed=4)
    pred = p.predict(img).depth.astype(np.float64)
    labels = np.zeros(pred.shape, np.int16)
    labels[:, 64:] = CLASS_NAMES.index('car')
    gt = np.where(labels == 0, pred, pred / 2.0)        # cars: predicted twice as far
    gt[0, :] = np.inf                                   # unscored
    got = score_model(p, [(img, gt.astype(np.float32), labels)], 0.0, 1000.0)['per_class']
    assert got['car']['signed'] == pytest.approx(1.0, rel=1e-4)
    assert got['car']['abs_rel'] == pytest.approx(1.0, rel=1e-4)
    assert abs(got[CLASS_NAMES[0]]['signed']) < 1e-5
    assert got['car']['share'] == pytest.approx(0.5, rel=0.02)
    table = markdown({'rows': {'prior': {'per_class': got, 'abs_rel': 0.5, 'abs_rel_blurred': 0.5,
                                         'road_signed': 0.0, 'road_abs_rel': 0.0,
                                         'seeds': [{'seed': 0}]}},
                      'data': {'domain': 'sim'}, 'blur_sigma': 0.0, 'resolution_bound': None})
    assert 'sim val split' in table and '| car | 0.500 | +1.000 |' in table
