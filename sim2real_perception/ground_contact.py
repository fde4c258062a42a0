"""Depth of upright surfaces read from where they stand on the ground (numpy only).

A car camera sees cars, poles, walls and trees standing on a ground it also sees. A vertical
surface is at one depth all the way up an image column (up to the camera's small pitch),
and that depth is the ground's at the row where the two meet. The network's depth of the
ground transfers from sim to real far better than its depth of objects (a flat road seen
from a fixed camera height looks alike in any rendering), and so do its labels; so this
module gives every upright run of pixels the ground depth just below its foot and leaves
the rest (the ground itself, the sky, and runs whose foot is hidden by another object) as
the network predicted. It is the stixel-world assumption (Badino et al. 2009) applied to
the network's own labels, and costs about 2 ms a frame at the ``cpu`` preset's model size
(``bench/bench_ground_contact.py``).

Used by :class:`sim2real_perception.predictor.Predictor` when the export's ``model`` section
sets ``ground_contact: true``; see docs/training.md.
"""
import numpy as np

from .labels import CLASS_NAMES, NUM_CLASSES
from .model_config import ground_class_ids

SKY = CLASS_NAMES.index('sky')


def ground_contact_depth(depth, labels, ground_ids=None, sky_id=SKY):
    """Return ``depth`` with each upright run set to the ground depth at its foot.

    ``depth`` (HxW float) and ``labels`` (HxW class ids) are one frame's outputs. A run is
    a vertical stretch of one non-ground class in one column; its foot is the pixel just
    below it, which must be ground (``ground_ids``, default road and terrain). A run whose
    foot is another class (hidden by a nearer object) and the sky keep their depth.
    """
    if depth.shape != labels.shape or depth.ndim != 2:
        raise ValueError(f'depth {depth.shape} and labels {labels.shape} must be one HxW frame')
    if ground_ids is None:
        ground_ids = ground_class_ids(NUM_CLASSES)
    ground = np.isin(labels, ground_ids)
    out = np.array(depth, dtype=np.float32, copy=True)
    foot = np.full(labels.shape[1], np.nan, np.float32)   # per column: the run's ground depth
    for r in range(labels.shape[0] - 2, -1, -1):
        row = labels[r]
        starts = ground[r + 1] & ~ground[r]               # a run begins on the ground
        goes_on = (row == labels[r + 1]) & ~ground[r]     # the run below continues
        foot = np.where(starts, out[r + 1], np.where(goes_on, foot, np.nan))
        upright = ~np.isnan(foot) & (row != sky_id)
        out[r, upright] = foot[upright]
    return out
