"""Decode ``sensor_msgs/Image`` and ``CompressedImage`` messages into numpy arrays.

Honours ``step`` (row padding), ``is_bigendian`` and the common encodings of
``sensor_msgs/image_encodings`` (rgb/bgr/rgba/bgra 8 and 16 bit, mono8/16, nUCm/nFCm,
Bayer, YUV 4:2:2, NV12/NV21), plus ``compressed`` and ``compressedDepth`` transports.
"""
import struct

import cv2
import numpy as np

from .image_files import PNG_SIGNATURE

# encoding -> (numpy dtype char, channels)
_PLAIN = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'rgb16': ('u2', 3), 'bgr16': ('u2', 3), 'rgba16': ('u2', 4), 'bgra16': ('u2', 4),
    'mono8': ('u1', 1), 'mono16': ('u2', 1),
}
_CV_DEPTHS = {'8U': 'u1', '8S': 'i1', '16U': 'u2', '16S': 'i2', '32S': 'i4', '32F': 'f4',
              '64F': 'f8'}
_BAYER = {'bayer_rggb': cv2.COLOR_BayerBG2RGB, 'bayer_bggr': cv2.COLOR_BayerRG2RGB,
          'bayer_gbrg': cv2.COLOR_BayerGR2RGB, 'bayer_grbg': cv2.COLOR_BayerGB2RGB}
_YUV = {'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'uyvy': cv2.COLOR_YUV2RGB_UYVY,
        'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUYV, 'yuyv': cv2.COLOR_YUV2RGB_YUYV,
        'nv12': cv2.COLOR_YUV2RGB_NV12, 'nv21': cv2.COLOR_YUV2RGB_NV21}


class ImageDecodeError(ValueError):
    """The message cannot be decoded (the caller adds which bag, topic and stamp)."""


def _layout(encoding):
    enc = encoding.lower()
    if enc in _PLAIN:
        return _PLAIN[enc]
    for prefix in _BAYER:
        if enc.startswith(prefix):
            return ('u2' if enc.endswith('16') else 'u1'), 1
    if enc in _YUV:
        return 'u1', None
    if len(enc) >= 4 and enc[-2] == 'c' and enc[:-2].upper() in _CV_DEPTHS:
        return _CV_DEPTHS[enc[:-2].upper()], int(enc[-1])
    raise ImageDecodeError(f'unsupported image encoding {encoding!r}')


def raw_array(msg):
    """Return the pixel array of a ``sensor_msgs/Image`` (HxW or HxWxC, native byte order)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    enc = msg.encoding.lower()
    dtype, channels = _layout(enc)
    itemsize = np.dtype(dtype).itemsize
    if channels is None:  # packed YUV: 2 bytes per pixel (4:2:2) or 1.5 (NV12/21)
        rows, row_bytes = (h * 3 // 2, w) if enc.startswith('nv') else (h, 2 * w)
    else:
        rows, row_bytes = h, w * channels * itemsize
    step = step or row_bytes
    if step < row_bytes or data.size < step * (rows - 1) + row_bytes:
        raise ImageDecodeError(f'{msg.encoding} {w}x{h}: step {step} / {data.size} bytes of '
                               f'data are too small ({row_bytes} bytes per row needed)')
    if data.size < step * rows:
        data = np.concatenate([data, np.zeros(step * rows - data.size, np.uint8)])
    rows_view = data[:step * rows].reshape(rows, step)[:, :row_bytes]
    if channels is None:
        flat = np.ascontiguousarray(rows_view)
        return flat if enc.startswith('nv') else flat.reshape(h, w, 2)
    order = '>' if msg.is_bigendian and itemsize > 1 else '<'
    array = np.ascontiguousarray(rows_view).view(order + dtype).reshape(h, w, channels)
    array = array.astype(array.dtype.newbyteorder('='), copy=False)
    return array[:, :, 0] if channels == 1 else array


def image_to_rgb(msg):
    """Decode an Image message as HxWx3 uint8 RGB (16-bit scaled down by 256)."""
    enc = msg.encoding.lower()
    array = raw_array(msg)
    if enc in _YUV:
        return cv2.cvtColor(array, _YUV[enc])
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ImageDecodeError(f'encoding {msg.encoding} is not a colour image')
    for prefix, code in _BAYER.items():
        if enc.startswith(prefix):
            return cv2.cvtColor(array, code)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if enc.startswith('bgr') or enc in ('8uc3', '8uc4'):  # OpenCV order, as cv_bridge
        array = array[:, :, 2::-1]
    return np.ascontiguousarray(array[:, :, :3])


def depth_from_array(array, encoding):
    """REP 117/118 depth -> dataset convention: float32 metres, 0 invalid, +inf far."""
    enc = encoding.lower()
    if array.ndim != 2:
        raise ImageDecodeError(f'depth encoding {encoding} has more than one channel')
    if np.issubdtype(array.dtype, np.integer):  # 16UC1 / mono16: millimetres, 0 = invalid
        if enc not in ('16uc1', 'mono16'):
            raise ImageDecodeError(f'unsupported depth encoding {encoding}')
        return array.astype(np.float32) / 1000.0
    depth = array.astype(np.float32)
    depth[np.isnan(depth) | (depth < 0)] = 0.0  # NaN / -Inf = no measurement
    return depth


def compressed_to_array(msg, role='image'):
    """Decode a CompressedImage for ``role``: RGB uint8, depth metres, or label ids."""
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1).tobytes()
    fmt = (msg.format or '').lower()
    if 'compresseddepth' in fmt:
        header, payload = (b'', data) if data.startswith(PNG_SIGNATURE) else (data[:12], data[12:])
        value = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        if value is None:
            raise ImageDecodeError(f'cannot decode compressedDepth payload ({msg.format})')
        if fmt.startswith('32fc1'):
            if len(header) != 12:
                raise ImageDecodeError('32FC1 compressedDepth without quantisation header')
            _, quant_a, quant_b = struct.unpack('<iff', header)
            v = value.astype(np.float32)
            with np.errstate(divide='ignore'):
                out = np.where(value > 0, quant_a / (v - quant_b), 0.0).astype(np.float32)
            return out
        return depth_from_array(value, '16UC1')
    value = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if value is None:
        raise ImageDecodeError(f'cannot decode compressed image (format {msg.format!r})')
    if role == 'depth':
        return depth_from_array(value, '16UC1' if value.dtype == np.uint16 else '32FC1')
    if role == 'labels':
        if value.ndim != 2 or value.dtype != np.uint8:
            raise ImageDecodeError('labels must be single-channel 8-bit')
        return value
    if value.dtype == np.uint16:
        value = (value >> 8).astype(np.uint8)
    if value.ndim == 2:
        return np.repeat(value[:, :, None], 3, axis=2)
    code = cv2.COLOR_BGRA2RGB if value.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(value, code)


def decode(msg, role):
    """Decode a message for ``role`` (``image``, ``depth`` or ``labels``)."""
    if hasattr(msg, 'format'):  # CompressedImage
        return compressed_to_array(msg, role)
    if role == 'image':
        return image_to_rgb(msg)
    array = raw_array(msg)
    if role == 'depth':
        return depth_from_array(array, msg.encoding)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ImageDecodeError(f'labels must be mono8/8UC1, got {msg.encoding}')
    return array
