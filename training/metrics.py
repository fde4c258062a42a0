"""Depth and segmentation metrics, accumulated over a whole dataset.

One implementation for offline evaluation (``training.evaluate``), replay
(``training.replay``) and training validation, so every number in the project means the same.

Depth (monodepth2 / Eigen conventions): a ground-truth pixel ``g`` counts when it is finite and
``min_depth < g < max_depth`` (0 and NaN are "no measurement"; +inf is sky / far and is
excluded). A prediction is taken as ``+inf -> max_depth`` (the predictor marks sky as +inf),
optionally multiplied per image by ``median(g) / median(p)`` (median scaling, for
scale-ambiguous methods only; off by default as in sim-to-real papers), then clamped to
``[min_depth, max_depth]``. The optional Garg crop keeps rows 0.4081-0.9919 H and columns
0.0359-0.9641 W (the KITTI Eigen-split crop; off by default). The sums run over every valid
pixel of every image (pixel-pooled, not a mean of per-image means):

* ``abs_rel`` = mean(|g - p| / g), ``sq_rel`` = mean((g - p)^2 / g)
* ``rmse`` = sqrt(mean((g - p)^2)), ``rmse_log`` = sqrt(mean((ln g - ln p)^2))
* ``a1``, ``a2``, ``a3`` = fraction with max(g / p, p / g) < 1.25, 1.25^2, 1.25^3

NaN predictions (a broken model) are scored as ``max_depth`` and counted in ``n_nan_pred``.

Segmentation: one confusion matrix over the dataset; ground-truth 255 (ignore) pixels are
skipped. ``IoU_c = TP / (TP + FP + FN)``. A class absent from both ground truth and
predictions has no IoU (``None``) and is left out of ``miou`` (the torchmetrics / mmseg
convention); ``miou_all`` instead averages all classes with absent ones as 0 (the
CSAILVision convention). A class absent from the ground truth but predicted has IoU 0 and
counts in both. ``per_class_iou`` lets a reader see which classes made the mean.

With no valid pixel at all, every scalar metric is NaN (never a crash, never a fake 0).
"""
import math

import cv2
import numpy as np

from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX

#: monodepth2's Garg crop as fractions of (height, height, width, width).
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
DEPTH_KEYS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3')


def to_numpy(array):
    """Return a numpy view of a numpy array or a (possibly CUDA, grad-tracking) torch tensor."""
    if hasattr(array, 'detach'):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _as_images(array):
    """Return ``array`` as a stack of HxW images (accepts HxW, 1xHxW, NxHxW, Nx1xHxW)."""
    a = to_numpy(array)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    raise ValueError(f'expected an HxW image or a batch of them, got shape {a.shape}')


def garg_mask(height, width):
    """Return the boolean HxW mask of the Garg crop (monodepth2's integer rounding)."""
    top, bottom, left, right = (int(f * s) for f, s in
                                zip(GARG_CROP, (height, height, width, width)))
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


class DepthMetrics:
    """Accumulate depth errors over images; ``compute()`` gives the dataset's metrics."""

    def __init__(self, min_depth=1e-3, max_depth=80.0, garg_crop=False, median_scaling=False):
        if not 0 < min_depth < max_depth:
            raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth}, {max_depth}')
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.garg_crop, self.median_scaling = bool(garg_crop), bool(median_scaling)
        self.reset()

    def reset(self):
        """Forget everything accumulated so far."""
        self._sums = dict.fromkeys(('abs_rel', 'sq_rel', 'sq', 'sq_log', 'a1', 'a2', 'a3'), 0.0)
        self.n_pixels = 0
        self.n_images = 0
        self.n_empty_images = 0
        self.n_nan_pred = 0
        self.scale_ratios = []

    def valid_mask(self, gt):
        """Return the pixels of one HxW ground-truth image that are scored."""
        with np.errstate(invalid='ignore'):
            mask = np.isfinite(gt) & (gt > self.min_depth) & (gt < self.max_depth)
        if self.garg_crop:
            mask &= garg_mask(*gt.shape)
        return mask

    def update(self, pred_m, gt_m):
        """Add one image (HxW) or a batch (NxHxW / Nx1xHxW) of predictions in metres."""
        preds, gts = _as_images(pred_m), _as_images(gt_m)
        if preds.shape != gts.shape:
            raise ValueError(f'prediction shape {preds.shape} != ground truth {gts.shape}; '
                             f'predict at the ground-truth resolution')
        for pred, gt in zip(preds, gts):
            self._update_one(pred.astype(np.float64), gt.astype(np.float64))

    def _update_one(self, pred, gt):
        self.n_images += 1
        mask = self.valid_mask(gt)
        g, p = gt[mask], pred[mask]
        if g.size == 0:
            self.n_empty_images += 1
            return
        nan = np.isnan(p)
        self.n_nan_pred += int(nan.sum())
        p = np.where(nan, self.max_depth, p)
        p = np.clip(p, -np.inf, self.max_depth)  # +inf (sky) -> the cap, before the median
        if self.median_scaling:
            med = np.median(p)
            ratio = float(np.median(g) / med) if med > 0 else 1.0
            self.scale_ratios.append(ratio)
            p = p * ratio
        p = np.clip(p, self.min_depth, self.max_depth)
        diff = g - p
        thresh = np.maximum(g / p, p / g)
        s = self._sums
        s['abs_rel'] += float(np.sum(np.abs(diff) / g))
        s['sq_rel'] += float(np.sum(diff ** 2 / g))
        s['sq'] += float(np.sum(diff ** 2))
        s['sq_log'] += float(np.sum((np.log(g) - np.log(p)) ** 2))
        for k in (1, 2, 3):
            s[f'a{k}'] += float(np.count_nonzero(thresh < 1.25 ** k))
        self.n_pixels += int(g.size)

    def compute(self):
        """Return abs_rel, sq_rel, rmse, rmse_log, a1-a3 (NaN without valid pixels) + counts."""
        n, s = self.n_pixels, self._sums
        out = {
            'abs_rel': s['abs_rel'] / n if n else math.nan,
            'sq_rel': s['sq_rel'] / n if n else math.nan,
            'rmse': math.sqrt(s['sq'] / n) if n else math.nan,
            'rmse_log': math.sqrt(s['sq_log'] / n) if n else math.nan,
        }
        for k in ('a1', 'a2', 'a3'):
            out[k] = s[k] / n if n else math.nan
        out.update(n_pixels=n, n_images=self.n_images, n_empty_images=self.n_empty_images,
                   n_nan_pred=self.n_nan_pred, min_depth=self.min_depth,
                   max_depth=self.max_depth, garg_crop=self.garg_crop,
                   median_scaling=self.median_scaling)
        if self.median_scaling:
            r = np.asarray(self.scale_ratios)
            out['scale_ratio_median'] = float(np.median(r)) if r.size else math.nan
            out['scale_ratio_std'] = float(np.std(r / np.median(r))) if r.size else math.nan
        return out


class SegMetrics:
    """Accumulate a confusion matrix over images; ``compute()`` gives IoUs and accuracy."""

    def __init__(self, num_classes=12, ignore_index=IGNORE_INDEX, class_names=None):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        names = class_names if class_names is not None else CLASS_NAMES[:self.num_classes]
        if len(names) != self.num_classes:
            raise ValueError(f'{len(names)} class names for {self.num_classes} classes')
        self.class_names = tuple(names)
        self.reset()

    def reset(self):
        """Forget everything accumulated so far."""
        #: confusion[gt, pred]; the last column counts predictions outside 0..num_classes-1.
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)
        self.n_images = 0

    def update(self, pred_ids, gt_ids):
        """Add one label image (HxW) or a batch (NxHxW) of predicted and true class ids."""
        pred, gt = to_numpy(pred_ids), to_numpy(gt_ids)
        if pred.shape != gt.shape:
            raise ValueError(f'prediction shape {pred.shape} != ground truth {gt.shape}; '
                             f'predict at the ground-truth resolution')
        self.n_images += 1 if gt.ndim <= 2 else gt.shape[0]
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = gt != self.ignore_index
        gt, pred = gt[keep], pred[keep]
        bad = (gt < 0) | (gt >= self.num_classes)
        if bad.any():
            raise ValueError(f'ground-truth ids {sorted(set(gt[bad].tolist()))[:10]} are '
                             f'neither classes 0..{self.num_classes - 1} nor ignore '
                             f'{self.ignore_index}')
        pred = np.where((pred < 0) | (pred >= self.num_classes), self.num_classes, pred)
        n = self.num_classes + 1
        self.confusion += np.bincount(gt * n + pred, minlength=self.num_classes * n) \
            .reshape(self.num_classes, n)

    def compute(self):
        """Return miou, miou_all, pixel_acc, mean_acc, per_class_iou and n_pixels."""
        conf = self.confusion
        k = self.num_classes
        tp = np.diag(conf[:, :k]).astype(np.float64)
        gt_count = conf.sum(1).astype(np.float64)
        pred_count = conf[:, :k].sum(0).astype(np.float64)
        union = gt_count + pred_count - tp
        n = int(conf.sum())
        iou = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(k)]
        acc = [float(tp[c] / gt_count[c]) if gt_count[c] > 0 else None for c in range(k)]
        present = [v for v in iou if v is not None]
        present_acc = [v for v in acc if v is not None]
        return {
            'miou': float(np.mean(present)) if present else math.nan,
            'miou_all': float(sum(present) / k) if n else math.nan,
            'pixel_acc': float(tp.sum() / n) if n else math.nan,
            'mean_acc': float(np.mean(present_acc)) if present_acc else math.nan,
            'per_class_iou': dict(zip(self.class_names, iou)),
            'per_class_acc': dict(zip(self.class_names, acc)),
            'classes_in_miou': len(present),
            'n_pixels': n,
            'n_images': self.n_images,
            'n_invalid_pred': int(conf[:, k].sum()),
        }


class LabelVariation:
    """How much a label sequence follows the image: the label-change share.

    Per pixel, the most frequent label over all frames; the share is the fraction of
    (frame, pixel) pairs whose label differs from it. A model that predicts the same map for
    every frame scores 0; on the built-in real-style eval frames the ground truth scores
    about 0.3. Frames of another size are resized (nearest) to the first frame's size;
    pixels labelled ``ignore_index`` are not counted.
    """

    def __init__(self, num_classes=12, ignore_index=IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.votes = None

    def update(self, ids):
        """Add one label image (HxW, class ids)."""
        ids = to_numpy(ids)
        if self.votes is None:
            self.votes = np.zeros((self.num_classes + 1, *ids.shape), np.int32)
        if ids.shape != self.votes.shape[1:]:
            h, w = self.votes.shape[1:]
            ids = cv2.resize(ids.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        ids = ids.astype(np.int64)
        keep = ids != self.ignore_index
        ids = np.where((ids < 0) | (ids >= self.num_classes), self.num_classes, ids)
        flat = np.flatnonzero(keep.ravel())
        # Each pixel occurs once per frame, so the (class, pixel) pairs are unique.
        self.votes.reshape(self.num_classes + 1, -1)[ids.ravel()[flat], flat] += 1

    def compute(self):
        """Return the label-change share (NaN before any labelled pixel)."""
        if self.votes is None:
            return math.nan
        total = int(self.votes.sum())
        if total == 0:
            return math.nan
        return float(1.0 - self.votes.max(0).sum() / total)
