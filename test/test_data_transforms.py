"""Transforms: nearest labels, depth that never interpolates across invalid pixels, seeding."""
import numpy as np
import pytest

from training.data.dataset import FrameDataset
from training.data.frame_source import FrameSource, Sample
from training.data.transforms import (color_jitter, fit_frame, hflip, resize_depth,
                                      resize_labels)


def test_resize_labels_nearest_pixel_centres():
    labels = np.arange(8 * 6, dtype=np.uint8).reshape(8, 6)
    down = resize_labels(labels, 4, 3)
    np.testing.assert_array_equal(down, labels[1::2, 1::2])
    up = resize_labels(labels, 16, 12)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(labels, 2, 0), 2, 1))
    odd = resize_labels(labels, 5, 7)
    assert set(np.unique(odd)) <= set(np.unique(labels))


def test_resize_depth_never_invents_values():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 50, (12, 16)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.6] = 0.0   # sparse, LiDAR-like
    depth[0, 0] = np.nan                          # also invalid
    depth[:2, 8:] = np.inf                        # sky block
    source = set(depth[np.isfinite(depth) & (depth > 0)].tolist()) | {0.0, np.inf}
    for h, w in ((6, 8), (4, 4), (5, 7), (24, 32), (9, 20)):
        out = resize_depth(depth, h, w)
        assert out.shape == (h, w) and out.dtype == np.float32
        assert set(out.ravel().tolist()) <= source
        assert not np.isnan(out).any()
    out = resize_depth(depth, 6, 8)
    assert np.isposinf(out[0, 4:]).all()          # sky stays far
    # a 2x2 cell with no valid pixel stays invalid; otherwise a valid value of the cell
    for i in range(6):
        for j in range(8):
            cell = depth[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            valid = cell[np.isfinite(cell) & (cell > 0) | np.isposinf(cell)]
            if valid.size == 0:
                assert out[i, j] == 0
            else:
                assert out[i, j] in valid


def test_sparse_points_survive_downscaling():
    depth = np.zeros((40, 40), np.float32)
    depth[5, 7] = 12.5          # one LiDAR return per 8x8 cell, off-centre
    depth[21, 30] = 3.25
    out = resize_depth(depth, 5, 5)
    assert out[0, 0] == 12.5 and out[2, 3] == 3.25
    assert np.count_nonzero(out) == 2
    # where the centre pixel is valid it wins over nearer values in the cell (no blending)
    dense = np.full((4, 4), 10.0, np.float32)
    dense[0, 0] = 1.0
    assert resize_depth(dense, 2, 2)[0, 0] == 10.0


def _frame(h=30, w=50):
    labels = (np.arange(h * w).reshape(h, w) % 11).astype(np.uint8)
    depth = labels.astype(np.float32) + 1.0         # depth encodes the label: alignment check
    image = np.repeat(labels[..., None] * 20, 3, axis=2).astype(np.uint8)
    return {'image': image, 'depth': depth, 'labels': labels, 'name': 'x'}


@pytest.mark.parametrize('mode', ['crop', 'stretch'])
@pytest.mark.parametrize('size', [(16, 16), (32, 64), (60, 40)])
def test_fit_frame_keeps_depth_labels_aligned(mode, size):
    rng = np.random.default_rng(3)
    out = fit_frame(_frame(), *size, mode, rng)
    assert out['image'].shape == (*size, 3) and out['labels'].shape == size
    assert out['depth'].shape == size
    np.testing.assert_array_equal(out['depth'], out['labels'].astype(np.float32) + 1.0)


def test_fit_frame_random_crop_is_seeded():
    a = fit_frame(_frame(), 16, 16, 'crop', np.random.default_rng(7))
    b = fit_frame(_frame(), 16, 16, 'crop', np.random.default_rng(7))
    np.testing.assert_array_equal(a['labels'], b['labels'])
    centred = fit_frame(_frame(), 16, 16, 'crop', None)
    offsets = {fit_frame(_frame(), 16, 16, 'crop', np.random.default_rng(s))['labels'][0, 0]
               for s in range(20)}
    assert len(offsets) > 1 and centred['labels'].shape == (16, 16)
    with pytest.raises(ValueError, match='resize mode'):
        fit_frame(_frame(), 16, 16, 'squash')


def test_hflip():
    frame = _frame()
    out = hflip(frame)
    for key in ('image', 'depth', 'labels'):
        np.testing.assert_array_equal(out[key], frame[key][:, ::-1])
    assert hflip({'image': frame['image'], 'depth': None})['depth'] is None


def test_color_jitter_seeded():
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    a = color_jitter(image, 0.3, np.random.default_rng(1))
    b = color_jitter(image, 0.3, np.random.default_rng(1))
    c = color_jitter(image, 0.3, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.dtype == np.uint8
    np.testing.assert_array_equal(color_jitter(image, 0.0, np.random.default_rng(1)), image)


class _Frames(FrameSource):
    def __init__(self):
        super().__init__()
        self.samples = [Sample(f'f{i}', 'g') for i in range(4)]

    def load_sample(self, sample):
        frame = _frame(20, 24)
        frame['image'] = frame['image'] + np.uint8(int(sample.name[1:]))
        return frame


def test_dataset_augmentation_reproducible_per_seed_epoch_index():
    def item(seed, epoch, index):
        ds = FrameDataset(_Frames(), range(4), 16, 16, train=True, seed=seed, jitter=0.2)
        ds.set_epoch(epoch)
        return ds[index]
    a, b = item(0, 0, 1), item(0, 0, 1)
    for key in ('image', 'depth', 'labels'):
        assert a[key].equal(b[key])
    assert any(not item(0, e, 1)['image'].equal(a['image']) for e in range(1, 4))
    assert a['image'].min() >= -1 and a['image'].max() <= 1
    assert a['depth'].shape == (1, 16, 16) and a['labels'].dtype.is_floating_point is False
    np.testing.assert_array_equal(a['depth'][0].numpy(), a['labels'].numpy() + 1.0)
