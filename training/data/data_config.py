"""The ``data.<section>`` config dict: its keys, defaults, and the reader each format opens.

One dict describes one dataset selection (``data.sim``, ``data.real``, ``data.eval``); the
meaning of every key is documented in ``config/defaults.yaml`` and in ``DEFAULTS`` below.
"""
from pathlib import Path

import numpy as np

from sim2real_perception.labels import CLASS_NAMES

from .frame_source import FrameSource
from .image_files import DataError
from .image_folder import IMAGE_SUFFIXES, ImageFolderReader
from .kitti import KittiRawReader, KittiSemanticsReader
from .rosbag2_reader import RosbagReader
from .vkitti2 import VKitti2Reader

FORMATS = ('vkitti2', 'kitti', 'kitti_semantics', 'rosbag', 'folder', 'procedural_sim',
           'procedural_real')
SPLITS = ('train', 'val', 'all')

#: Every key of a data section and its default (see config/defaults.yaml for the prose).
DEFAULTS = {
    'format': 'procedural_sim',   # one of FORMATS
    'root': '',                   # dataset root folder / bag path
    'scenes': [],                 # vkitti2: SceneXX folders ([] = all)
    'variations': ['clone'],      # vkitti2: variations ([] = all present)
    'camera': '',                 # '' = Camera_0 (vkitti2) / image_02 (kitti)
    'drives': [],                 # kitti: <date>_drive_NNNN_sync names ([] = all)
    'depth_root': '',             # vkitti2 / kitti: separate tree with depth ('' = root)
    'labels_root': '',            # vkitti2: separate classSegmentation tree ('' = root)
    'depth_type': 'groundtruth',  # kitti: proj_depth sub-folder (groundtruth|velodyne_raw|dense)
    'with_depth': True,           # load depth ground truth where the format has it
    'with_labels': True,          # load label ground truth where the format has it (kitti:
                                  # drives with a semantic/ folder, see training/data/kitti.py)
    'split_dir': 'training',      # kitti_semantics: training | testing
    'topic': '',                  # rosbag: image topic ('' = the only image topic)
    'depth_topic': '',            # rosbag: ground-truth depth topic ('' = none)
    'labels_topic': '',           # rosbag: ground-truth label topic ('' = none)
    'sync_tolerance_ms': 0.0,     # rosbag: max header-stamp difference image <-> ground truth
    'recursive': True,            # folder: include sub-folders
    'strict_colors': True,        # unknown label colour / id = error (false: ignore, counted)
    'skip_bad': False,            # skip unreadable / unpaired samples (counted) instead of failing
    'max_frames': 0,              # use at most N frames, evenly spaced (0 = all)
    'frame_step': 1,              # use every Nth frame of each sequence
    'val_fraction': 0.1,          # split 'val' = last fraction of each sequence; 'train' = rest
    # stretch: whole frame to the model size, exactly as the predictor/node feed the network
    # (training with crops and deploying squeezed frames cost 0.04-0.08 AbsRel); crop: keep
    # the aspect, cover, crop (random offsets when training, centred otherwise).
    'resize': 'stretch',          # stretch | crop
    'hflip': True,                # training: random horizontal flip
    'color_jitter': 0.0,          # training: brightness/contrast/saturation +-x, hue +-18x deg
    'appearance_aug': 0.0,        # training: camera-photo randomisation strength (gains,
                                  # exposure, shading, grain, blur, noise, JPEG; 0 = off)
    'region_aug': 0.0,            # training: per-class-region texture/tint/blotch and hard
                                  # shadow randomisation strength (needs labels; 0 = off)
    'region_tint': 1.0,           # how far region_aug may move a region's hue (0: brightness
                                  # and the region's own colour only; 1: random colours)
    'region_keep_hue': [],        # classes whose hue region_aug keeps whatever region_tint
                                  # is (e.g. [building]; [] = none)
    'region_aug_share': 1.0,      # share of training frames region_aug applies to (1: all)
    'region_aug_depth': True,     # false: a frame region_aug changed keeps its labels, not
                                  # its depth (set to 0: no measurement), so depth is learnt
                                  # on the unchanged frames only
    'shadow_aug': 0.0,            # training: sun shadows of the frame's objects cast on the
                                  # road and grass, traced through its depth (needs depth and
                                  # labels; the chance per frame and darkness; 0 = off)
    'relabel': {},                # {class: class} the labels are read as, e.g. {van: car}:
                                  # train in the target's taxonomy (KITTI/Cityscapes label
                                  # vans as car); {} = the format's classes as they are
}


def resolve(data_cfg):
    """Return ``data_cfg`` with defaults filled in; unknown keys and bad values are errors."""
    data_cfg = {k: v for k, v in data_cfg.items() if k != '_open'}
    unknown = sorted(set(data_cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'unknown data config keys {unknown}; known: {sorted(DEFAULTS)}')
    cfg = {**DEFAULTS, **data_cfg}
    if cfg['format'] not in FORMATS:
        raise ValueError(f'data format {cfg["format"]!r} not in {FORMATS}')
    if not cfg['root']:
        raise ValueError(f'data.root is empty (format {cfg["format"]})')
    if int(cfg['frame_step']) < 1 or int(cfg['max_frames']) < 0:
        raise ValueError('frame_step must be >= 1 and max_frames >= 0')
    if float(cfg['shadow_aug']) < 0:
        raise ValueError(f'data shadow_aug={cfg["shadow_aug"]} must be >= 0')
    if not 0.0 <= float(cfg['val_fraction']) < 1.0:
        raise ValueError('val_fraction must be in [0, 1)')
    if not 0.0 <= float(cfg['region_aug_share']) <= 1.0:
        raise ValueError(f'data region_aug_share={cfg["region_aug_share"]} must be in [0, 1]')
    relabel_table(cfg['relabel'])   # names checked at start-up, not at the first frame
    class_ids(cfg['region_keep_hue'], 'region_keep_hue')
    return cfg


def class_ids(names, key):
    """Return the class ids of a list of class names (a config key's value); bad names raise."""
    if not isinstance(names, (list, tuple)):
        raise ValueError(f'data {key}={names!r} must be a list of class names')
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise ValueError(f'data {key}: unknown classes {unknown} (classes: {list(CLASS_NAMES)})')
    return [CLASS_NAMES.index(n) for n in names]


def relabel_table(relabel):
    """Return the class-id lookup table of ``relabel`` ({from: to} names), or None if empty.

    Entry 255 (ignore) maps to itself, so the table indexes any uint8 label map.
    """
    if not relabel:
        return None
    if not isinstance(relabel, dict):
        raise ValueError(f'data relabel={relabel!r} must be a mapping of class names, '
                         'e.g. {van: car}')
    table = np.arange(256, dtype=np.uint8)
    for src, dst in relabel.items():
        src_id, dst_id = class_ids([src, dst], 'relabel')
        table[src_id] = dst_id
    return table


def _procedural_root(root, sub):
    root = Path(root)
    if not (root / 'manifest.json').is_file():
        raise DataError(f'{root}: no procedural data here (manifest.json missing); run '
                        f'python -m training.data.make_procedural --out {root}')
    return root / sub


def open_source(data_cfg) -> FrameSource:
    """Open the reader that ``data_cfg`` describes (lists files; decodes nothing)."""
    cfg = resolve(data_cfg)
    fmt, root, skip = cfg['format'], cfg['root'], cfg['skip_bad']
    if fmt in ('vkitti2', 'procedural_sim'):
        if fmt == 'procedural_sim':
            root = _procedural_root(root, 'vkitti2')
        return VKitti2Reader(root, cfg['scenes'], cfg['variations'], cfg['camera'] or 'Camera_0',
                             cfg['depth_root'] or None, cfg['labels_root'] or None,
                             cfg['with_depth'], cfg['with_labels'], cfg['strict_colors'], skip)
    if fmt in ('kitti', 'procedural_real'):
        depth_root = cfg['depth_root'] or None
        if fmt == 'procedural_real':
            depth_root = depth_root or _procedural_root(root, 'kitti/depth_annotated')
            root = _procedural_root(root, 'kitti/raw')
        depth_type = cfg['depth_type'] if cfg['with_depth'] else None
        # Real KITTI raw drives have no dense labels: read them where a drive has them.
        labels = cfg['with_labels'] and (True if fmt == 'procedural_real' else 'auto')
        return KittiRawReader(root, cfg['drives'], cfg['camera'] or 'image_02', depth_root,
                              depth_type, labels, skip)
    if fmt == 'kitti_semantics':
        return KittiSemanticsReader(root, cfg['split_dir'], cfg['with_labels'],
                                    cfg['strict_colors'], skip)
    if fmt == 'rosbag':
        return RosbagReader(root, cfg['topic'] or None,
                            (cfg['depth_topic'] or None) if cfg['with_depth'] else None,
                            (cfg['labels_topic'] or None) if cfg['with_labels'] else None,
                            cfg['sync_tolerance_ms'], skip)
    return ImageFolderReader(root, cfg['recursive'], IMAGE_SUFFIXES, skip)


def select_indices(source, data_cfg, split='all'):
    """Pick the indices of ``source`` for ``split`` (frame_step, val_fraction, max_frames).

    ``val`` holds the last ``val_fraction`` of every sequence (scene/variation, drive), so
    train and val never share a frame; ``all`` ignores ``val_fraction``.
    """
    cfg = resolve(data_cfg)
    if split not in SPLITS:
        raise ValueError(f'split {split!r} not in {SPLITS}')
    groups = {}
    for i, sample in enumerate(source.samples):
        groups.setdefault(sample.group, []).append(i)
    chosen = []
    for members in groups.values():
        members = members[::int(cfg['frame_step'])]
        if split != 'all':
            n_val = int(round(len(members) * float(cfg['val_fraction'])))
            members = members[len(members) - n_val:] if split == 'val' else \
                members[:len(members) - n_val]
        chosen.extend(members)
    chosen.sort()
    n = int(cfg['max_frames'])
    if n and len(chosen) > n:
        step = len(chosen) / n
        chosen = [chosen[int(i * step)] for i in range(n)]
    if not chosen:
        raise DataError(f'{cfg["root"]}: split {split!r} is empty ({len(source)} frames, '
                        f'val_fraction {cfg["val_fraction"]})')
    return chosen
