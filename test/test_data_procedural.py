"""The procedural generator: real formats on disk, read back by the same readers, seeded."""
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from training.data import DataError, build_dataset, open_source
from training.data.make_procedural import build_parser, generate, main
from training.data.preview import save_preview
from training.data.street_scene import Camera, ray_cast, sample_layout
from training.data.street_style import RealStyle, SimStyle, real_look, render_real, render_sim

C = {name: i for i, name in enumerate(CLASS_NAMES)}
H, W = 48, 96
KW = dict(sim_frames=4, real_frames=4, height=H, width=W, seed=3, frames_per_sequence=2)


@pytest.fixture(scope='module')
def gen(tmp_path_factory):
    """4 sim viewpoints x 2 variations (2 scenes) and 4 real frames (2 drives), one worker."""
    root = tmp_path_factory.mktemp('proc') / 'data'
    manifest = generate(root, variations=('clone', 'fog'), workers=1, **KW)
    return root, manifest


def _files(root, pattern):
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def test_tree_is_vkitti2_and_kitti(gen):
    root, manifest = gen
    assert (root / 'manifest.json').is_file()
    assert not (root / '.make_procedural_incomplete').exists()
    on_disk = json.loads((root / 'manifest.json').read_text())
    assert on_disk['seed'] == 3 and on_disk['sim']['frames'] == 4
    assert on_disk['sim']['images'] == 8 and on_disk['real']['frames'] == 4
    assert on_disk['sim']['scenes'] == {'Scene01': 2, 'Scene02': 2}
    assert list(on_disk['real']['drives']) == ['2011_09_26_drive_0001_sync',
                                               '2011_09_26_drive_0002_sync']
    scene = root / 'vkitti2' / 'Scene02' / 'fog'
    assert (scene / 'colors.txt').read_text().startswith('Category r g b\n')
    for rel in ('frames/rgb/Camera_0/rgb_00001.jpg', 'frames/depth/Camera_0/depth_00001.png',
                'frames/classSegmentation/Camera_0/classgt_00001.png', 'intrinsic.txt'):
        assert (scene / rel).is_file(), rel
    depth = cv2.imread(str(scene / 'frames/depth/Camera_0/depth_00001.png'), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (H, W) and (depth == 65535).any()
    drive = root / 'kitti' / 'raw' / '2011_09_26' / '2011_09_26_drive_0002_sync'
    assert len((drive / 'image_02' / 'timestamps.txt').read_text().splitlines()) == 2
    assert (drive / 'image_02' / 'data' / '0000000001.png').is_file()
    ids = cv2.imread(str(drive / 'semantic' / 'image_02' / '0000000001.png'),
                     cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint8 and ids.ndim == 2
    assert set(np.unique(ids)) <= {7, 8, 11, 14, 17, 19, 20, 21, 22, 23, 26, 27}
    sparse = cv2.imread(str(root / 'kitti' / 'depth_annotated' / 'train'
                            / '2011_09_26_drive_0002_sync' / 'proj_depth' / 'groundtruth'
                            / 'image_02' / '0000000001.png'), cv2.IMREAD_UNCHANGED)
    assert sparse.dtype == np.uint16 and 0.02 < (sparse > 0).mean() < 0.8  # 64 beams, 48 rows
    assert 'P_rect_02:' in (root / 'kitti/raw/2011_09_26/calib_cam_to_cam.txt').read_text()


def test_read_back_through_build_dataset(gen):
    root, manifest = gen
    sim = build_dataset({'format': 'procedural_sim', 'root': str(root), 'variations': []},
                        'all', 32, 64, train=True, seed=0)
    real = build_dataset({'format': 'procedural_real', 'root': str(root)}, 'all', 32, 64,
                         train=False, seed=0)
    assert len(sim) == 8 and len(real) == 4
    for ds, dense in ((sim, True), (real, False)):
        for i in range(len(ds)):
            s = ds[i]
            assert s['image'].shape == (3, 32, 64) and s['image'].dtype.is_floating_point
            assert -1 <= s['image'].min() and s['image'].max() <= 1 and s['image'].std() > 0.05
            assert s['has_depth'] and s['has_labels']
            depth, labels = s['depth'][0].numpy(), s['labels'].numpy()
            assert s['depth'].shape == (1, 32, 64) and labels.shape == (32, 64)
            ids = set(np.unique(labels).tolist())
            assert ids <= set(range(NUM_CLASSES)) | {IGNORE_INDEX} and len(ids) >= 4
            finite = depth[np.isfinite(depth) & (depth > 0)]
            assert finite.min() > 0.3 and finite.max() < 700
            if dense:   # every pixel has depth: +inf exactly where the label is sky
                assert (depth > 0).all()
                np.testing.assert_array_equal(np.isinf(depth), labels == C['sky'])
            else:       # LiDAR lines: sparse, never on sky, within range
                assert 0.02 < (depth > 0).mean() < 0.8 and not np.isinf(depth).any()
                assert (depth[labels == C['sky']] == 0).all() and finite.max() < 81
                assert C['van'] not in ids   # KITTI/Cityscapes has no van class


def test_reader_intrinsics_match_manifest(gen):
    root, manifest = gen
    f = manifest['camera']['focal_px']
    k_sim = open_source({'format': 'procedural_sim', 'root': str(root)}).load(0)['intrinsics']
    k_real = open_source({'format': 'procedural_real', 'root': str(root)}).load(0)['intrinsics']
    expected = [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]
    np.testing.assert_allclose(k_sim, expected, rtol=1e-6)
    np.testing.assert_allclose(k_real, expected, rtol=1e-6)


def test_dense_real_depth_agrees_with_lidar(gen):
    root, _ = gen
    cfg = {'format': 'procedural_real', 'root': str(root)}
    sparse = open_source(cfg).load(2)
    dense = open_source({**cfg, 'depth_type': 'dense'}).load(2)
    hit = sparse['depth'] > 0
    # LiDAR returns carry 2 cm noise around the true depth
    assert np.abs(sparse['depth'][hit] - dense['depth'][hit]).max() < 0.15
    np.testing.assert_array_equal(sparse['labels'], dense['labels'])


def test_same_seed_identical_bytes_any_workers(gen, tmp_path):
    root, _ = gen
    again = tmp_path / 'again'
    generate(again, variations=('clone', 'fog'), workers=2, **KW)
    files = [p.relative_to(root) for p in _files(root, '*.png') + _files(root, '*.jpg')
             + _files(root, '*.txt')]
    assert len(files) == 8 * 3 + 4 * 4 + 2 * 4 + 2 + 1   # + colors, intrinsics, stamps, calib
    for rel in files:
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert (again / 'manifest.json').read_text() == (root / 'manifest.json').read_text()
    other = tmp_path / 'other'
    generate(other, **{**KW, 'seed': 4, 'sim_frames': 2, 'real_frames': 0}, workers=1)
    rel = 'vkitti2/Scene01/clone/frames/depth/Camera_0/depth_00000.png'
    assert (other / rel).read_bytes() != (root / rel).read_bytes()


def test_existing_output_rules(gen, tmp_path):
    root, manifest = gen
    same = generate(root, variations=('clone', 'fog'), workers=1, **KW)
    assert same.get('up_to_date') and same['seed'] == 3
    with pytest.raises(FileExistsError, match='--overwrite'):
        generate(root, **{**KW, 'seed': 9})
    out = tmp_path / 'interrupted'
    (out / 'kitti').mkdir(parents=True)
    (out / '.make_procedural_incomplete').write_text('')
    generate(out, **{**KW, 'sim_frames': 0, 'real_frames': 1})
    assert json.loads((out / 'manifest.json').read_text())['real']['frames'] == 1
    with pytest.raises(DataError, match='manifest.json missing'):
        open_source({'format': 'procedural_sim', 'root': str(tmp_path / 'nothing')})


def _street():
    """One urban street seen from 1.5 m: (layout, camera, ray-cast geometry)."""
    layout = sample_layout(np.random.default_rng(0), 60.0, 'urban')
    cam = Camera.kitti_like(64, 128, 1.5, layout.ego_x, 10.0)
    return layout, cam, ray_cast(layout, cam)


def test_gap_parameter_controls_the_appearance_gap():
    layout, cam, geo = _street()
    sim = render_sim(geo, layout, SimStyle()).astype(np.float32)
    diffs = []
    for gap in (0.0, 1.0):
        style = RealStyle(gap=gap)
        look = real_look(np.random.default_rng(1), style)
        real = render_real(geo, layout, cam, style, look, np.random.default_rng(2))
        diffs.append(np.abs(real.astype(np.float32) - sim).mean())
    assert diffs[1] > 2 * diffs[0]


def test_real_frames_re_render_with_one_effect_off(gen):
    """bench/analyse_gap_effects.py's premise: the same scene, only the effect differs."""
    from training.data.make_procedural import (real_drive_look, real_sequence, render_config,
                                               render_real_frame)
    root, manifest = gen
    cfg = render_config(manifest['request'])
    style = RealStyle(**cfg['real_style'])
    seq = real_sequence(cfg, 1)
    rgb, geo, _, _ = render_real_frame(cfg, 1, 1, seq, style, real_drive_look(cfg, 1, style))
    on_disk = sorted((root / 'kitti' / 'raw').rglob('image_02/data/*.png'))[3]
    assert np.array_equal(rgb, cv2.imread(str(on_disk))[..., ::-1])
    flat = replace(style, texture=0.0)
    rgb2, geo2, _, _ = render_real_frame(cfg, 1, 1, seq, flat, real_drive_look(cfg, 1, flat))
    assert np.array_equal(geo.labels, geo2.labels)
    assert np.abs(rgb.astype(int) - rgb2).mean() > 1.0


def test_real_frames_re_render_in_the_sim_look_with_one_drive_property_back(gen):
    """bench/analyse_gap_effects.py's sim_look versions: the real geometry, the sim's renderer.

    ``sim_look`` is the sim style itself; ``sim_look_sun`` takes the drive's sun and changes
    the shading; ``sim_look_texture`` the real texture amplitude, ``sim_look_assets`` the
    drive's texture patterns; each drawn on the real frame's own geometry and camera.
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))
    from analyse_gap_effects import SIM_LOOKS, render_version, sim_look_style, val_frames
    from functools import partial
    from training.data.make_procedural import (real_drive_look, real_sequence, render_config,
                                               render_real_frame)
    root, manifest = gen
    cfg = render_config(manifest['request'])
    base = RealStyle(**cfg['real_style'])
    sim = SimStyle(**{**cfg['sim_style'], 'texture': 0.6, 'shadow': 0.45})
    keys = val_frames(cfg, 0.5)
    assert keys == [(0, 1), (1, 1)]
    look = real_drive_look(cfg, 1, base)
    assert sim_look_style(sim, 'sim_look', base, look) == sim
    sun = sim_look_style(sim, 'sim_look_sun', base, look)
    assert (sun.sun_azimuth_deg, sun.sun_elevation_deg) == (
        look['sun_azimuth_deg'], look['sun_elevation_deg'])
    assert sim_look_style(sim, 'sim_look_texture', base, look).texture == base.texture
    assert sim_look_style(sim, 'sim_look_assets', base, look).texture_seed == look['texture_seed']
    _, geo, cam, _ = render_real_frame(cfg, 1, 1, real_sequence(cfg, 1), base, look)
    versions = {e: render_version(cfg, keys, base, partial(sim_look_style, sim, e, base))[1]
                for e in SIM_LOOKS}
    assert np.array_equal(versions['sim_look'], render_sim(geo, real_sequence(cfg, 1)['layout'],
                                                           sim, cam))
    real = render_version(cfg, keys, base)[1]
    for e in ('sim_look_sun', 'sim_look_texture', 'sim_look_assets'):
        assert np.abs(versions[e].astype(int) - versions['sim_look']).mean() > 0.5, e
    assert np.abs(real.astype(int) - versions['sim_look']).mean() > 2.0


def test_cli_help_preview_and_errors(gen, tmp_path, capsys):
    help_text = build_parser().format_help()
    for option in ('--out', '--sim-frames', '--real-frames', '--height', '--width', '--seed',
                   '--gap', '--preview', '--workers', '--variations'):
        assert option in help_text
    out = tmp_path / 'cli'
    png = tmp_path / 'preview.png'
    assert main(['--out', str(out), '--sim-frames', '2', '--real-frames', '2', '--height', '32',
                 '--width', '64', '--workers', '1', '--quiet', '--preview', str(png),
                 '--real-style', 'noise_std=8']) == 0
    assert 'wrote 2 sim images' in capsys.readouterr().out
    image = cv2.imread(str(png))
    assert image.shape[1] == 6 * 256 and image.shape[0] > 2 * 128
    assert main(['--out', str(out), '--sim-frames', '3', '--quiet']) == 2
    assert 'pass --overwrite' in capsys.readouterr().err
    assert main(['--out', str(tmp_path / 'x'), '--variations', 'snow', '--quiet']) == 2
    with pytest.raises(ValueError, match='unknown style key'):
        generate(tmp_path / 'y', 1, 1, 32, 32, real_style=['nope=1'])
    root, _ = gen
    grid = save_preview(root, tmp_path / 'g.png', rows=2, tile_width=64)
    assert cv2.imread(str(grid)).shape == (22 + 2 * 32, 6 * 64, 3)


def test_sim_textures_and_shadows_are_opt_in():
    """SimStyle.texture / .shadow: the engine's textures and cast shadows, off by default."""
    from training.data.street_style import shadow_mask, sun_direction
    layout, cam, geo = _street()
    flat = render_sim(geo, layout, SimStyle()).astype(np.float32)
    assert np.array_equal(flat, render_sim(geo, layout, SimStyle(), cam))
    textured = render_sim(geo, layout, SimStyle(texture=0.6), cam).astype(np.float32)
    sky = geo.labels == C['sky']
    assert np.array_equal(textured[sky], flat[sky])            # no texture on the sky
    road = geo.labels == C['road']
    assert np.abs(textured[road] - flat[road]).mean() > 3.0    # the asphalt's grain
    style = SimStyle(shadow=0.5)
    with pytest.raises(ValueError, match='camera'):
        render_sim(geo, layout, style)
    shaded = render_sim(geo, layout, style, cam).astype(np.float32)
    mask = shadow_mask(geo, layout, cam, sun_direction(style.sun_azimuth_deg,
                                                       style.sun_elevation_deg))
    assert mask.any() and not mask.all()
    ratio = shaded[mask].sum() / flat[mask].sum()
    assert 0.45 < ratio < 0.56                                 # halved, uint8 rounding aside
    assert np.abs(shaded[~mask] - flat[~mask]).max() == 0      # nothing else changes


def test_manifest_records_new_sim_fields_only_when_set(tmp_path):
    """Trees made before SimStyle.texture/.shadow existed stay up to date."""
    kw = {**KW, 'real_frames': 0, 'sim_frames': 2}
    plain = generate(tmp_path / 'plain', workers=1, **kw)
    assert not {'texture', 'texture_seed', 'shadow'} & set(plain['request']['sim_style'])
    tex = generate(tmp_path / 'tex', workers=1, sim_style=('texture=0.6', 'shadow=0.45'), **kw)
    assert tex['request']['sim_style']['texture'] == 0.6
    assert tex['request']['sim_style']['shadow'] == 0.45
    a = sorted((tmp_path / 'plain').rglob('rgb_*.jpg'))
    b = sorted((tmp_path / 'tex').rglob('rgb_*.jpg'))
    assert len(a) == len(b) == 2
    diff = np.abs(cv2.imread(str(a[0])).astype(int) - cv2.imread(str(b[0]))).mean()
    assert diff > 1.0
    sun = generate(tmp_path / 'sun', workers=1,
                   sim_style=('texture=0.6', 'shadow=0.45', 'scene_sun=1'), **kw)
    assert sun['request']['sim_style']['scene_sun'] is True
    c = sorted((tmp_path / 'sun').rglob('rgb_*.jpg'))
    assert np.abs(cv2.imread(str(c[0])).astype(int) - cv2.imread(str(b[0]))).mean() > 1.0
    depth = sorted((tmp_path / 'sun').rglob('depth_*.png'))     # the same scene, lit otherwise
    assert np.array_equal(cv2.imread(str(depth[0]), cv2.IMREAD_UNCHANGED), cv2.imread(
        str(sorted((tmp_path / 'tex').rglob('depth_*.png'))[0]), cv2.IMREAD_UNCHANGED))
