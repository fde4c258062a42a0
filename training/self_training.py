"""Offline self-training of a sim-trained baseline on its own labels of the real frames.

After the sim-supervised stage the network labels every real training frame once and keeps,
in each class, only its most confident pixels. A new learning-rate cycle then trains it on
the labelled sim frames plus a re-rendered view of the real frames with those labels.
Class-balanced selection (CBST, Zou et al. 2018) keeps the rare classes that one confidence
threshold would drop; labels made once by a finished network, not online by the network
being trained, are what made it pay here (docs/benchmarks.md).

The labels are saved in the run folder (``self_train/pseudo_labels.npz``, plain arrays, no
pickle), so a resumed run trains on the same ones.
"""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sim2real_perception.labels import IGNORE_INDEX

#: Confidence histogram bins per class: per-class quantiles to 1/BINS.
BINS = 1000
LABELS_FILE = Path('self_train') / 'pseudo_labels.npz'


def labels_file(round_=1):
    """Return the run-relative file of a round's labels (round 1: ``LABELS_FILE``)."""
    return LABELS_FILE if round_ == 1 else LABELS_FILE.with_name(f'pseudo_labels_{round_}.npz')


@torch.no_grad()
def predict_labels(net, frames, batch=8, device='cpu'):
    """Return (labels, confidence) uint8/float16 arrays N x H x W of the real encoder + head.

    ``frames`` is a dataset of unaugmented frames at the model size. The network is put in
    eval mode for the pass and restored after.
    """
    was_training = net.training
    net.eval()
    labels, conf = [], []
    try:
        for start in range(0, len(frames), batch):
            x = torch.stack([frames[i]['image'] for i in
                             range(start, min(start + batch, len(frames)))]).to(device)
            _, z, feats = net.encode_skips(x, 'real')
            p, lab = torch.softmax(net.decode(z, 'seg', feats).float(), 1).max(1)
            labels.append(lab.to(torch.uint8).cpu().numpy())
            conf.append(p.to(torch.float16).cpu().numpy())
    finally:
        net.train(was_training)
    return np.concatenate(labels), np.concatenate(conf)


def class_thresholds(labels, conf, num_classes, keep, cap):
    """Return the confidence each class's kept pixels need (CBST's class-balanced selection).

    Class ``c`` keeps the ``keep`` share of its most confident pixels, and every pixel at
    or above ``cap`` whatever the share: min(quantile_c(1 - keep), cap). Classes never
    predicted get ``cap``.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f'train.self_train_keep={keep}: a share in (0, 1]')
    out = np.full(num_classes, float(cap), np.float64)
    for c in range(num_classes):
        hist = np.bincount(np.minimum((conf[labels == c].astype(np.float32) * BINS).astype(
            np.int64), BINS - 1), minlength=BINS)
        total = int(hist.sum())
        if total == 0:
            continue
        # smallest bin edge with at least `keep` of the class's pixels at or above it
        above = np.cumsum(hist[::-1])[::-1]
        b = int(np.nonzero(above >= keep * total)[0].max())
        out[c] = min(b / BINS, float(cap))
    return out


def select(labels, conf, thresholds):
    """Return ``labels`` with every pixel below its class's threshold set to ignore (255)."""
    keep = conf.astype(np.float32) >= thresholds.astype(np.float32)[labels]
    return np.where(keep, labels, np.uint8(IGNORE_INDEX)).astype(np.uint8)


def save_labels(path, labels, thresholds, names):
    """Write the selected labels, thresholds and frame names (``np.savez``, no objects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, labels=labels, thresholds=thresholds, names=np.array(names, dtype=str))
    tmp.replace(path)


def load_labels(path, names):
    """Read ``save_labels``' file; its frame names must be ``names`` (the same real split)."""
    with np.load(path, allow_pickle=False) as f:
        saved = [str(n) for n in f['names']]
        if saved != [str(n) for n in names]:
            raise ValueError(f'{path}: labelled frames differ from the real training split '
                             f'({len(saved)} saved, {len(names)} now); delete it to relabel')
        return f['labels'], f['thresholds']


class PseudoLabelled(Dataset):
    """Unaugmented real frames with their selected labels; a random flip per (epoch, frame).

    The photometric re-rendering (``losses.strong_view``) happens on the batch in the loss.
    """

    def __init__(self, frames, labels, seed=0, flip=True):
        if len(frames) != len(labels):
            raise ValueError(f'{len(frames)} frames but {len(labels)} label maps')
        self.frames, self.labels = frames, labels
        self.seed, self.flip, self.epoch = int(seed), bool(flip), 0

    def __len__(self):
        return len(self.frames)

    def set_epoch(self, epoch):
        """Change the random flips per epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, index):
        item = dict(self.frames[index])
        labels = torch.from_numpy(self.labels[index].astype(np.int64))
        item.update(labels=labels, has_labels=True, has_depth=False,
                    depth=torch.zeros_like(item['depth']))
        rng = np.random.default_rng([self.seed, self.epoch, index, 31])
        if self.flip and rng.random() < 0.5:
            item['image'] = item['image'].flip(-1)
            item['labels'] = item['labels'].flip(-1)
        return item
