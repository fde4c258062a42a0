"""Procedural street geometry: random layouts of boxes and spheres, and a numpy ray caster.

World frame: x right, y up, z forward along a straight road centred on x = 0, ground at
y = 0. The camera follows OpenCV (x right, y down, z forward); rays are scaled so the ray
parameter *is* the z-depth that VKITTI 2 and KITTI store. Each object is only tested
against the pixels of its projected bounding rectangle, which keeps a 256x256 frame at a few
milliseconds.
"""
from dataclasses import dataclass, field

import numpy as np

from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX

C = {name: i for i, name in enumerate(CLASS_NAMES)}
SIDEWALK = IGNORE_INDEX  # not one of the 12 classes (VKITTI "Misc", Cityscapes "sidewalk")
KIND_SKY, KIND_GROUND, KIND_BOX, KIND_SPHERE = 0, 1, 2, 3
GROUND_ROAD, GROUND_SIDEWALK, GROUND_TERRAIN = 0, 1, 2
#: KITTI's rectified focal length per image row (721.5 px at 375 rows).
KITTI_FOCAL_PER_ROW = 721.5377 / 375.0

#: Environment presets: (building density, tree density, traffic, guard rails, sidewalk).
ENVIRONMENTS = {
    'urban': dict(buildings=0.9, trees=0.25, traffic=0.7, rails=0.05, sidewalk=1.0, lanes=(2, 4)),
    'suburban': dict(buildings=0.5, trees=0.6, traffic=0.5, rails=0.1, sidewalk=0.7,
                     lanes=(2, 2)),
    'rural': dict(buildings=0.1, trees=0.9, traffic=0.3, rails=0.4, sidewalk=0.0, lanes=(2, 2)),
    'highway': dict(buildings=0.05, trees=0.5, traffic=0.8, rails=1.0, sidewalk=0.0,
                    lanes=(3, 4)),
}


@dataclass
class Camera:
    """Pinhole camera pose and intrinsics (pitch > 0 looks down, yaw > 0 turns right)."""

    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    position: np.ndarray  # world xyz of the optical centre
    pitch: float = 0.0    # radians
    yaw: float = 0.0      # radians

    @classmethod
    def kitti_like(cls, height, width, cam_height, x=0.0, z=0.0, pitch_deg=0.0, yaw_deg=0.0,
                   focal=None):
        """Square-pixel camera with KITTI's focal length per image row (29 deg vertical FOV).

        ``focal`` (pixels) defaults to ``KITTI_FOCAL_PER_ROW * height``, so any image size is
        a centred crop of a KITTI camera scaled to that height: at KITTI's aspect (1242x375)
        the horizontal field of view is KITTI's 81 deg, at 256x256 it is 29 deg.
        """
        f = float(focal) if focal else KITTI_FOCAL_PER_ROW * height
        return cls(height, width, f, f, width / 2.0, height / 2.0,
                   np.array([x, cam_height, z], dtype=np.float64),
                   np.radians(pitch_deg), np.radians(yaw_deg))

    @property
    def K(self):  # noqa: N802 - the usual name of the intrinsic matrix
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def rotation(self):
        """Give the camera-to-world matrix (columns: the camera axes in world coordinates)."""
        flip = np.diag([1.0, -1.0, 1.0])  # camera y down -> world y up
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # pitch > 0: forward tilts down
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        return yaw @ pitch @ flip

    def rays(self):
        """World ray directions (3, H, W) with camera-z component 1 (ray parameter = depth)."""
        u = (np.arange(self.width, dtype=np.float32) + 0.5 - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float32) + 0.5 - self.cy) / self.fy
        cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.float32(1.0)))
        return np.einsum('ij,jhw->ihw', self.rotation().astype(np.float32), cam)

    def project(self, points):
        """World points (N, 3) -> pixel coordinates (N, 2) and camera depth (N,)."""
        cam = (np.asarray(points, dtype=np.float64) - self.position) @ self.rotation()
        z = cam[:, 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            uv = np.stack([self.fx * cam[:, 0] / z + self.cx, self.fy * cam[:, 1] / z + self.cy],
                          axis=1)
        return uv, z


@dataclass
class Layout:
    """A street: ground zones plus boxes (xmin, xmax, ymin, ymax, zmin, zmax) and spheres."""

    road_half: float
    sidewalk: float
    lanes: int
    ego_x: float
    lane_marks: bool
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    box_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    spheres: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # x, y, z, radius
    sphere_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    #: per-object appearance seed in [0, 1), boxes then spheres
    tint: np.ndarray = field(default_factory=lambda: np.zeros(0))


class _Builder:
    def __init__(self):
        self.boxes, self.box_class, self.spheres, self.sphere_class = [], [], [], []

    def box(self, cls, x0, x1, y0, y1, z0, z1):
        self.boxes.append((min(x0, x1), max(x0, x1), y0, y1, min(z0, z1), max(z0, z1)))
        self.box_class.append(C[cls])

    def sphere(self, cls, x, y, z, r):
        self.spheres.append((x, y, z, r))
        self.sphere_class.append(C[cls])


def sample_layout(rng, length, env='urban'):
    """Random street ``length`` metres long (plus 250 m of view) in one environment preset."""
    p = ENVIRONMENTS[env]
    lanes = int(rng.integers(p['lanes'][0], p['lanes'][1] + 1))
    road_half = lanes * rng.uniform(3.2, 3.7) / 2.0
    sidewalk = rng.uniform(1.5, 3.5) if rng.random() < p['sidewalk'] else 0.0
    edge = road_half + sidewalk
    b = _Builder()
    z_end = length + 230.0
    for side in (-1.0, 1.0):
        # Buildings and hedges/forest walls alternate along the side of the street.
        z = rng.uniform(-20, 5)
        while z < z_end:
            w = rng.uniform(8, 30)
            setback = rng.uniform(0.5, 8.0)
            if rng.random() < p['buildings']:
                depth, height = rng.uniform(8, 20), rng.uniform(5, 25)
                b.box('building', side * (edge + setback), side * (edge + setback + depth), 0,
                      height, z, z + w)
            elif rng.random() < p['trees']:
                b.box('vegetation', side * (edge + setback + 3), side * (edge + setback + 12), 0,
                      rng.uniform(4, 14), z, z + w)
            z += w + (rng.uniform(0, 10) if rng.random() < 0.6 else 0.0)
        # Street trees: trunk + crown.
        z = rng.uniform(0, 20)
        while z < min(z_end, length + 120) and p['trees'] > 0:
            if rng.random() < p['trees']:
                x = side * (edge + rng.uniform(0.5, 4.0))
                trunk, r = rng.uniform(1.5, 3.0), rng.uniform(1.3, 3.2)
                b.box('vegetation', x - 0.15, x + 0.15, 0, trunk + r * 0.5, z - 0.15, z + 0.15)
                b.sphere('vegetation', x, trunk + r * 0.8, z, r)
            z += rng.uniform(8, 25)
        # Street lamps / poles, traffic signs, traffic lights.
        z = rng.uniform(5, 30)
        while z < min(z_end, length + 150):
            x = side * (road_half + min(sidewalk, 1.0) * 0.5 + 0.3)
            kind = rng.random()
            if kind < 0.5:
                b.box('pole', x - 0.1, x + 0.1, 0, rng.uniform(5, 8), z - 0.1, z + 0.1)
            elif kind < 0.8:
                top = rng.uniform(2.2, 3.0)
                b.box('pole', x - 0.05, x + 0.05, 0, top, z - 0.05, z + 0.05)
                s = rng.uniform(0.5, 0.8)
                b.box('traffic_sign', x - s / 2, x + s / 2, top - 0.1, top + s - 0.1, z - 0.12,
                      z - 0.06)
            elif env in ('urban', 'suburban'):
                top = rng.uniform(3.5, 5.5)
                b.box('pole', x - 0.08, x + 0.08, 0, top, z - 0.08, z + 0.08)
                b.box('traffic_light', x - 0.18, x + 0.18, top - 1.0, top, z - 0.35, z - 0.08)
                if rng.random() < 0.5:  # over-the-road arm with a second light
                    arm = x - side * rng.uniform(2.5, road_half)
                    b.box('pole', x, arm, top - 0.12, top, z - 0.06, z + 0.06)
                    b.box('traffic_light', arm - 0.18, arm + 0.18, top - 1.1, top - 0.1,
                          z - 0.35, z - 0.08)
            z += rng.uniform(15, 45)
        # Guard rails along the road edge.
        if rng.random() < p['rails']:
            x = side * (road_half + 0.4)
            z0 = rng.uniform(-10, 40)
            b.box('guard_rail', x - 0.08, x + 0.08, 0.45, 0.8, z0, z0 + rng.uniform(40, 250))
    # Vehicles: parked at the kerb, and traffic in the lanes; the ego lane is kept clear.
    lane_w = 2 * road_half / lanes
    ego_x = road_half - lane_w * (int(rng.integers(0, max(1, lanes // 2))) + 0.5)
    vehicles = []
    for _ in range(int(rng.poisson(p['traffic'] * (length + 150) / 12))):
        z = rng.uniform(4, length + 150)
        kind = rng.random()
        if kind < 0.72:
            cls, w, h, ln = 'car', rng.uniform(1.6, 1.9), rng.uniform(1.35, 1.6), \
                rng.uniform(3.8, 4.8)
        elif kind < 0.88:
            cls, w, h, ln = 'van', rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.5), \
                rng.uniform(4.6, 5.6)
        else:
            cls, w, h, ln = 'truck', rng.uniform(2.4, 2.6), rng.uniform(3.0, 3.8), \
                rng.uniform(7, 12)
        if rng.random() < 0.35 and env != 'highway':
            x = rng.choice([-1.0, 1.0]) * (road_half - w / 2 - 0.2)
        else:
            x = -road_half + lane_w * (int(rng.integers(0, lanes)) + 0.5) + rng.normal(0, 0.2)
        if abs(x - ego_x) < lane_w * 0.75 and z < length + 12:
            continue
        if any(abs(x - vx) < (w + vw) / 2 + 0.3 and z < vz1 + 1.0 and vz0 < z + ln + 1.0
               for vx, vw, vz0, vz1 in vehicles):
            continue
        vehicles.append((x, w, z, z + ln))
        b.box(cls, x - w / 2, x + w / 2, 0.0, h, z, z + ln)
    # Far backdrop (hills / skyline) closes the view so no ground reaches the horizon.
    far = z_end + rng.uniform(0, 30)
    b.box('building' if rng.random() < p['buildings'] * 0.7 else 'vegetation', -2000, 2000, 0,
          rng.uniform(8, 40), far, far + 5)
    boxes = np.array(b.boxes, dtype=np.float64).reshape(-1, 6)
    spheres = np.array(b.spheres, dtype=np.float64).reshape(-1, 4)
    return Layout(road_half, sidewalk, lanes, ego_x, env != 'rural' or rng.random() < 0.5, boxes,
                  np.array(b.box_class, np.uint8), spheres, np.array(b.sphere_class, np.uint8),
                  rng.random(len(boxes) + len(spheres)))


@dataclass
class Geometry:
    """Per-pixel ray-cast result; ``obj`` indexes boxes then spheres (-1 for sky/ground)."""

    depth: np.ndarray    # float32 HxW z-depth, +inf for sky
    labels: np.ndarray   # uint8 HxW class ids (255 for sidewalk)
    kind: np.ndarray     # uint8 HxW KIND_*
    obj: np.ndarray      # int32 HxW object index
    normal: np.ndarray   # float32 3xHxW world normals
    points: np.ndarray   # float32 3xHxW world hit points (undefined for sky)
    rays: np.ndarray     # float32 3xHxW world ray directions
    ground: np.ndarray   # uint8 HxW GROUND_* zone of ground pixels


def _rects(cam, boxes):
    """Pixel rectangles (N, 4: r0, r1, c0, c1) of projected boxes and their nearest depth.

    Rows with r0 >= r1 are not visible. Boxes reaching behind the camera get the full frame.
    """
    idx = np.array([[0, 2, 4], [0, 2, 5], [0, 3, 4], [0, 3, 5], [1, 2, 4], [1, 2, 5],
                    [1, 3, 4], [1, 3, 5]])
    corners = boxes[:, idx.T]  # (N, 3, 8)
    cam_pts = np.einsum('nik,ij->njk', corners - cam.position[None, :, None], cam.rotation())
    z = cam_pts[:, 2]
    zc = np.maximum(z, 1e-3)
    u = cam.fx * cam_pts[:, 0] / zc + cam.cx
    v = cam.fy * cam_pts[:, 1] / zc + cam.cy
    rects = np.stack([np.floor(v.min(1)), np.ceil(v.max(1)) + 1, np.floor(u.min(1)),
                      np.ceil(u.max(1)) + 1], axis=1)
    rects = np.clip(rects, 0, [cam.height, cam.height, cam.width, cam.width]).astype(int)
    partly_behind = (z <= 0.05).any(1)
    rects[partly_behind] = [0, cam.height, 0, cam.width]
    rects[(z <= 0.05).all(1)] = 0
    return rects, np.maximum(z.min(1), 0.0)


def _sphere_boxes(spheres):
    r = spheres[:, 3]
    return np.stack([spheres[:, 0] - r, spheres[:, 0] + r, spheres[:, 1] - r, spheres[:, 1] + r,
                     spheres[:, 2] - r, spheres[:, 2] + r], axis=1)


def _hit_box(b, o, d, inv, zbuf):
    """Slab test of rays ``d`` (3, h, w) against box ``b``; nearer than ``zbuf`` only."""
    t_lo = t_hi = axis = None
    for a in range(3):
        t1 = (b[2 * a] - o[a]) * inv[a]
        t2 = (b[2 * a + 1] - o[a]) * inv[a]
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        if t_lo is None:
            t_lo, t_hi, axis = near, far, np.zeros(near.shape, np.uint8)
        else:
            axis[near > t_lo] = a
            t_lo, t_hi = np.maximum(t_lo, near), np.minimum(t_hi, far)
    win = (t_lo <= t_hi) & (t_lo > 0) & (t_lo < zbuf)
    if not win.any():
        return None, None, None
    ax = axis[win]
    nrm = np.zeros((3, ax.size), np.float32)
    for a in range(3):
        sel = ax == a
        nrm[a, sel] = -np.sign(d[a][win][sel])
    return win, t_lo[win], nrm


def _hit_sphere(s, o, d, zbuf):
    """Nearest intersection of rays ``d`` with sphere ``s`` (x, y, z, r)."""
    oc = o - s[:3]
    a2 = (d * d).sum(axis=0)
    bh = (d * oc[:, None, None]).sum(axis=0)
    disc = bh * bh - a2 * (float(oc @ oc) - float(s[3]) ** 2)
    t = (-bh - np.sqrt(np.maximum(disc, 0))) / a2
    win = (disc > 0) & (t > 0) & (t < zbuf)
    if not win.any():
        return None, None, None
    pts = o[:, None] + d[:, win] * t[win]
    return win, t[win], (pts - s[:3, None]) / s[3]


def ray_cast(layout, cam):
    """Render depth, labels, normals and hit points of ``layout`` seen by ``cam``."""
    h, w = cam.height, cam.width
    d = cam.rays()
    o = cam.position.astype(np.float32)
    depth = np.full((h, w), np.inf, dtype=np.float32)
    kind = np.zeros((h, w), np.uint8)
    obj = np.full((h, w), -1, np.int32)
    normal = np.zeros((3, h, w), np.float32)
    normal[1] = 1.0
    # Ground plane.
    with np.errstate(divide='ignore', invalid='ignore'):
        t_ground = np.where(d[1] < -1e-6, -o[1] / d[1], np.inf).astype(np.float32)
    hit = np.isfinite(t_ground)
    depth[hit], kind[hit] = t_ground[hit], KIND_GROUND
    inv = np.where(np.abs(d) < 1e-9, np.float32(1e9), 1.0 / np.where(d == 0, 1, d))
    n_boxes = len(layout.boxes)
    bounds = np.concatenate([layout.boxes, _sphere_boxes(layout.spheres)]).reshape(-1, 6)
    rects, nearest = _rects(cam, bounds)
    for i in np.argsort(nearest, kind='stable'):  # near to far: occluded objects are culled
        r0, r1, c0, c1 = rects[i]
        if r0 >= r1 or c0 >= c1:
            continue
        sl = (slice(r0, r1), slice(c0, c1))
        zbuf = depth[sl]
        if nearest[i] >= zbuf.max():
            continue
        if i < n_boxes:
            win, t, nrm = _hit_box(bounds[i].astype(np.float32), o, d[:, sl[0], sl[1]],
                                   inv[:, sl[0], sl[1]], zbuf)
            k = KIND_BOX
        else:
            win, t, nrm = _hit_sphere(layout.spheres[i - n_boxes].astype(np.float32), o,
                                      d[:, sl[0], sl[1]], zbuf)
            k = KIND_SPHERE
        if win is None:
            continue
        zbuf[win] = t
        kind[sl][win] = k
        obj[sl][win] = i
        normal[:, sl[0], sl[1]][:, win] = nrm
    points = o[:, None, None] + d * np.where(np.isfinite(depth), depth, 0)[None]
    labels = np.full((h, w), C['sky'], np.uint8)
    ground = np.full((h, w), GROUND_TERRAIN, np.uint8)
    g = kind == KIND_GROUND
    ax = np.abs(points[0])
    ground[g & (ax < layout.road_half + layout.sidewalk)] = GROUND_SIDEWALK
    ground[g & (ax < layout.road_half)] = GROUND_ROAD
    labels[g] = np.array([C['road'], SIDEWALK, C['terrain']], np.uint8)[ground[g]]
    classes = np.concatenate([layout.box_class, layout.sphere_class]).astype(np.uint8)
    o_mask = obj >= 0
    labels[o_mask] = classes[obj[o_mask]]
    return Geometry(depth, labels, kind, obj, normal, points.astype(np.float32), d, ground)
