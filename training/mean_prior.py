"""Fit the ``mean_prior`` floor: per-pixel mean sim depth and most frequent sim label.

A model whose output is the same for every frame already scores AbsRel ~0.2 and a fair
pixel accuracy on street scenes (the road is below, the sky above), so every table shows
this row: a learned method is only worth its cost where it beats it. The maps are fitted at
the model's input size on the labelled sim training frames, exactly the frames and resize
stage 2 trains on, and exported as a model directory the predictor and the node serve.
"""
import json
from pathlib import Path

import numpy as np
import torch

from sim2real_perception.labels import IGNORE_INDEX
from sim2real_perception.model import encode_depth, MeanPriorNet, ModelConfig
from sim2real_perception.model_config import ground_class_ids
from sim2real_perception.model_io import export_model_dir

from .losses import SKY_CLASS


def _accumulate(frames, height, width, num_classes, max_depth, code=None, ground=()):
    """Sum per pixel the depth (metres, or ``code(metres)``), its count and label votes.

    Returns (depth, votes, ground): ``ground`` is, for ``ground`` class ids, the mean depth
    over the frames where the pixel had one of those labels (the prior's depth where it
    never had), and None without them.
    """
    depth_sum = np.zeros((height, width), np.float64)
    depth_n = np.zeros((height, width), np.int64)
    ground_sum = np.zeros((height, width), np.float64)
    ground_n = np.zeros((height, width), np.int64)
    votes = np.zeros((num_classes, height, width), np.int64)
    for item in frames:
        labels = item['labels'].numpy() if item['has_labels'] else None
        if item['has_depth']:
            d = item['depth'][0].numpy().astype(np.float64)
            far = np.isposinf(d)
            if labels is not None:
                far |= labels == SKY_CLASS
            valid = far | (np.isfinite(d) & (d > 0))
            metres = np.where(far, max_depth, np.where(valid, np.minimum(d, max_depth), 1.0))
            value = metres if code is None else code(metres)
            depth_sum += np.where(valid, value, 0.0)
            depth_n += valid
            if ground and labels is not None:
                on = valid & np.isin(labels, ground)
                ground_sum += np.where(on, value, 0.0)
                ground_n += on
        if labels is not None:
            for c in range(num_classes):
                votes[c] += labels == c
    if not depth_n.any() or not votes.any():
        raise ValueError('mean_prior needs labelled frames with depth (data.sim train split)')
    overall = depth_sum.sum() / depth_n.sum()
    depth = np.where(depth_n > 0, depth_sum / np.maximum(depth_n, 1), overall)
    if not ground:
        return depth, votes, None
    return depth, votes, np.where(ground_n > 0, ground_sum / np.maximum(ground_n, 1), depth)


def fit_maps(frames, height, width, num_classes, max_depth):
    """Return (depth HxW metres, labels HxW uint8) from frames of model-size tensors.

    Depth: the mean over frames with a measurement at that pixel; far (+inf) and sky count
    as ``max_depth``, as the depth decoder is trained. A pixel never measured gets the mean
    of all measurements. Labels: the most frequent label, ignoring 255; a pixel never
    labelled gets the most frequent label overall.
    """
    depth, votes, _ = _accumulate(frames, height, width, num_classes, max_depth)
    labels = votes.argmax(0)
    unlabelled = votes.sum(0) == 0
    labels[unlabelled] = votes.sum((1, 2)).argmax()
    assert IGNORE_INDEX >= num_classes
    return depth.astype(np.float32), labels.astype(np.uint8)


def fit_residual_prior(frames, cfg, smoothing=1.0, shape=None):
    """Return (depth targets HxW in (-1, 1), class frequencies CxHxW, ground) for the prior.

    The depth map is the per-pixel mean of the *encoded* depth (the constant the heads'
    MSE on encoded depth would learn); the frequencies are the label votes with
    ``smoothing`` added to every class, so no class is impossible anywhere. ``ground`` is
    the same mean over the frames where the pixel was road or terrain, for
    ``model.prior_gate: ground``, else None. ``shape`` (H, W) defaults to the model size.
    """
    height, width = shape or (cfg.height, cfg.width)

    def code(metres):
        t = torch.from_numpy(metres)
        return encode_depth(t, cfg.depth_encoding, cfg.min_depth, cfg.max_depth).numpy()
    ground = ground_class_ids(cfg.num_classes) if cfg.prior_gate == 'ground' else []
    depth_t, votes, ground_t = _accumulate(frames, height, width, cfg.num_classes,
                                           cfg.max_depth, code, ground)
    freq = votes + float(smoothing)
    return (depth_t.astype(np.float32), (freq / freq.sum(0, keepdims=True)).astype(np.float32),
            None if ground_t is None else ground_t.astype(np.float32))


def fit_and_export(dataset, model_cfg, out_dir, metadata=None):
    """Fit the prior on ``dataset`` (a FrameDataset at the model size) and export it."""
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    cfg = ModelConfig.from_dict({**cfg.to_dict(), 'architecture': 'mean_prior'})
    depth, labels = fit_maps((dataset[i] for i in range(len(dataset))), cfg.height,
                             cfg.width, cfg.num_classes, cfg.max_depth)
    net = MeanPriorNet(cfg, torch.from_numpy(depth), torch.from_numpy(labels))
    out = export_model_dir(net, out_dir, metadata={**(metadata or {}), 'frames': len(dataset)})
    return Path(out)


def write_summary(run_dir, summary):
    """Write RUN/summary.json like a trained run does."""
    Path(run_dir, 'summary.json').write_text(json.dumps(summary, indent=1))
