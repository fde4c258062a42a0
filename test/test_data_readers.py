"""Dataset readers on tiny fixture trees written here in each real format.

Every fixture uses the documented encodings (VKITTI 2: JPEG, uint16 cm depth with 65535 =
sky, colour-coded classgt + colors.txt; KITTI: uint16 metres*256 with 0 = none, Cityscapes
ids), so the checks are exact: metres, class ids and masks.
"""
import cv2
import numpy as np
import pytest

from sim2real_perception.labels import (CLASS_NAMES, IGNORE_INDEX, PALETTE,
                                        VKITTI2_DEFAULT_COLORS)
from training.data import DataError, build_dataset, iter_frames, open_source
from training.data.image_files import write_png, write_rgb
from training.data.vkitti2 import write_colors_txt

C = {name: i for i, name in enumerate(CLASS_NAMES)}
H, W = 23, 37  # odd sizes on purpose


def _rgb(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _truncate(path, keep=40):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


# -- Virtual KITTI 2 -------------------------------------------------------------------------
VK_CATS = ('Road', 'Sky', 'Car', 'Van', 'Tree', 'Misc')


def _vk_frame(root, scene, variation, k, cm, cats, colors=None):
    """Write one VKITTI 2 frame: rgb jpg, depth cm png, classgt from category names."""
    base = root / scene / variation / 'frames'
    write_rgb(base / 'rgb' / 'Camera_0' / f'rgb_{k:05d}.jpg', _rgb(k))
    write_png(base / 'depth' / 'Camera_0' / f'depth_{k:05d}.png', cm)
    colors = colors or VKITTI2_DEFAULT_COLORS
    gt = np.array([colors[c] for c in cats.ravel()], np.uint8).reshape(*cats.shape, 3)
    write_rgb(base / 'classSegmentation' / 'Camera_0' / f'classgt_{k:05d}.png', gt)
    return gt


@pytest.fixture
def vk(tmp_path):
    """Write two scenes; Scene01 has its own colours (Car recoloured) and intrinsics."""
    root = tmp_path / 'vkitti2'
    cm = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7 + 1
    cm[0, :5] = 65535           # sky
    cm[1, :3] = 0               # no value -> 0 (invalid)
    cats = np.array(VK_CATS)[np.arange(H * W).reshape(H, W) % len(VK_CATS)]
    colors = dict(VKITTI2_DEFAULT_COLORS, Car=(1, 2, 3))
    for k in range(3):
        _vk_frame(root, 'Scene01', 'clone', k, cm, cats, colors)
    write_colors_txt(root / 'Scene01' / 'clone' / 'colors.txt', colors)
    (root / 'Scene01' / 'clone' / 'intrinsic.txt').write_text(
        'frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n'
        + ''.join(f'{k} 0 725.0087 725.0087 620.5 187\n{k} 1 725.0087 725.0087 620.5 187\n'
                  for k in range(3)))
    for variation in ('clone', 'fog'):   # no colors.txt: published default colours
        _vk_frame(root, 'Scene02', variation, 0, cm, cats)
    return {'root': root, 'cm': cm, 'cats': cats}


def _expected_labels(cats):
    table = {'Road': C['road'], 'Sky': C['sky'], 'Car': C['car'], 'Van': C['van'],
             'Tree': C['vegetation'], 'Misc': IGNORE_INDEX}
    return np.vectorize(table.get)(cats).astype(np.uint8)


def test_vkitti2_depth_labels_exact(vk):
    source = open_source({'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene01']})
    assert [s.name for s in source.samples] == [f'Scene01/clone/Camera_0/{k:05d}'
                                                for k in range(3)]
    frame = source.load(1)
    assert frame['image'].shape == (H, W, 3) and frame['image'].dtype == np.uint8
    depth = frame['depth']
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    cm = vk['cm']
    finite = (cm != 65535)
    np.testing.assert_array_equal(depth[finite], cm[finite].astype(np.float32) / 100.0)
    assert np.isposinf(depth[0, :5]).all() and (depth[1, :3] == 0).all()
    np.testing.assert_array_equal(frame['labels'], _expected_labels(vk['cats']))
    assert frame['group'] == 'Scene01/clone'
    np.testing.assert_allclose(frame['intrinsics'], [[725.0087, 0, 620.5], [0, 725.0087, 187],
                                                     [0, 0, 1]])


def test_vkitti2_variations_and_default_colours(vk):
    source = open_source({'format': 'vkitti2', 'root': vk['root'], 'variations': []})
    groups = sorted({s.group for s in source.samples})
    assert groups == ['Scene01/clone', 'Scene02/clone', 'Scene02/fog']
    only_fog = open_source({'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene02'],
                            'variations': ['fog']})
    assert len(only_fog) == 1
    frame = only_fog.load(0)
    np.testing.assert_array_equal(frame['labels'], _expected_labels(vk['cats']))
    assert 'intrinsics' not in frame
    with pytest.raises(DataError, match='Scene02/rain'):
        open_source({'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene02'],
                     'variations': ['rain']})


def test_vkitti2_unknown_colour_strict_and_not(vk):
    path = (vk['root'] / 'Scene01' / 'clone' / 'frames' / 'classSegmentation' / 'Camera_0'
            / 'classgt_00002.png')
    gt = cv2.imread(str(path))
    gt[3, 4] = (9, 8, 7)      # BGR of an undeclared colour
    gt[5, 6] = (9, 8, 7)
    cv2.imwrite(str(path), gt)
    cfg = {'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene01']}
    source = open_source(cfg)
    with pytest.raises(DataError, match='classgt_00002.png') as info:
        source.load(2)
    assert '2 pixels' in str(info.value) and '(7, 8, 9)' in str(info.value)
    lenient = open_source({**cfg, 'strict_colors': False})
    frame = lenient.load(2)
    expected = _expected_labels(vk['cats'])
    expected[3, 4] = expected[5, 6] = IGNORE_INDEX
    np.testing.assert_array_equal(frame['labels'], expected)
    assert lenient.unknown_colors == [(str(path), 2)]


def test_vkitti2_missing_pair_and_truncated(vk):
    frames = vk['root'] / 'Scene01' / 'clone' / 'frames'
    (frames / 'depth' / 'Camera_0' / 'depth_00001.png').unlink()
    cfg = {'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene01']}
    with pytest.raises(DataError, match='depth_00001.png: missing pair of .*rgb_00001.jpg'):
        open_source(cfg)
    _truncate(frames / 'classSegmentation' / 'Camera_0' / 'classgt_00002.png')
    source = open_source({**cfg, 'skip_bad': True})
    assert [s.name[-5:] for s in source.samples] == ['00000']
    assert len(source.skipped) == 2
    assert source.skipped[0][0].endswith('depth_00001.png')
    assert source.skipped[1][0].endswith('classgt_00002.png')
    assert 'truncated PNG' in source.skipped[1][1]


def test_truncated_file_raises_on_load_naming_it(vk):
    path = vk['root'] / 'Scene01' / 'clone' / 'frames' / 'rgb' / 'Camera_0' / 'rgb_00000.jpg'
    _truncate(path, 300)
    depth = vk['root'] / 'Scene01' / 'clone' / 'frames' / 'depth' / 'Camera_0'
    _truncate(depth / 'depth_00001.png', 100)
    source = open_source({'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene01']})
    with pytest.raises(DataError, match=r'rgb_00000\.jpg: truncated JPEG'):
        source.load(0)
    with pytest.raises(DataError, match=r'depth_00001\.png: truncated PNG'):
        source.load(1)
    assert source.load(2)['depth'].shape == (H, W)


def test_skip_bad_in_dataset_counts_failures(vk, tmp_path):
    cfg = {'format': 'vkitti2', 'root': vk['root'], 'scenes': ['Scene01'], 'skip_bad': True}
    source = open_source(cfg)
    # Damaged after indexing (e.g. a network file system): the dataset replaces the frame.
    path = vk['root'] / 'Scene01' / 'clone' / 'frames' / 'depth' / 'Camera_0' / 'depth_00000.png'
    path.write_bytes(b'not a png at all')
    ds = build_dataset(cfg, 'all', 16, 16, train=False, seed=0, source=source)
    with pytest.warns(UserWarning, match='depth_00000.png'):
        sample = ds[0]
    assert sample['name'].endswith('00001')
    assert len(ds.load_failures) == 1 and 'depth_00000.png' in ds.load_failures[0][1]
    with pytest.raises(DataError, match='depth_00000.png: not a readable image'):
        list(iter_frames({**cfg, 'skip_bad': False}))


# -- KITTI raw + depth annotations -----------------------------------------------------------
DRIVE = '2011_09_26_drive_0005_sync'


@pytest.fixture
def kitti_tree(tmp_path):
    """Write a raw drive of 6 frames, depth annotations (train/) for frames 1..4 (as KITTI)."""
    raw, ann = tmp_path / 'raw', tmp_path / 'depth_annotated'
    drive = raw / '2011_09_26' / DRIVE
    for k in range(6):
        write_rgb(drive / 'image_02' / 'data' / f'{k:010d}.png', _rgb(k))
    (drive / 'image_02' / 'timestamps.txt').write_text(''.join(
        f'2011-09-26 13:02:25.{k * 100_000_000 + 964389:09d}\n' for k in range(6)))
    (raw / '2011_09_26' / 'calib_cam_to_cam.txt').write_text(
        'calib_time: 09-Jan-2012 13:57:47\nP_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 '
        '4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 '
        '0.000000e+00 1.000000e+00 2.745884e-03\n')
    values = np.random.default_rng(5).integers(0, 65536, (H, W)).astype(np.uint16)
    values[::3] = 0
    for k in range(1, 5):
        write_png(ann / 'train' / DRIVE / 'proj_depth' / 'groundtruth' / 'image_02'
                  / f'{k:010d}.png', values)
    return {'raw': raw, 'ann': ann, 'values': values, 'drive': drive}


def test_kitti_raw_depth_exact(kitti_tree):
    cfg = {'format': 'kitti', 'root': kitti_tree['raw'], 'depth_root': kitti_tree['ann']}
    source = open_source(cfg)
    assert [s.name for s in source.samples] == [f'{DRIVE}/image_02/{k:010d}' for k in (1, 2, 3, 4)]
    frame = source.load(0)
    values = kitti_tree['values']
    assert frame['depth'].dtype == np.float32
    np.testing.assert_array_equal(frame['depth'], values.astype(np.float32) / 256.0)
    assert (frame['depth'][values == 0] == 0).all() and frame['depth'].max() <= 65535 / 256
    assert frame['labels'] is None             # real KITTI raw drives have no dense labels
    np.testing.assert_array_equal(frame['image'], _rgb(1))
    assert frame['stamp_ns'] == 1317042145 * 10**9 + 100_000_000 + 964389
    np.testing.assert_allclose(frame['intrinsics'], [[721.5377, 0, 609.5593],
                                                     [0, 721.5377, 172.854], [0, 0, 1]])
    sample = build_dataset(cfg, 'all', H, W, train=False, seed=0)[0]
    assert sample['has_depth'] and not sample['has_labels']
    assert (sample['labels'] == IGNORE_INDEX).all()


def test_kitti_without_depth_and_errors(kitti_tree):
    images_only = open_source({'format': 'kitti', 'root': kitti_tree['raw'],
                               'with_depth': False})
    assert len(images_only) == 6 and images_only.load(5)['depth'] is None
    with pytest.raises(DataError, match='with_depth: false'):
        open_source({'format': 'kitti', 'root': kitti_tree['raw']})   # no annotations there
    (kitti_tree['drive'] / 'image_02' / 'data' / '0000000003.png').unlink()
    cfg = {'format': 'kitti', 'root': kitti_tree['raw'], 'depth_root': kitti_tree['ann']}
    with pytest.raises(DataError, match=r'0000000003\.png: missing pair of .*groundtruth'):
        open_source(cfg)
    source = open_source({**cfg, 'skip_bad': True})
    assert len(source) == 3 and len(source.skipped) == 1
    with pytest.raises(DataError, match='drive 2011_09_26_drive_0009_sync not found'):
        open_source({**cfg, 'drives': ['2011_09_26_drive_0009']})


def test_kitti_semantics_ids(tmp_path):
    ids = np.zeros((H, W), np.uint8)
    ids[:5] = 23      # sky
    ids[5:10] = 7     # road
    ids[10, :10] = 26  # car
    ids[10, 10:20] = 29  # caravan: not a van -> ignore
    ids[11, :10] = 8   # sidewalk -> ignore
    ids[12, :10] = 21  # vegetation
    ids[13, :10] = 27  # truck
    for name in ('000000_10.png', '000001_10.png'):
        write_rgb(tmp_path / 'training' / 'image_2' / name, _rgb(3))
        write_png(tmp_path / 'training' / 'semantic' / name, ids)
    frame = open_source({'format': 'kitti_semantics', 'root': tmp_path}).load(0)
    labels = frame['labels']
    assert (labels[:5] == C['sky']).all() and (labels[5:10] == C['road']).all()
    assert (labels[10, :10] == C['car']).all() and (labels[10, 10:20] == IGNORE_INDEX).all()
    assert (labels[11, :10] == IGNORE_INDEX).all() and (labels[12, :10] == C['vegetation']).all()
    assert (labels[13, :10] == C['truck']).all() and (labels[14:] == IGNORE_INDEX).all()
    assert C['van'] not in labels       # Cityscapes has no van
    bad = ids.copy()
    bad[0, 0] = 40
    write_png(tmp_path / 'training' / 'semantic' / '000001_10.png', bad)
    with pytest.raises(DataError, match='000001_10.png: label id 40'):
        open_source({'format': 'kitti_semantics', 'root': tmp_path}).load(1)
    lenient = open_source({'format': 'kitti_semantics', 'root': tmp_path,
                           'strict_colors': False})
    assert lenient.load(1)['labels'][0, 0] == IGNORE_INDEX
    assert lenient.unknown_ids == [(str(tmp_path / 'training' / 'semantic' / '000001_10.png'), 1)]
    (tmp_path / 'training' / 'semantic' / '000000_10.png').unlink()
    with pytest.raises(DataError, match='000000_10.png: missing pair'):
        open_source({'format': 'kitti_semantics', 'root': tmp_path})


# -- plain folder ----------------------------------------------------------------------------
def test_image_folder(tmp_path):
    write_rgb(tmp_path / 'b' / 'x.png', _rgb(1))
    write_rgb(tmp_path / 'a.jpg', _rgb(2), jpeg_quality=100)
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    write_png(tmp_path / 'c.png', grey)
    (tmp_path / 'notes.txt').write_text('not an image')
    source = open_source({'format': 'folder', 'root': tmp_path})
    assert [s.name for s in source.samples] == ['a.jpg', 'b/x.png', 'c.png']
    np.testing.assert_array_equal(source.load(1)['image'], _rgb(1))
    np.testing.assert_array_equal(source.load(2)['image'], np.repeat(grey[..., None], 3, 2))
    assert source.load(0)['depth'] is None and source.load(0)['labels'] is None
    assert len(open_source({'format': 'folder', 'root': tmp_path, 'recursive': False})) == 2
    _truncate(tmp_path / 'c.png')
    skipping = open_source({'format': 'folder', 'root': tmp_path, 'skip_bad': True})
    assert len(skipping) == 2 and skipping.skipped[0][0].endswith('c.png')
    sample = build_dataset({'format': 'folder', 'root': tmp_path, 'skip_bad': True}, 'all',
                           16, 32, train=True, seed=1)[0]
    assert sample['image'].shape == (3, 16, 32) and not sample['has_depth']


def test_palette_is_the_one_colouring():
    assert PALETTE.shape == (256, 3) and (PALETTE[IGNORE_INDEX] == 0).all()
