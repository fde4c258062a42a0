"""Figures like the paper's Figure 3: input, predicted and ground-truth depth and labels.

One colour scheme for offline evaluation and replay, so their pictures compare;
``save_comparison_grid`` puts several methods side by side (``training.evaluate``).
"""
from pathlib import Path

import cv2
import numpy as np

from sim2real_perception.labels import colorize

COLUMNS = ('input', 'depth (pred)', 'depth (GT)', 'labels (pred)', 'labels (GT)')


def colorize_depth(depth, max_depth=80.0, near=1.5):
    """Metres -> rgb8 on a log scale (near = bright); invalid (0/NaN) black, +inf = far.

    Log depth spreads the 5-40 m range of street scenes over the colour map, where inverse
    depth would leave everything beyond 10 m nearly black.
    """
    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    logd = np.full(d.shape, np.log(max_depth), np.float32)
    logd[valid] = np.log(np.clip(d[valid], near, max_depth))
    scaled = np.clip((np.log(max_depth) - logd) / (np.log(max_depth) - np.log(near)), 0, 1)
    rgb = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[..., ::-1]
    rgb = rgb.copy()
    rgb[~(valid | np.isposinf(d))] = 0
    if valid.mean() < 0.2:  # sparse LiDAR GT: thicken points so they are visible
        rgb = cv2.dilate(rgb, np.ones((3, 3), np.uint8))
    return rgb


def tile(array, height, width, kind):
    """Render one figure tile: kind 'input' (RGB), 'depth' (metres) or 'labels'; None = grey."""
    if array is None:
        return np.full((height, width, 3), 40, np.uint8)
    if kind == 'depth':
        array = colorize_depth(array)
    elif kind == 'labels':
        array = colorize(array)
    interp = cv2.INTER_NEAREST if kind != 'input' else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(array), (width, height), interpolation=interp)


def save_prediction_grid(path, rows, tile_width=320):
    """Write a PNG: one row per frame of (image, depth pred, depth GT, labels pred, labels GT)."""
    h0, w0 = rows[0][0].shape[:2]
    tile_h = max(1, int(round(tile_width * h0 / w0)))
    header = np.full((24, tile_width * len(COLUMNS), 3), 255, np.uint8)
    for i, name in enumerate(COLUMNS):
        cv2.putText(header, name, (i * tile_width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    kinds = ('input', 'depth', 'depth', 'labels', 'labels')
    body = [np.concatenate([tile(a, tile_h, tile_width, k) for a, k in zip(row, kinds)], 1)
            for row in rows]
    grid = np.concatenate([header, *body], 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[..., ::-1]):
        raise OSError(f'cannot write figure {path}')
    return path


def save_comparison_grid(path, frames, methods, tile_width=192, max_depth=80.0):
    """Write a Figure-3-like PNG comparing several methods on the same frames.

    ``frames`` is a list of dicts with ``image`` (rgb8) and optional ``depth`` / ``labels``
    ground truth; ``methods`` maps a method name to one ``(depth, labels)`` prediction per
    frame. Columns: input, depth GT, depth of each method, labels GT, labels of each method,
    so every prediction sits next to its ground truth; one row per frame.
    """
    if not frames:
        raise ValueError('no frames to draw')
    names = list(methods)
    columns = (['input', 'depth GT'] + [f'depth {n}' for n in names] + ['labels GT']
               + [f'labels {n}' for n in names])
    h0, w0 = frames[0]['image'].shape[:2]
    tile_h = max(1, int(round(tile_width * h0 / w0)))
    header = np.full((22, tile_width * len(columns), 3), 255, np.uint8)
    scale = min(0.45, 0.45 * tile_width / max(60, 9 * max(len(c) for c in columns)))
    for i, name in enumerate(columns):
        cv2.putText(header, name, (i * tile_width + 4, 15), cv2.FONT_HERSHEY_SIMPLEX,
                    max(scale, 0.3), (0, 0, 0), 1, cv2.LINE_AA)
    body = []
    for r, frame in enumerate(frames):
        preds = [methods[n][r] for n in names]
        tiles = [tile(frame['image'], tile_h, tile_width, 'input'),
                 _depth_tile(frame.get('depth'), tile_h, tile_width, max_depth)]
        tiles += [_depth_tile(p[0], tile_h, tile_width, max_depth) for p in preds]
        tiles.append(tile(frame.get('labels'), tile_h, tile_width, 'labels'))
        tiles += [tile(p[1], tile_h, tile_width, 'labels') for p in preds]
        body.append(np.concatenate(tiles, 1))
    grid = np.concatenate([header, *body], 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f'cannot write figure {path}')
    return path


def _depth_tile(depth, height, width, max_depth):
    """Colour a depth map at tile size; sparse LiDAR points are grown so they stay visible."""
    if depth is None:
        return np.full((height, width, 3), 40, np.uint8)
    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    factor = d.shape[1] / width
    if valid.mean() < 0.2 and factor > 1:
        inv = np.where(valid, 1.0 / np.where(valid, d, 1.0), 0).astype(np.float32)
        k = 2 * int(np.ceil(factor)) + 1
        inv = cv2.dilate(inv, np.ones((k, k), np.uint8))  # max inverse depth = nearest point
        with np.errstate(divide='ignore'):
            d = np.where(inv > 0, 1.0 / inv, np.where(np.isposinf(d), np.inf, 0))
    rgb = colorize_depth(d, max_depth)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_NEAREST)


PLOT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75))


def _panel(series, title, xlabel, size=(360, 520)):
    """Draw one line chart (``{name: (xs, ys)}``) with axes, ticks and a legend."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 56, 12, 28, 40
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    pad = max((y1 - y0) * 0.08, 1e-3)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (int(left + (x - x0) / (x1 - x0) * (w - left - right)),
                int(h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)))
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        _, yp = px(x0, yv)
        cv2.line(img, (left - 4, yp), (left, yp), (0, 0, 0), 1)
        cv2.putText(img, f'{yv:.2f}', (4, yp + 4), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        xv = x0 + (x1 - x0) * k / 4
        xp, _ = px(xv, y0)
        cv2.line(img, (xp, h - bottom), (xp, h - bottom + 4), (0, 0, 0), 1)
        cv2.putText(img, f'{xv:.0f}', (xp - 10, h - bottom + 16), font, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, title, (left, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (left, h - 8), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = PLOT_COLOURS[i % len(PLOT_COLOURS)]
        pts = np.array([px(x, y) for x, y in zip(xv, yv)], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        cv2.putText(img, name, (w - right - 150, top + 18 + 16 * i), font, 0.42, colour, 1,
                    cv2.LINE_AA)
    return img


def line_plot(path, left, right, titles, xlabel):
    """Write two line charts side by side (e.g. AbsRel and mIoU against the step) as PNG."""
    img = np.concatenate([_panel(left, titles[0], xlabel), _panel(right, titles[1], xlabel)],
                         axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])
    return path
