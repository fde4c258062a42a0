"""Appearance of procedural street frames: the clean *sim* style and the *real* style.

Both styles shade the same geometry with the same base colours, so the label statistics of
the two domains match; the gap is appearance only. Sim: flat per-class colours with Lambert
shading, like a game engine (plus VKITTI 2's weather/time variations), optionally with the
engine's own surface textures and cast shadows (``SimStyle.texture``, ``.shadow``). Real: surface
textures, a random sun with cast shadows, colour balance, exposure, vignetting, blur,
sensor noise and JPEG artefacts, each scaled by ``RealStyle.gap``; and the KITTI-like sparse
LiDAR ground truth (``lidar_depth``).
"""
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import cv2
import numpy as np

from .street_scene import (C, GROUND_ROAD, GROUND_SIDEWALK, GROUND_TERRAIN, KIND_BOX,
                           KIND_GROUND, KIND_SKY)

# Base colours (RGB, 0..1). Per-instance choices come from the layout's ``tint``.
ROAD = (0.33, 0.33, 0.35)
SIDEWALK = (0.60, 0.58, 0.55)
TERRAIN = (0.40, 0.48, 0.25)
LANE = (0.92, 0.92, 0.90)
CLASS_COLOURS = {
    C['vegetation']: [(0.20, 0.45, 0.15), (0.25, 0.40, 0.12), (0.15, 0.38, 0.18)],
    C['building']: [(0.67, 0.63, 0.59), (0.55, 0.47, 0.39), (0.75, 0.71, 0.63),
                    (0.47, 0.43, 0.41), (0.63, 0.35, 0.27), (0.78, 0.78, 0.76)],
    C['guard_rail']: [(0.69, 0.71, 0.73)],
    C['traffic_sign']: [(0.12, 0.27, 0.67), (0.80, 0.15, 0.15), (0.85, 0.75, 0.10)],
    C['traffic_light']: [(0.16, 0.16, 0.16)],
    C['pole']: [(0.47, 0.47, 0.49)],
    C['truck']: [(0.70, 0.20, 0.16), (0.85, 0.85, 0.85), (0.20, 0.35, 0.60)],
    C['car']: [(0.78, 0.12, 0.12), (0.12, 0.24, 0.63), (0.90, 0.90, 0.90), (0.10, 0.10, 0.10),
               (0.59, 0.59, 0.61), (0.24, 0.43, 0.24), (0.78, 0.67, 0.16)],
    C['van']: [(0.90, 0.90, 0.90), (0.59, 0.59, 0.61), (0.16, 0.24, 0.43)],
}
VEHICLES = (C['car'], C['van'], C['truck'])


@dataclass(frozen=True)
class SimStyle:
    """Game-engine look: one colour per class/instance, Lambert shading.

    ``texture`` and ``shadow`` (0 = off, the default) give it what Virtual KITTI 2's engine
    renders and a flat-shaded sim lacks: surface textures (one fixed set of assets,
    ``texture_seed``, the same in every scene, unlike the real drives' own) and hard cast
    shadows of its sun; ``scene_sun`` gives each scene its own sun, as each of VKITTI 2's
    worlds is lit its own way. Without textures and shadows a network trained on the sim
    reads any texture or shadow edge on a real road as structure (docs/benchmarks.md).
    """

    sun_azimuth_deg: float = 35.0
    sun_elevation_deg: float = 50.0
    ambient: float = 0.62
    diffuse: float = 0.45
    light: tuple = (1.0, 1.0, 1.0)
    sky_top: tuple = (0.35, 0.60, 0.95)
    sky_horizon: tuple = (0.70, 0.82, 0.97)
    fog_distance_m: float = 0.0          # 0 = no fog; else visibility scale (exp falloff)
    fog_colour: tuple = (0.78, 0.79, 0.80)
    brightness: float = 1.0
    yaw_deg: float = 0.0                 # camera yaw offset (15/30-deg-left/right)
    cam_height_m: float = 1.50
    pitch_deg: float = 0.0
    jpeg_quality: int = 95               # VKITTI 2 ships JPEG frames
    texture: float = 0.0                 # amplitude of the engine's surface textures
    texture_seed: int = 7                # the engine's one set of texture assets
    shadow: float = 0.0                  # darkening inside cast shadows of the sim sun
    scene_sun: bool = False              # each scene its own sun (VKITTI 2's worlds differ)


#: VKITTI 2 variations as style overrides of ``clone``.
VARIATIONS = {
    'clone': {},
    'morning': dict(sun_azimuth_deg=80.0, sun_elevation_deg=15.0, light=(1.05, 0.97, 0.85),
                    sky_top=(0.45, 0.62, 0.90), sky_horizon=(0.95, 0.85, 0.70)),
    'sunset': dict(sun_azimuth_deg=-70.0, sun_elevation_deg=6.0, ambient=0.45,
                   light=(1.15, 0.80, 0.55), sky_top=(0.30, 0.35, 0.60),
                   sky_horizon=(0.98, 0.60, 0.35), brightness=0.85),
    'overcast': dict(ambient=0.85, diffuse=0.12, sky_top=(0.70, 0.72, 0.75),
                     sky_horizon=(0.82, 0.83, 0.85), brightness=0.9),
    'fog': dict(ambient=0.8, diffuse=0.15, fog_distance_m=45.0),
    'rain': dict(ambient=0.75, diffuse=0.1, sky_top=(0.45, 0.47, 0.50),
                 sky_horizon=(0.60, 0.61, 0.63), brightness=0.7, fog_distance_m=150.0,
                 fog_colour=(0.55, 0.56, 0.58)),
    '15-deg-left': dict(yaw_deg=-15.0), '15-deg-right': dict(yaw_deg=15.0),
    '30-deg-left': dict(yaw_deg=-30.0), '30-deg-right': dict(yaw_deg=30.0),
}


@dataclass(frozen=True)
class RealStyle:
    """Camera-photo look; every effect is multiplied by ``gap`` (0 = sim-like appearance)."""

    gap: float = 1.0
    texture: float = 1.0          # amplitude of surface textures (asphalt, grass, windows...)
    shadow: float = 0.55          # darkening inside cast shadows
    sun_elevation_deg: tuple = (20.0, 60.0)   # random per drive
    ambient: float = 0.40
    diffuse: float = 0.80
    white_balance: float = 0.06   # std of random per-channel gains (per drive)
    warm: float = 0.06            # systematic red up / blue down shift
    saturation: float = 0.75      # colour saturation factor at gap 1
    exposure: float = 0.15        # std of log exposure (per frame)
    vignetting: float = 0.35      # brightness loss in the corners
    blur_sigma: float = 0.8       # Gaussian blur, pixels at 256 rows (scaled with size)
    noise_std: float = 4.0        # sensor noise, digital numbers
    jpeg_quality: int = 45        # 0 = no JPEG round trip
    cam_height_m: float = 1.65    # KITTI camera height
    pitch_deg: float = 1.0        # looks slightly down (sim: level)
    lidar_beams: int = 64         # HDL-64E-like: +2 .. -24.8 deg
    lidar_dropout: float = 0.08   # fraction of returns lost
    lidar_noise_m: float = 0.02
    lidar_max_range_m: float = 80.0


def style_from_overrides(style, pairs):
    """Apply ``KEY=VALUE`` strings (numbers or comma-separated tuples) to a style dataclass."""
    known = {f.name: f for f in fields(style)}
    changes = {}
    for pair in pairs:
        key, _, value = pair.partition('=')
        if key not in known:
            raise ValueError(f'unknown style key {key!r}; known: {sorted(known)}')
        current = getattr(style, key)
        if isinstance(current, tuple):
            changes[key] = tuple(float(v) for v in value.split(','))
        else:
            changes[key] = type(current)(float(value)) if not isinstance(current, str) else value
    return replace(style, **changes)


NOISE_SIZE = 256  # lattice of the tileable value-noise texture


@lru_cache(maxsize=64)
def _lattice(seed):
    return np.random.default_rng([int(seed), 7]).random((NOISE_SIZE, NOISE_SIZE),
                                                        dtype=np.float32)


def value_noise(x, y, seed=0):
    """2-D value noise in [0, 1]: a seeded random lattice, bilinear between integer points.

    Tiles every 256 units; sampled with ``cv2.remap`` (a few ms per megapixel).
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    shape, n = np.broadcast_shapes(x.shape, y.shape), max(x.size, y.size)
    if n == 0:
        return np.zeros(shape, np.float32)
    rows = -(-n // NOISE_SIZE)
    maps = np.zeros((2, rows * NOISE_SIZE), np.float32)
    maps[0, :n] = np.mod(np.broadcast_to(x, shape).ravel(), NOISE_SIZE)
    maps[1, :n] = np.mod(np.broadcast_to(y, shape).ravel(), NOISE_SIZE)
    out = cv2.remap(_lattice(seed), maps[0].reshape(rows, NOISE_SIZE),
                    maps[1].reshape(rows, NOISE_SIZE), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_WRAP)
    return out.ravel()[:n].reshape(shape)


def sun_direction(azimuth_deg, elevation_deg):
    """Return the unit vector towards the sun (world: x right, y up, z forward)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], np.float32)


def _fmod(a, m):
    """Return ``a mod m`` in [0, m) (much faster than numpy's float ``%``)."""
    return a - np.float32(m) * np.floor(a * np.float32(1.0 / m))


def _pick(options, tint):
    return np.asarray(options, np.float32)[np.minimum((tint * len(options)).astype(int),
                                                      len(options) - 1)]


def base_colours(geo, layout):
    """Per-pixel base colour (H, W, 3) shared by both styles, lane marks included."""
    h, w = geo.depth.shape
    col = np.zeros((h, w, 3), np.float32)
    g = geo.kind == KIND_GROUND
    col[g] = np.asarray([ROAD, SIDEWALK, TERRAIN], np.float32)[geo.ground[g]]
    if layout.lane_marks:
        road = g & (geo.ground == GROUND_ROAD)
        x, z = geo.points[0][road], geo.points[2][road]
        lane_w = 2 * layout.road_half / layout.lanes
        edge = np.abs(np.abs(x) - (layout.road_half - 0.25)) < 0.08
        k = np.round((x + layout.road_half) / lane_w)
        inner = (np.abs(x + layout.road_half - k * lane_w) < 0.07) & (k > 0) & (
            k < layout.lanes) & (_fmod(z, 9.0) < 3.0)
        mark = edge | inner
        idx = np.flatnonzero(road.ravel())[mark]
        col.reshape(-1, 3)[idx] = LANE
    objs = geo.obj >= 0
    col[objs] = object_colours(layout)[geo.obj[objs]]
    return col


def object_colours(layout):
    """Return the base colour (N, 3) of every box then sphere (cached on the layout)."""
    table = getattr(layout, '_colours', None)
    if table is None:
        classes = np.concatenate([layout.box_class, layout.sphere_class])
        table = np.zeros((classes.size, 3), np.float32)
        for cls, options in CLASS_COLOURS.items():
            sel = classes == cls
            if sel.any():
                table[sel] = _pick(options, layout.tint[sel])
        layout._colours = table
    return table


def _lambert(geo, sun, ambient, diffuse):
    ndotl = np.maximum(np.einsum('chw,c->hw', geo.normal, sun), 0.0)
    return ambient + diffuse * ndotl


def _sky(rays, top, horizon):
    """Sky gradient for world rays (3, N): horizon colour below, ``top`` from 20 deg up."""
    elev = rays[1] / np.sqrt((rays ** 2).sum(axis=0))
    t = np.clip(elev * 3.0, 0, 1)[..., None]
    return np.asarray(horizon, np.float32) * (1 - t) + np.asarray(top, np.float32) * t


def render_sim(geo, layout, style, cam=None):
    """Sim-style RGB uint8 frame of ``geo`` (``cam``: needed when ``style.shadow`` > 0)."""
    col = base_colours(geo, layout)
    _textures(geo, layout, col, style.texture, style.texture_seed)
    sun = sun_direction(style.sun_azimuth_deg, style.sun_elevation_deg)
    light = _lambert(geo, sun, style.ambient, style.diffuse)
    if style.shadow > 0:
        if cam is None:
            raise ValueError('SimStyle.shadow > 0 needs the camera')
        shade = shadow_mask(geo, layout, cam, sun)
        light[shade] = light[shade] * (1 - style.shadow)
    img = col * light[..., None]
    img *= np.asarray(style.light, np.float32)
    sky = geo.kind == KIND_SKY
    img[sky] = _sky(geo.rays[:, sky], style.sky_top, style.sky_horizon)
    if style.fog_distance_m > 0:
        depth = np.where(sky, 1e4, geo.depth)
        keep = np.exp(-depth / style.fog_distance_m)[..., None]
        img = img * keep + np.asarray(style.fog_colour, np.float32) * (1 - keep)
    img *= style.brightness
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


#: Colours surface detail blends towards: none, dirt (grass), glass (windows), car glass.
_BLEND = np.array([(0, 0, 0), (0.47, 0.40, 0.30), (0.22, 0.26, 0.32), (0.132, 0.156, 0.192)],
                  np.float32)


def _textures(geo, layout, col, amount, seed):
    """Add real-world surface detail to the base colours ``col`` (in place).

    Each surface gets a brightness factor and optionally a blend towards a detail colour
    (dirt, window glass); both are gathered per pixel and applied in one pass.
    """
    if amount <= 0:
        return
    px, py, pz = geo.points
    mul = np.ones(geo.depth.shape, np.float32)
    weight = np.zeros(geo.depth.shape, np.float32)
    target = np.zeros(geo.depth.shape, np.uint8)
    g = geo.kind == KIND_GROUND
    road = g & (geo.ground == GROUND_ROAD)
    x, z = px[road], pz[road]
    mul[road] = 1 + amount * (0.25 * (value_noise(x * 6.0, z * 6.0, seed) - 0.5)
                              + 0.35 * (value_noise(x * 0.4, z * 0.4, seed + 1) - 0.5))
    walk = g & (geo.ground == GROUND_SIDEWALK)
    mul[walk] = 1 - amount * 0.25 * ((_fmod(px[walk], 0.8) < 0.04)
                                     | (_fmod(pz[walk], 0.8) < 0.04))
    grass = g & (geo.ground == GROUND_TERRAIN)
    x, z = px[grass], pz[grass]
    weight[grass] = amount * 0.7 * value_noise(x * 0.3, z * 0.3, seed + 2)
    target[grass] = 1
    mul[grass] = 1 + amount * 0.5 * (value_noise(x * 8, z * 8, seed + 3) - 0.5)
    objs = geo.obj >= 0
    classes = np.full(geo.obj.shape, 255, np.uint8)
    classes[objs] = np.concatenate([layout.box_class, layout.sphere_class])[geo.obj[objs]]
    veg = classes == C['vegetation']
    mul[veg] = 1 + amount * 0.9 * (value_noise((px[veg] + pz[veg]) * 3.0, py[veg] * 3.0,
                                               seed + 4) - 0.5)
    bld = classes == C['building']
    y = py[bld]
    along = np.where(np.abs(geo.normal[0][bld]) > 0.5, pz[bld], px[bld])
    a, b = _fmod(along, 3.2), _fmod(y, 3.0)
    window = (a > 1.0) & (a < 2.4) & (b > 1.0) & (b < 2.3) & (y > 0.8) & (
        np.abs(geo.normal[1][bld]) < 0.5)
    weight[bld] = amount * window
    target[bld] = 2
    mul[bld] = 1 + amount * 0.2 * (value_noise(along * 2, y * 2, seed + 5) - 0.5)
    veh = np.isin(classes, VEHICLES) & (geo.kind == KIND_BOX)
    if veh.any():
        box = layout.boxes[geo.obj[veh]]
        rel = (py[veh] - box[:, 2]) / np.maximum(box[:, 3] - box[:, 2], 1e-3)
        side = np.abs(geo.normal[1][veh]) < 0.5
        weight[veh] = amount * (side & (rel > 0.55) & (rel < 0.92))
        target[veh] = 3
        mul[veh] = np.where(side & (rel < 0.25), 1 - 0.7 * amount, 1.0)
    w = weight[..., None]
    col *= 1 - w
    col += _BLEND[target] * w
    col *= mul[..., None]


def shadow_mask(geo, layout, cam, sun):
    """Float mask (H, W) of ground pixels inside objects' cast shadows (directional sun)."""
    mask = np.zeros(geo.depth.shape, np.uint8)
    r = layout.spheres[:, 3:4]
    sph = np.concatenate([layout.spheres[:, :3] - r, layout.spheres[:, :3] + r], axis=1)
    bounds = np.concatenate([layout.boxes[:, [0, 2, 4, 1, 3, 5]], sph]).reshape(-1, 6)
    bounds = bounds[(np.abs(bounds[:, 0]) < 500)]  # not the backdrop
    near = (bounds[:, 5] > cam.position[2] - 30) & (bounds[:, 2] < cam.position[2] + 160)
    idx = np.array([[0, 1, 2], [0, 1, 5], [0, 4, 2], [0, 4, 5], [3, 1, 2], [3, 1, 5],
                    [3, 4, 2], [3, 4, 5]])
    rot = cam.rotation()
    for b in bounds[near]:
        pts = b[idx]
        ground = pts - (pts[:, 1:2] / sun[1]) * sun[None, :]  # along the sun ray to y = 0
        hull = cv2.convexHull(ground[:, [0, 2]].astype(np.float32)).reshape(-1, 2)
        world = np.stack([hull[:, 0], np.zeros(len(hull)), hull[:, 1]], axis=1)
        camp = (world - cam.position) @ rot
        poly = _clip_near(camp, 0.1)
        if len(poly) < 3:
            continue
        uv = np.stack([cam.fx * poly[:, 0] / poly[:, 2] + cam.cx,
                       cam.fy * poly[:, 1] / poly[:, 2] + cam.cy], axis=1)
        uv = np.clip(uv, -4 * cam.width, 4 * cam.width)
        cv2.fillPoly(mask, [np.round(uv * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return (mask > 0) & (geo.kind == KIND_GROUND)


def _clip_near(poly, near):
    """Sutherland-Hodgman clip of a camera-frame polygon against z >= near."""
    out = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


@lru_cache(maxsize=8)
def _vignette(h, w, strength):
    """Brightness factor (times 255) falling off by ``strength / 2`` at the image corners."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    return ((1 - strength * r2 / 2) * 255.0).astype(np.float32)


def real_look(rng, style):
    """Draw the per-drive appearance parameters of the real style."""
    g = style.gap
    gains = 1 + g * (style.white_balance * rng.normal(size=3) + style.warm * np.array(
        [1.0, 0.0, -1.3]))
    return {'sun_azimuth_deg': rng.uniform(-180, 180),
            'sun_elevation_deg': rng.uniform(*style.sun_elevation_deg),
            'gains': gains.astype(np.float32), 'texture_seed': int(rng.integers(1 << 20))}


def render_real(geo, layout, cam, style, look, rng):
    """Real-style RGB uint8 frame of ``geo`` (``look`` from ``real_look``; ``rng`` per frame)."""
    g = style.gap
    col = base_colours(geo, layout)
    _textures(geo, layout, col, style.texture * g, look['texture_seed'])
    sun = sun_direction(look['sun_azimuth_deg'], look['sun_elevation_deg'])
    ambient = 0.62 + (style.ambient - 0.62) * g
    diffuse = 0.45 + (style.diffuse - 0.45) * g
    light = _lambert(geo, sun, ambient, diffuse)
    if style.shadow > 0 and g > 0:
        shade = shadow_mask(geo, layout, cam, sun)
        light[shade] = light[shade] * (1 - style.shadow * min(g, 1.0))
    img = col * light[..., None]
    sky = geo.kind == KIND_SKY
    rays = geo.rays[:, sky]
    sim = SimStyle()   # gap 0: the sim sky; gap 1: a paler, hazier photo sky with clouds
    top = np.add(sim.sky_top, g * (np.subtract((0.55, 0.68, 0.88), sim.sky_top)))
    horizon = np.add(sim.sky_horizon, g * (np.subtract((0.85, 0.88, 0.92), sim.sky_horizon)))
    sky_col = _sky(rays, top, horizon)
    up = np.maximum(rays[1], 0.05)
    clouds = value_noise(rays[0] / up * 2, 1 / up * 2, look['texture_seed'] + 9)
    sky_col = sky_col + (g * 0.25 * np.clip(clouds - 0.4, 0, 1))[..., None]
    img[sky] = sky_col * (1 - g) + np.minimum(sky_col * 1.15, 1.0) * g
    # Camera: white balance, exposure, saturation, vignetting, blur, noise, JPEG (in place).
    img *= look['gains'] * np.float32(np.exp(rng.normal(0, style.exposure * g)))
    grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    img -= grey
    img *= np.float32(1 + (style.saturation - 1) * g)
    img += grey
    h, w = geo.depth.shape
    img *= _vignette(h, w, float(style.vignetting * g))[..., None]   # also scales to 0..255
    sigma = style.blur_sigma * g * h / 256
    if sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if style.noise_std * g > 0:   # shot-noise-like: std grows with the square root of signal
        amp = np.clip(img, 12.75, 255.0)
        amp *= np.float32(1 / 128.0)
        np.sqrt(amp, out=amp)
        amp *= np.float32(style.noise_std * g)
        amp *= rng.standard_normal(img.shape, dtype=np.float32)
        img += amp
    img += np.float32(0.5)
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    if style.jpeg_quality and g > 0:
        q = int(round(100 - (100 - style.jpeg_quality) * min(g, 1.0)))
        ok, buf = cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img


def lidar_depth(geo, cam, style, rng):
    """KITTI-like sparse depth: the pixels swept by a 64-beam scanner's lines, 0 elsewhere."""
    beams = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.33, 32)])
    if style.lidar_beams < 64:   # fewer beams spread over the same field of view
        beams = beams[np.unique(np.linspace(0, 63, max(1, style.lidar_beams)).round().astype(int))]
    d = geo.rays
    elev = np.degrees(np.arctan2(d[1], np.sqrt(d[0] ** 2 + d[2] ** 2)))
    row_deg = np.degrees(np.arctan(1.0 / cam.fy)) / 2
    order = np.sort(beams)
    i = np.clip(np.searchsorted(order, elev), 1, len(order) - 1)
    nearest = np.minimum(np.abs(elev - order[i - 1]), np.abs(elev - order[i]))
    on_line = nearest <= row_deg
    depth = geo.depth
    keep = on_line & np.isfinite(depth) & (depth < style.lidar_max_range_m) & (
        rng.random(depth.shape) >= style.lidar_dropout)
    out = np.zeros(depth.shape, np.float32)
    out[keep] = depth[keep] + rng.normal(0, style.lidar_noise_m, int(keep.sum()))
    return np.maximum(out, 0.0)
