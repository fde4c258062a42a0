"""The label set: the paper's 12 classes common to VKITTI 2, Cityscapes and KITTI.

Every class list, palette and dataset-id mapping in the project comes from here, so a
model's outputs, the training targets and the coloured images can never disagree.
"""
import cv2
import numpy as np

#: Class names in id order (paper section 4.2).
CLASS_NAMES = (
    'terrain', 'sky', 'vegetation', 'building', 'road', 'guard_rail',
    'traffic_sign', 'traffic_light', 'pole', 'truck', 'car', 'van',
)
NUM_CLASSES = len(CLASS_NAMES)
#: The thin, countable classes (objects and poles, not regions) that ``train.self_train_paste``
#: copies from sim frames onto real ones in the project's recipes; van is read as car there.
THING_CLASSES = ('car', 'truck', 'pole', 'traffic_sign', 'traffic_light', 'guard_rail')
#: Pixels outside the 12 classes; ignored by losses and metrics (vision_msgs LabelInfo: 255).
IGNORE_INDEX = 255

#: One colour per class (VKITTI 2 colours; Tree colour for vegetation). Ignore is black.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[:NUM_CLASSES] = [
    (210, 0, 200),    # terrain
    (90, 200, 255),   # sky
    (0, 199, 0),      # vegetation
    (140, 140, 140),  # building
    (100, 60, 100),   # road
    (250, 100, 255),  # guard_rail
    (255, 255, 0),    # traffic_sign
    (200, 200, 0),    # traffic_light
    (255, 130, 0),    # pole
    (160, 60, 60),    # truck
    (255, 127, 80),   # car
    (0, 139, 139),    # van
]

#: Virtual KITTI 2 ``colors.txt`` category name -> class id (None = ignore).
VKITTI2_CATEGORY_TO_CLASS = {
    'Terrain': 0, 'Sky': 1, 'Tree': 2, 'Vegetation': 2, 'Building': 3, 'Road': 4,
    'GuardRail': 5, 'TrafficSign': 6, 'TrafficLight': 7, 'Pole': 8, 'Truck': 9,
    'Car': 10, 'Van': 11, 'Misc': None, 'Undefined': None,
}

#: Virtual KITTI 2 default colours (used when a scene has no colors.txt).
VKITTI2_DEFAULT_COLORS = {
    'Terrain': (210, 0, 200), 'Sky': (90, 200, 255), 'Tree': (0, 199, 0),
    'Vegetation': (90, 240, 0), 'Building': (140, 140, 140), 'Road': (100, 60, 100),
    'GuardRail': (250, 100, 255), 'TrafficSign': (255, 255, 0), 'TrafficLight': (200, 200, 0),
    'Pole': (255, 130, 0), 'Truck': (160, 60, 60), 'Car': (255, 127, 80), 'Van': (0, 139, 139),
    'Misc': (80, 80, 80), 'Undefined': (0, 0, 0),
}

#: Cityscapes label id (KITTI semantics benchmark) -> class id. Cityscapes has no van, and
#: caravan (29) is not a van, so van never appears in KITTI ground truth.
CITYSCAPES_ID_TO_CLASS = {
    7: 4, 11: 3, 14: 5, 17: 8, 18: 8, 19: 7, 20: 6, 21: 2, 22: 0, 23: 1, 26: 10, 27: 9,
}


def cityscapes_lut():
    """Return a 256-entry lookup table mapping Cityscapes ids to class ids (255 elsewhere)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for cs_id, cls in CITYSCAPES_ID_TO_CLASS.items():
        lut[cs_id] = cls
    return lut


#: PALETTE as an OpenCV user colour map (256x1x3). ``cv2.applyColorMap`` only looks the
#: values up, so the channel order stays RGB; it is 3x faster than numpy fancy indexing.
_PALETTE_MAP = PALETTE.reshape(256, 1, 3).copy()


def colorize(labels):
    """Map an HxW uint8 label image to an HxWx3 rgb8 image with the shared palette."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if labels.ndim != 2 or labels.size == 0:
        return PALETTE[labels]
    return cv2.applyColorMap(labels, _PALETTE_MAP)


#: Class id -> Cityscapes label id, for writing KITTI-semantics ground truth. Van has no
#: Cityscapes id; Cityscapes annotators label vans as car (26), as KITTI's ground truth does.
CLASS_TO_CITYSCAPES_ID = (22, 23, 21, 11, 7, 14, 20, 19, 17, 27, 26, 26)

#: Class id -> Virtual KITTI 2 category, for writing ``classgt`` colour images.
CLASS_TO_VKITTI2_CATEGORY = (
    'Terrain', 'Sky', 'Tree', 'Building', 'Road', 'GuardRail', 'TrafficSign', 'TrafficLight',
    'Pole', 'Truck', 'Car', 'Van',
)


def vkitti2_color_to_class(category_colors=None):
    """Return ``{(r, g, b): class id}`` (IGNORE_INDEX for Misc/Undefined) for a scene.

    ``category_colors`` is a scene's ``colors.txt`` as ``{category: (r, g, b)}``; None uses
    the defaults. Unknown category names raise KeyError so a new dataset version is noticed.
    """
    colors = VKITTI2_DEFAULT_COLORS if category_colors is None else category_colors
    table = {}
    for name, rgb in colors.items():
        if name not in VKITTI2_CATEGORY_TO_CLASS:
            raise KeyError(f'unknown Virtual KITTI 2 category {name!r}')
        cls = VKITTI2_CATEGORY_TO_CLASS[name]
        table[tuple(int(c) for c in rgb)] = IGNORE_INDEX if cls is None else cls
    return table


def labels_from_colors(rgb, color_to_class):
    """Decode an HxWx3 RGB label image; return (uint8 class ids, bool mask of unknown colours).

    Unknown colours get IGNORE_INDEX; the caller decides whether they are an error.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    key = ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
           | rgb[..., 2])
    packed = {(r << 16) | (g << 8) | b: cls for (r, g, b), cls in color_to_class.items()}
    keys = np.array(sorted(packed), dtype=np.uint32)
    values = np.array([packed[k] for k in keys], dtype=np.uint8)
    idx = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
    known = keys[idx] == key
    return np.where(known, values[idx], np.uint8(IGNORE_INDEX)).astype(np.uint8), ~known
