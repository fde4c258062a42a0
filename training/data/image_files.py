"""Reading and writing the image files of the datasets, with errors that name the file.

OpenCV decodes a truncated JPEG into a grey-padded image without complaint, so every read
first checks that the file is complete (PNG ``IEND`` chunk, JPEG ``EOI`` marker). A bad file
raises :class:`DataError`; it never becomes a silently wrong sample.
"""
from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_END = b'IEND\xaeB`\x82'
JPEG_START = b'\xff\xd8'
JPEG_END = b'\xff\xd9'
#: Fast lossless PNG settings for written datasets (run-length zlib: quick and small on
#: label maps and depth, as small as level 1 on photos).
PNG_FAST = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_RLE)


class DataError(ValueError):
    """A dataset file or layout problem; the message names the file."""


def file_problem(path):
    """Return why ``path`` is not a complete PNG/JPEG file, or None if it looks complete.

    Cheap (reads the first and last few bytes): used to pre-screen files when the user asked
    to skip bad samples.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return 'empty file'
        with open(path, 'rb') as f:
            head = f.read(8)
            f.seek(max(0, size - 64))
            tail = f.read().rstrip(b'\x00')
    except OSError as exc:
        return f'cannot read ({exc.strerror or exc})'
    if head.startswith(PNG_SIGNATURE):
        return None if tail.endswith(PNG_END) else 'truncated PNG (no IEND chunk)'
    if head.startswith(JPEG_START):
        return None if tail.endswith(JPEG_END) else 'truncated JPEG (no end marker)'
    return None  # another format: left to the decoder


def _decode(path, flags):
    path = Path(path)
    if not path.is_file():
        raise DataError(f'{path}: file not found')
    problem = file_problem(path)
    if problem:
        raise DataError(f'{path}: {problem}')
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags)
    if image is None:
        raise DataError(f'{path}: not a readable image')
    return image


def read_rgb(path):
    """Read a colour photo as HxWx3 uint8 RGB (grey is replicated, alpha dropped)."""
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f'{path}: unsupported image type {image.dtype}')
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_uint16(path):
    """Read a single-channel 16-bit PNG (depth maps) as HxW uint16."""
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise DataError(f'{path}: expected a single-channel 16-bit PNG, got '
                        f'{image.dtype} with shape {image.shape}')
    return image


def read_ids(path):
    """Read a single-channel 8-bit label-id PNG (e.g. Cityscapes ids) as HxW uint8."""
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if image.ndim == 3 and image.shape[2] >= 3 and (
            np.array_equal(image[..., 0], image[..., 1])
            and np.array_equal(image[..., 1], image[..., 2])):
        image = image[..., 0]
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DataError(f'{path}: expected a single-channel 8-bit label PNG, got '
                        f'{image.dtype} with shape {image.shape}')
    return image


def read_color_labels(path):
    """Read a colour-coded label PNG (VKITTI 2 ``classgt``) as HxWx3 uint8 RGB."""
    image = _decode(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _write(path, image, params=()):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image, list(params))
    if not ok:
        raise DataError(f'{path}: could not encode image')
    data.tofile(str(path))


def write_rgb(path, rgb, jpeg_quality=95):
    """Write HxWx3 uint8 RGB as PNG or JPEG (by the suffix of ``path``)."""
    params = (cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)) if Path(path).suffix.lower() in (
        '.jpg', '.jpeg') else PNG_FAST
    _write(path, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)


def write_png(path, array):
    """Write a single-channel uint8/uint16 array as PNG (fast compression)."""
    _write(path, np.ascontiguousarray(array), PNG_FAST)
