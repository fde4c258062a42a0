"""Training logs: CSV rows, TensorBoard scalars/images and sample-grid PNGs.

Only rank 0 logs. CSV files are per stage (the loss terms differ) and a resumed run drops
the rows past its checkpoint, so the log reads as if the run had never stopped.
"""
import csv
from pathlib import Path

import cv2
import numpy as np
import torch

from sim2real_perception.labels import PALETTE
from sim2real_perception.model.depth_coding import decode_depth


class CsvLog:
    """Append rows of a fixed set of columns; ``truncate_after`` drops rows past a step."""

    def __init__(self, path, columns, truncate_after=None):
        self.path, self.columns = Path(path), list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if truncate_after is not None and self.path.is_file():
            with open(self.path, newline='', encoding='utf-8') as fh:
                rows = [r for r in csv.DictReader(fh) if int(r['step']) <= truncate_after]
        with open(self.path, 'w', newline='', encoding='utf-8') as fh:
            writer = csv.DictWriter(fh, self.columns, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row):
        with open(self.path, 'a', newline='', encoding='utf-8') as fh:
            csv.DictWriter(fh, self.columns, extrasaction='ignore').writerow(row)


def tensorboard_writer(log_dir, purge_step=None):
    """Return a SummaryWriter, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is in requirements.txt
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def _rgb(x):
    """3xHxW in [-1, 1] -> HxWx3 uint8."""
    x = x.detach().float().cpu().clamp(-1, 1)
    return ((x.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)


def _depth_rgb(metres, max_depth):
    """Colour HxW metres (0 = none, inf = far) by inverse depth (near = bright)."""
    m = np.nan_to_num(metres, nan=0.0, posinf=max_depth)
    valid = m > 0
    inv = np.where(valid, 1.0 / np.maximum(m, 1e-3), 0.0)
    inv = np.clip(inv / max(inv.max(), 1e-6), 0.0, 1.0)
    col = cv2.applyColorMap((inv * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[..., ::-1]
    return np.where(valid[..., None], col, 0).astype(np.uint8)


def _labels_rgb(ids):
    return PALETTE[np.asarray(ids, dtype=np.int64).clip(0, 255)]


def sample_grid(images, model_cfg, rows=4):
    """Build an RGB uint8 grid from a losses.*_terms ``images`` dict (one row per sample)."""
    cols = []
    order = [k for k in ('real', 'real_recon', 'real_to_sim', 'sim', 'sim_recon',
                         'sim_to_real', 'image') if k in images]
    n = min(rows, next(iter(images.values())).shape[0])
    for i in range(n):
        row = [_rgb(images[k][i]) for k in order]
        if 'depth_pred' in images:
            pred = decode_depth(images['depth_pred'][i, 0].detach().float().cpu(),
                                model_cfg.depth_encoding, model_cfg.min_depth,
                                model_cfg.max_depth).numpy()
            row.append(_depth_rgb(pred, model_cfg.max_depth))
            row.append(_depth_rgb(images['depth'][i, 0].detach().float().cpu().numpy(),
                                  model_cfg.max_depth))
            row.append(_labels_rgb(images['seg_pred'][i].argmax(0).cpu().numpy()))
            row.append(_labels_rgb(images['labels'][i].cpu().numpy()))
        cols.append(np.concatenate(row, axis=1))
    return np.concatenate(cols, axis=0)


def write_grid(path, grid):
    """Save an RGB grid as PNG (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(grid[..., ::-1]))
    return path


def grid_tensor(grid):
    """HxWx3 uint8 -> 3xHxW uint8 tensor for TensorBoard."""
    return torch.from_numpy(np.ascontiguousarray(grid)).permute(2, 0, 1)
