"""Map metric depth to and from the depth decoder's tanh range [-1, 1].

The decoder ends in tanh (Table 2 row 20), so metres must be squashed into [-1, 1]. Linear
is simple but spends most of the range on far depths; inverse and log give near objects
(what a robot must not hit) more resolution. Sky and far (+inf) encode as ``max_depth``.
"""
import math

import torch

from ..model_config import ENCODINGS


def _check(encoding, min_depth, max_depth):
    if encoding not in ENCODINGS:
        raise ValueError(f'depth_encoding {encoding!r} not in {ENCODINGS}')
    if not 0 < min_depth < max_depth:
        raise ValueError(f'need 0 < min_depth ({min_depth}) < max_depth ({max_depth})')


def encode_depth(depth, encoding='linear', min_depth=0.5, max_depth=80.0):
    """Metres (any value, +inf = far) -> targets in [-1, 1]; callers mask invalid pixels."""
    _check(encoding, min_depth, max_depth)
    d = torch.nan_to_num(depth, nan=max_depth, posinf=max_depth).clamp(min_depth, max_depth)
    if encoding == 'linear':
        u = (d - min_depth) / (max_depth - min_depth)
    elif encoding == 'inverse':
        u = 1.0 - (1.0 / d - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)
    else:
        u = torch.log(d / min_depth) / math.log(max_depth / min_depth)
    return 2.0 * u - 1.0


def decode_depth(t, encoding='linear', min_depth=0.5, max_depth=80.0):
    """Targets in [-1, 1] -> metres in [min_depth, max_depth] (traceable for ONNX)."""
    _check(encoding, min_depth, max_depth)
    u = ((t + 1.0) * 0.5).clamp(0.0, 1.0)
    if encoding == 'linear':
        return min_depth + u * (max_depth - min_depth)
    if encoding == 'inverse':
        inv = 1.0 / max_depth + (1.0 - u) * (1.0 / min_depth - 1.0 / max_depth)
        return 1.0 / inv
    return min_depth * torch.exp(u * math.log(max_depth / min_depth))
