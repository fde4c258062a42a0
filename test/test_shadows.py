# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""Cast-shadow randomisation of sim frames (data.sim.shadow_aug) and the intrinsics it reads.

The scene is built by hand: a flat road 1.65 m below the camera and a 3 m wall across it at
10 m, so where the wall's shadow falls for a given sun follows from geometry alone.
"""
import numpy as np
import pytest
import torch

from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX
from training.data.data_config import resolve
from training.data.dataset import FrameDataset
from training.data.shadows import cast_shadow_aug, ground_pixels, shadow_mask, sun_vector
from training.data.transforms import fit_frame, hflip

ROAD, BUILDING, SKY = (CLASS_NAMES.index(n) for n in ('road', 'building', 'sky'))
H, W, F, HEIGHT, WALL_Z, WALL_TOP = 96, 192, 120.0, 1.65, 10.0, 3.0
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]], np.float32)


def street(sidewalk=False):
    """Depth, labels and the ground's (x, z) per pixel of the hand-built scene."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    ray_y, ray_x = (v - K[1, 2]) / F, (u - K[0, 2]) / F
    depth = np.full((H, W), np.inf, np.float32)
    labels = np.full((H, W), SKY, np.uint8)
    below = ray_y > 1e-3
    z_ground = np.where(below, HEIGHT / np.maximum(ray_y, 1e-3), np.inf)
    ground = below & (z_ground < 200)
    depth[ground], labels[ground] = z_ground[ground], ROAD
    x_ground = np.where(below, ray_x * np.where(below, z_ground, 0.0), np.inf)
    if sidewalk:
        labels[ground & (x_ground > 4)] = IGNORE_INDEX   # unlabelled, at road height
    x_wall, y_wall = ray_x * WALL_Z, ray_y * WALL_Z               # camera y points down
    wall = (np.abs(x_wall) < 2) & (y_wall < HEIGHT) & (y_wall > HEIGHT - WALL_TOP)
    depth[wall], labels[wall] = WALL_Z, BUILDING
    return depth, labels, x_ground, z_ground


def test_the_wall_shadows_the_road_in_front_of_it_when_the_sun_is_beyond_it():
    depth, labels, x, z = street()
    sun = sun_vector(0.0, 45.0)   # straight ahead, 45 deg up: a 3 m shadow towards us
    mask = shadow_mask(depth, labels, K, sun)
    visible_road = labels == ROAD
    core = visible_road & (np.abs(x) < 1.5) & (z > WALL_Z - 2.5) & (z < WALL_Z - 0.5)
    lit = visible_road & ((z < WALL_Z - 4.5) | (np.abs(x) > 3.5))
    assert core.sum() > 20 and lit.sum() > 1000
    assert mask[core].mean() > 0.9
    assert mask[lit].mean() < 0.02
    assert not mask[labels != ROAD].any()   # only ground receives
    behind = shadow_mask(depth, labels, K, sun_vector(180.0, 45.0))   # sun behind the camera
    assert behind[visible_road & (z < WALL_Z)].mean() < 0.02


def test_unlabelled_ground_receives_shadows_unlabelled_objects_do_not():
    depth, labels, x, z = street(sidewalk=True)
    ground = ground_pixels(depth, labels, K)
    assert ground[labels == IGNORE_INDEX].all() and ground[labels == ROAD].all()
    assert not ground[(labels == BUILDING) | (labels == SKY)].any()
    labels_obj = labels.copy()
    labels_obj[labels == BUILDING] = IGNORE_INDEX   # an unlabelled wall stands above the road
    rows = np.arange(H)[:, None] + np.zeros((1, W))
    above = (labels == BUILDING) & ((rows - K[1, 2]) / F * WALL_Z < HEIGHT - 0.3)
    assert above.sum() > 500 and not ground_pixels(depth, labels_obj, K)[above].any()
    # A shadow falling towards the camera and right (the sun ahead and to the left) reaches
    # the unlabelled strip right of x = 4 m.
    mask = shadow_mask(depth, labels, K, sun_vector(-35.0, 35.0))
    assert mask[labels == IGNORE_INDEX].any()


def test_cast_shadow_aug_darkens_ground_only_and_is_seeded():
    depth, labels, _, _ = street()
    image = np.full((H, W, 3), 150, np.uint8)
    assert cast_shadow_aug(image, depth, labels, K, 0.0, np.random.default_rng(0)) is image
    assert cast_shadow_aug(image, None, labels, K, 1.0, np.random.default_rng(0)) is image
    darkened = 0
    for seed in range(12):
        out = cast_shadow_aug(image, depth, labels, K, 1.0, np.random.default_rng(seed))
        again = cast_shadow_aug(image, depth, labels, K, 1.0, np.random.default_rng(seed))
        assert np.array_equal(out, again)
        assert (out <= image).all()   # shadows only darken
        changed = (out != image).any(-1)
        # a pixel of penumbra may reach past the road's edge, never far
        assert not changed[:H // 2 - 2].any()
        darkened += int(changed.any())
    assert darkened >= 3


def test_fit_frame_and_hflip_carry_the_intrinsics_with_the_pixels():
    rng = np.random.default_rng(0)
    point = np.array([1.5, -0.4, 12.0], np.float32)    # a 3-D point and where it projects

    def project(k):
        p = k @ point
        return p[:2] / p[2]
    k = np.array([[300, 0, 310], [0, 290, 95], [0, 0, 1]], np.float32)
    frame = {'image': np.zeros((192, 640, 3), np.uint8), 'intrinsics': k}
    u, v = project(k)
    for mode in ('stretch', 'crop'):
        out = fit_frame(frame, 128, 256, mode, rng)
        sx, sy = (256 / 640, 128 / 192) if mode == 'stretch' else (128 / 192, 128 / 192)
        uu, vv = project(out['intrinsics'])
        if mode == 'stretch':   # pixel centres scale about the corner
            assert uu == pytest.approx(u * sx, abs=1e-3) and vv == pytest.approx(v * sy, abs=1e-3)
        else:   # scaled by the cover factor, then shifted by the crop offset
            assert vv == pytest.approx(v * sy, abs=1e-3)
            assert 0 <= u * sx - uu <= 427 - 256 + 1e-3
    flipped = hflip({'image': np.zeros((128, 256, 3), np.uint8), 'intrinsics': K * 1})
    assert flipped['intrinsics'][0, 2] == pytest.approx(255 - K[0, 2])
    assert np.array_equal(flipped['intrinsics'][1], K[1])


class _Street:
    """A two-frame reader of the hand-built street (intrinsics included)."""

    def load(self, i):
        depth, labels, _, _ = street()
        return {'image': np.full((H, W, 3), 140, np.uint8), 'depth': depth, 'labels': labels,
                'intrinsics': K, 'name': f'f{i}'}


def test_dataset_casts_shadows_on_training_frames_only_when_asked():
    def images(shadow, train=True):
        ds = FrameDataset(_Street(), [0, 1], H, W, train=train, seed=1, flip=True,
                          shadow=shadow)
        return [ds[i]['image'] for i in range(2) for ds.epoch in range(4)]
    plain = images(0.0)
    assert all(torch.equal(a, b) for a, b in zip(images(1.0, train=False), images(0.0, False)))
    shaded = images(1.0)
    assert any((a - b).abs().max() > 0.05 for a, b in zip(shaded, plain))
    assert all((a <= b + 1e-6).all() for a, b in zip(shaded, plain))


def test_shadow_aug_must_not_be_negative():
    base = {'format': 'procedural_sim', 'root': 'anywhere'}
    assert resolve(base)['shadow_aug'] == 0.0
    with pytest.raises(ValueError, match='shadow_aug'):
        resolve({**base, 'shadow_aug': -0.5})
