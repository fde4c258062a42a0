"""Cast shadows for sim frames, traced in screen space through the frame's own depth.

Photographs of streets have the sun's shadows of buildings, trees, cars and poles on the
road and the grass; a game-engine clone often has none, or always the same ones. Random
dark blobs (``transforms.region_aug``) are not the same cue: a real shadow starts at its
object's base and has its shape. With a sim frame's dense depth, labels and intrinsics the
shadow of every visible object can be drawn for a random sun: each ground pixel looks
towards the sun along a 3-D ray and is shadowed when the ray passes behind an object's
visible surface (a screen-space shadow test, as real-time renderers do it) by less than that
object's thickness (``THICKNESS_M``). Off-screen objects cast nothing. Unlabelled ground
(a sidewalk, where the classes have none) receives shadows too: unlabelled pixels within
``GROUND_BAND_M`` of the road's height. Training only; geometry and labels are untouched.
"""
import cv2
import numpy as np

from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX

#: Where shadows fall (the flat ground) and what never casts one.
RECEIVERS = tuple(CLASS_NAMES.index(n) for n in ('road', 'terrain'))
NON_CASTERS = RECEIVERS + (CLASS_NAMES.index('sky'),)
#: Unlabelled pixels this close to the road's height (metres) are ground too.
GROUND_BAND_M = 0.25
#: Sun elevation range (degrees): KITTI-like daytime drives.
ELEVATION_DEG = (15.0, 65.0)
#: Ray samples from the ground point towards the sun (metres, log-spaced).
RAY_STEPS = np.geomspace(0.15, 60.0, 28).astype(np.float32)
#: How far behind its visible surface a ray still counts as blocked, per class (metres):
#: a building is deep, a pole is not; unlisted casters get ``THIN_M``.
THICKNESS_M = {'building': 20.0, 'vegetation': 6.0, 'truck': 8.0, 'car': 4.0, 'van': 5.0}
THIN_M = 1.0
_THICK = np.full(256, THIN_M, np.float32)
for _name, _m in THICKNESS_M.items():
    _THICK[CLASS_NAMES.index(_name)] = _m
#: Traced on every ``GRID``-th pixel; the mask is upsampled (shadows are smooth at this size).
GRID = 2
#: Focal length / width when a frame has no intrinsics (KITTI: 721 / 1242).
DEFAULT_FX_PER_WIDTH = 0.58


def default_intrinsics(height, width):
    """Return a KITTI-like pinhole matrix for a frame of this size (no intrinsics read)."""
    f = DEFAULT_FX_PER_WIDTH * width
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float32)


def sun_vector(azimuth_deg, elevation_deg):
    """Return the unit vector towards the sun in camera axes (x right, y down, z forward)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)],
                    np.float32)


def ground_pixels(depth, labels, intrinsics):
    """Boolean (H, W): road and terrain, and unlabelled pixels at the road's height."""
    ground = np.isin(labels, RECEIVERS)
    road = labels == RECEIVERS[0]
    ok = np.isfinite(depth) & (depth > 0) & (depth < 200)
    unlabelled = (labels == IGNORE_INDEX) & ok
    if road.any() and unlabelled.any():
        k = np.asarray(intrinsics, np.float32)
        rows = np.arange(labels.shape[0], dtype=np.float32)[:, None]
        height = (rows - k[1, 2]) / k[1, 1] * np.where(ok, depth, 0)   # camera y, down
        level = np.median(height[road & ok])
        ground |= unlabelled & (np.abs(height - level) < GROUND_BAND_M)
    return ground & ok


def shadow_mask(depth, labels, intrinsics, sun):
    """Boolean (H, W) mask of the ground pixels whose ray to ``sun`` an object blocks."""
    h, w = labels.shape
    ground = ground_pixels(depth, labels, intrinsics)
    ys, xs = np.mgrid[0:h:GRID, 0:w:GRID]
    recv = ground[ys, xs]
    mask = np.zeros(ys.shape, bool)
    if not recv.any():
        return np.zeros((h, w), bool)
    k = np.asarray(intrinsics, np.float32)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    z = depth[ys, xs][recv].astype(np.float32)
    p = np.stack([(xs[recv] - cx) / fx * z, (ys[recv] - cy) / fy * z, z])   # (3, N)
    caster = ~np.isin(labels, NON_CASTERS) & (labels != IGNORE_INDEX) & (depth > 0)
    far = np.where(caster & np.isfinite(depth), depth, np.float32(np.inf))
    thick = _THICK[labels]
    hit = np.zeros(z.shape, bool)
    for t in RAY_STEPS:
        q = p + t * sun[:, None]
        ok = q[2] > 0.3
        u = np.full(z.shape, -1, np.int64)
        v = np.full(z.shape, -1, np.int64)
        u[ok] = np.round(fx * q[0, ok] / q[2, ok] + cx).astype(np.int64)
        v[ok] = np.round(fy * q[1, ok] / q[2, ok] + cy).astype(np.int64)
        inside = ok & (u >= 0) & (u < w) & (v >= 0) & (v < h) & ~hit
        if not inside.any():
            continue
        vi, ui = v[inside], u[inside]
        seen = far[vi, ui]
        behind = (seen < q[2, inside] - 0.05) & (q[2, inside] - seen < thick[vi, ui])
        idx = np.flatnonzero(inside)
        hit[idx[behind]] = True
    mask[recv] = hit
    full = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return full & ground


def cast_shadow_aug(image, depth, labels, intrinsics, strength, rng):
    """Darken the ground under a random sun's cast shadows.

    ``strength`` scales the chance (``min(strength, 1)`` of the frames) and the darkening.
    Returns ``image`` unchanged at 0, without depth or labels, or when no shadow falls in view.
    """
    if strength <= 0 or depth is None or labels is None or rng.random() >= min(strength, 1.0):
        return image
    h, w = labels.shape
    k = intrinsics if intrinsics is not None else default_intrinsics(h, w)
    sun = sun_vector(rng.uniform(-180.0, 180.0), rng.uniform(*ELEVATION_DEG))
    mask = shadow_mask(np.asarray(depth, np.float32), labels, k, sun)
    if not mask.any():
        return image
    soft = cv2.blur(mask.astype(np.float32), (3, 3))   # a pixel of penumbra at this size
    dark = np.float32(min(rng.uniform(0.3, 0.65) * strength, 0.9))
    # Shade is lit by the blue sky only: a slight blue cast, drawn per frame.
    tint = np.array([1.0 - rng.uniform(0, 0.12), 1.0, 1.0 + rng.uniform(0, 0.12)], np.float32)
    light = 1.0 - dark * soft[..., None] * (2.0 - tint)
    x = image.astype(np.float32) * light
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
