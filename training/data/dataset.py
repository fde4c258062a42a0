"""The torch ``Dataset`` used by training and evaluation, and a plain frame iterator.

Samples are dicts of tensors at the model size: ``image`` float32 3xHxW in [-1, 1],
``depth`` float32 1xHxW metres (0 invalid, +inf far; all 0 when the dataset has no depth),
``labels`` int64 HxW (255 ignore; all 255 without labels), ``has_depth`` / ``has_labels``
bools, ``name`` str. Random choices come from ``(seed, epoch, index)`` so a run is
reproducible with any number of loader workers.
"""
import sys
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from sim2real_perception.labels import IGNORE_INDEX

from .data_config import class_ids, open_source, relabel_table, resolve, select_indices
from .image_files import DataError
from .shadows import cast_shadow_aug
from .transforms import appearance_aug, color_jitter, fit_frame, hflip, region_aug


class FrameDataset(Dataset):
    """Frames of one reader, resized/cropped to the model size, augmented when training."""

    def __init__(self, source, indices, height, width, train=False, seed=0, resize='crop',
                 flip=True, jitter=0.0, skip_bad=False, appearance=0.0, region=0.0,
                 region_tint=1.0, relabel=None, region_keep_hue=(), shadow=0.0,
                 region_share=1.0, region_depth=True):
        self.source, self.indices = source, list(indices)
        self.height, self.width = int(height), int(width)
        self.train, self.seed, self.epoch = bool(train), int(seed), 0
        self.resize, self.flip, self.jitter = resize, bool(flip), float(jitter)
        self.skip_bad = bool(skip_bad)
        self.appearance, self.region = float(appearance), float(region)
        self.region_tint = float(region_tint)
        self.region_share, self.region_depth = float(region_share), bool(region_depth)
        self.shadow = float(shadow)
        self.relabel = relabel_table(relabel)
        self.keep_hue = frozenset(class_ids(region_keep_hue, 'region_keep_hue'))
        #: ``(name, reason)`` of frames that failed to decode and were replaced (skip_bad).
        self.load_failures = []

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, epoch):
        """Change the random augmentation per epoch (call before iterating)."""
        self.epoch = int(epoch)

    def _load(self, index):
        for attempt in range(len(self.indices)):
            i = self.indices[(index + attempt) % len(self.indices)]
            try:
                return self.source.load(i)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self.load_failures.append((self.source.samples[i].name, str(exc)))
                warnings.warn(f'skipping bad sample: {exc}', stacklevel=2)
        raise DataError('every sample of the dataset failed to load')

    def __getitem__(self, index):
        frame = self._load(index)
        if self.relabel is not None and frame.get('labels') is not None:
            frame['labels'] = self.relabel[frame['labels']]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        frame = fit_frame(frame, self.height, self.width, self.resize, rng)
        if rng is not None:
            if self.flip and rng.random() < 0.5:
                frame = hflip(frame)
            frame['image'] = cast_shadow_aug(frame['image'], frame.get('depth'),
                                             frame.get('labels'), frame.get('intrinsics'),
                                             self.shadow, rng)
            frame['image'] = color_jitter(frame['image'], self.jitter, rng)
            # The share is drawn only below 1, so every earlier run's random stream holds.
            if self.region > 0 and (self.region_share >= 1.0
                                    or rng.random() < self.region_share):
                frame['image'] = region_aug(frame['image'], frame.get('labels'), self.region,
                                            rng, self.region_tint, self.keep_hue)
                if not self.region_depth and frame.get('depth') is not None \
                        and frame.get('labels') is not None:
                    frame['depth'] = np.zeros_like(frame['depth'])   # 0: no measurement
            frame['image'] = appearance_aug(frame['image'], self.appearance, rng)
        return to_tensors(frame, self.height, self.width)


def to_tensors(frame, height, width):
    """Reader frame (already at the model size) -> dict of tensors (module docstring)."""
    image = torch.from_numpy(np.ascontiguousarray(frame['image'])).permute(2, 0, 1)
    depth, labels = frame.get('depth'), frame.get('labels')
    return {
        'image': image.float().div_(127.5).sub_(1.0),
        'depth': torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        if depth is not None else torch.zeros(1, height, width),
        'labels': torch.from_numpy(np.ascontiguousarray(labels)).long()
        if labels is not None else torch.full((height, width), IGNORE_INDEX, dtype=torch.long),
        'has_depth': depth is not None,
        'has_labels': labels is not None,
        'name': frame['name'],
    }


def build_dataset(data_cfg, split, height, width, train, seed, source=None):
    """Build the ``FrameDataset`` for one data section and split (train | val | all).

    ``train`` enables random crop offsets, flips and colour jitter (as configured);
    evaluation uses centred crops. ``source`` re-uses an already opened reader.
    """
    cfg = resolve(data_cfg)
    source = source if source is not None else open_source(cfg)
    if source.skipped:
        print(f'[data] {cfg["root"]}: skipped {len(source.skipped)} bad files, first: '
              f'{source.skipped[0][0]} ({source.skipped[0][1]})', file=sys.stderr)
    return FrameDataset(source, select_indices(source, cfg, split), height, width, train, seed,
                        cfg['resize'], cfg['hflip'], cfg['color_jitter'], cfg['skip_bad'],
                        cfg['appearance_aug'], cfg['region_aug'], cfg['region_tint'],
                        cfg['relabel'], cfg['region_keep_hue'], cfg['shadow_aug'],
                        cfg['region_aug_share'], cfg['region_aug_depth'])


def iter_frames(data_cfg, max_frames=None, split='all'):
    """Yield reader-contract frames (original size) of a data section, in order.

    With ``skip_bad`` undecodable frames are left out and counted on stderr at the end.
    """
    cfg = resolve(data_cfg)
    source = open_source(cfg)
    indices = select_indices(source, cfg, split)
    failures = 0
    for i in indices[:max_frames] if max_frames else indices:
        try:
            yield source.load(i)
        except DataError as exc:
            if not cfg['skip_bad']:
                raise
            failures += 1
            print(f'[data] skipping bad sample: {exc}', file=sys.stderr)
    skipped = len(source.skipped) + failures
    if skipped:
        print(f'[data] {cfg["root"]}: skipped {skipped} bad samples', file=sys.stderr)
