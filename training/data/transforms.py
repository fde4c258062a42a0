"""Geometric and photometric transforms of reader frames, seeded by the caller's RNG.

Labels are resampled by nearest neighbour (pixel centres) so class ids never blend. Depth
is never interpolated: an output pixel takes the depth under its centre when that is valid,
else the nearest surface (minimum) among the valid source pixels it covers, else 0. Invalid
stays invalid, +inf (sky) stays +inf, and sparse LiDAR points survive downscaling.
"""
import cv2
import numpy as np

RESIZE_MODES = ('crop', 'stretch')


def _centres(n_out, n_in):
    """Source index under the centre of each of ``n_out`` output pixels."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_image(image, height, width):
    """Resize an RGB image (area when shrinking, bilinear when enlarging)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def resize_labels(labels, height, width):
    """Nearest-neighbour resize of a label map (exact pixel centres)."""
    if labels.shape[:2] == (height, width):
        return labels
    return labels[_centres(height, labels.shape[0])][:, _centres(width, labels.shape[1])]


def resize_depth(depth, height, width):
    """Depth-correct resize (see module docstring): no value is ever made up."""
    depth = np.asarray(depth, dtype=np.float32)
    h, w = depth.shape
    if (h, w) == (height, width):
        return depth
    centre = depth[_centres(height, h)][:, _centres(width, w)]
    if height >= h and width >= w:
        return np.where(centre > 0, centre, 0).astype(np.float32)
    valid = depth > 0  # NaN compares False: invalid
    ph, pw = min(height, h), min(width, w)
    cell = ((np.arange(h) * ph // h)[:, None] * pw + (np.arange(w) * pw // w)[None, :])
    pooled = np.full(ph * pw, np.inf, dtype=np.float32)
    np.minimum.at(pooled, cell[valid], depth[valid])
    covered = np.zeros(ph * pw, dtype=bool)
    covered[cell[valid]] = True
    pooled[~covered] = 0.0
    pooled = pooled.reshape(ph, pw)
    pooled = pooled[_centres(height, ph)][:, _centres(width, pw)]
    return np.where(centre > 0, centre, pooled).astype(np.float32)


def fit_frame(frame, height, width, mode='crop', rng=None):
    """Bring image/depth/labels to ``height`` x ``width``.

    ``crop`` keeps the aspect ratio: scale to cover the target, then crop (random offset when
    ``rng`` is given, centred otherwise). ``stretch`` resizes to the target directly.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f'resize mode {mode!r} not in {RESIZE_MODES}')
    h, w = frame['image'].shape[:2]
    out = dict(frame)
    if mode == 'crop':
        scale = max(height / h, width / w)
        rh, rw = max(height, int(round(h * scale))), max(width, int(round(w * scale)))
    else:
        rh, rw = height, width
    out['image'] = resize_image(frame['image'], rh, rw)
    if frame.get('intrinsics') is not None:   # the pinhole follows the pixels
        k = np.array(frame['intrinsics'], np.float32)
        k[0] *= rw / w
        k[1] *= rh / h
        out['intrinsics'] = k
    if frame.get('depth') is not None:
        out['depth'] = resize_depth(frame['depth'], rh, rw)
    if frame.get('labels') is not None:
        out['labels'] = resize_labels(frame['labels'], rh, rw)
    if (rh, rw) != (height, width):
        top = int(rng.integers(0, rh - height + 1)) if rng is not None else (rh - height) // 2
        left = int(rng.integers(0, rw - width + 1)) if rng is not None else (rw - width) // 2
        for key in ('image', 'depth', 'labels'):
            if out.get(key) is not None:
                out[key] = out[key][top:top + height, left:left + width]
        if out.get('intrinsics') is not None:
            out['intrinsics'] = out['intrinsics'] - np.float32(
                [[0, 0, left], [0, 0, top], [0, 0, 0]])
    return out


def hflip(frame):
    """Mirror image, depth and labels left-right (and the principal point with them)."""
    out = dict(frame)
    for key in ('image', 'depth', 'labels'):
        if out.get(key) is not None:
            out[key] = np.ascontiguousarray(out[key][:, ::-1])
    if out.get('intrinsics') is not None:
        k = np.array(out['intrinsics'], np.float32)
        k[0, 2] = frame['image'].shape[1] - 1 - k[0, 2]
        out['intrinsics'] = k
    return out


def color_jitter(image, strength, rng):
    """Random brightness, contrast, saturation (factors in 1 +- strength) and hue shift."""
    if strength <= 0:
        return image
    x = image.astype(np.float32) / 255.0
    x = x * rng.uniform(1 - strength, 1 + strength)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - grey[..., None]) * rng.uniform(1 - strength, 1 + strength) + grey[..., None]
    x = np.clip(x, 0, 1)
    shift = rng.uniform(-strength, strength) * 18.0  # degrees of hue (OpenCV: 0..360 float)
    if abs(shift) > 1e-3:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + shift) % 360.0
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def appearance_aug(image, strength, rng):
    """Randomise a clean (sim) frame's look towards a camera photo; ``strength`` scales all.

    Domain randomisation, not a model of the real-style generator: per-channel gains,
    exposure (gamma), desaturation, smooth illumination blobs (shadow-like), fine
    multiplicative grain (texture-like), Gaussian blur, sensor noise and a JPEG round trip,
    each drawn per frame. Geometry and labels are untouched. At 0 it returns ``image``.
    """
    if strength <= 0:
        return image
    s = float(strength)
    h, w = image.shape[:2]
    x = image.astype(np.float32) / 255.0
    x = x * rng.normal(1.0, 0.08 * s, 3).astype(np.float32)                 # colour balance
    x = np.clip(x, 0, 1) ** np.float32(np.exp(rng.normal(0.0, 0.3 * s)))     # exposure
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    sat = rng.uniform(1.0 - 0.5 * s, 1.0)
    x = grey[..., None] + (x - grey[..., None]) * np.float32(sat)
    # Smooth illumination: a coarse random field upsampled, darkening parts of the frame.
    coarse = rng.uniform(1.0 - 0.5 * s, 1.0, (4, 8)).astype(np.float32)
    x = x * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    # Fine grain at a random scale: multiplicative texture on every surface.
    cell = int(rng.integers(1, 4))
    grain = rng.normal(1.0, 0.07 * s, (max(h // cell, 1), max(w // cell, 1))).astype(np.float32)
    x = x * cv2.resize(grain, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    sigma = rng.uniform(0.0, 1.0 * s) * h / 256.0
    if sigma > 0.2:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x = x + rng.normal(0.0, rng.uniform(0.0, 5.0 * s) / 255.0, x.shape).astype(np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(40, 96))
    if rng.random() < min(s, 1.0):
        ok, buf = cv2.imencode('.jpg', out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def region_aug(image, labels, strength, rng, tint=1.0, keep_hue=()):
    """Randomise each labelled region's surface of a clean (sim) frame; ``strength`` scales all.

    Texture randomisation (Tobin et al. 2017; Yue et al. 2019), per class region, drawn per
    frame: a colour gain, a multiplicative grain at a random scale and, for some regions,
    blotches blended towards a random dull colour; then a few hard-edged dark polygons in the
    lower half (cast-shadow-like). Game-engine surfaces are flat, photographed ones are not:
    a network that only saw flat class colours reads a textured or shadowed surface as
    another class. It leaves the class's shape and context as the stable cue. Geometry and
    labels are untouched; at 0 or without labels it returns ``image``. ``tint`` scales how far
    a region's hue may move (the colour gain's per-channel part and the blotch colour's pull
    away from the region's own colour); at 0 colour stays a cue: brightness gains and darker
    or lighter blotches of the region's own colour only. ``keep_hue`` (class ids) get tint 0
    whatever ``tint`` is, so their colour stays a cue (a green box is then never a building
    when buildings keep their hue; docs/benchmarks.md measures what that costs depth).
    """
    if strength <= 0 or labels is None:
        return image
    s = float(strength)
    h, w = labels.shape[:2]
    x = image.astype(np.float32) / 255.0

    def field(cell, low=0.0, high=1.0):   # smooth random field in [low, high] at ~cell px
        grid = rng.uniform(low, high, (max(h // cell, 1) + 1, max(w // cell, 1) + 1))
        return cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)

    for cls in np.unique(labels):
        if cls >= 255 or rng.random() < 0.3:   # IGNORE_INDEX, and ~30 % of regions stay flat
            continue
        m = labels == cls
        t = 0.0 if int(cls) in keep_hue else tint
        gain = rng.normal(1.0, 0.12 * s, 3).astype(np.float32)
        if t != 1.0:
            gain = np.float32(gain.mean() + t * (gain - gain.mean()))
        grain = field(int(rng.integers(1, 9)), -1.0, 1.0)[m] * np.float32(rng.uniform(0, 0.3 * s))
        region = x[m] * gain * (1.0 + grain)[:, None]
        if rng.random() < 0.5:
            colour = rng.uniform(0.2, 0.6, 3).astype(np.float32)
            if t < 1.0:   # towards the region's own colour, darker or lighter
                own = x[m].mean(0) * np.float32(rng.uniform(0.5, 1.3))
                colour = np.float32(t) * colour + np.float32(1.0 - t) * own
            blend = (np.float32(0.7 * s) * field(int(rng.integers(8, 33)))[m] ** 2)[:, None]
            region = region * (1.0 - blend) + colour * blend
        x[m] = region
    for _ in range(int(rng.integers(0, 4))):   # hard shadows on the lower half
        centre = rng.uniform([0.0, h * 0.5], [w, h])
        radius = rng.uniform(0.05, 0.25) * w
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        poly = centre + radius * np.stack([np.cos(angles), 0.4 * np.sin(angles)], 1)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        x[mask > 0] *= np.float32(1.0 - rng.uniform(0.2, 0.55) * min(s, 1.0))
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
