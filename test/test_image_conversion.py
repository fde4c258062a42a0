"""sensor_msgs/Image <-> numpy in both directions, for every encoding the node takes or gives.

Messages are built byte by byte here (padding in ``step``, both byte orders) and the
expected pixels are computed with plain numpy, so the converter is checked against the
message definition rather than against itself. The built-in fallback is always tested;
ROS 2 cv_bridge is compared with it where it imports.
"""
import array
import importlib.util
import subprocess
import sys

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from sim2real_perception import image_conversion as ic

H, W, PAD = 5, 7, 3
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
WORDS = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)


def raw_msg(pixels, encoding, bigendian=False, pad=PAD):
    """Build an Image from an HxWxC (or HxW) array, rows padded with ``pad`` junk bytes."""
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder('>' if bigendian else '<')
    rows = pixels.astype(dtype).reshape(height, -1).view(np.uint8)
    junk = np.full((height, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                 step=data.shape[1], data=data.tobytes())


# encoding -> (message pixels, expected RGB)
CASES_8BIT = {
    'rgb8': (RGB, RGB),
    'bgr8': (RGB[..., ::-1], RGB),
    'rgba8': (np.concatenate([RGB, ALPHA], axis=2), RGB),
    'bgra8': (np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
    'mono8': (GRAY, np.repeat(GRAY[..., None], 3, axis=2)),
}
CASES_16BIT = {
    'rgb16': (WORDS, (WORDS >> 8).astype(np.uint8)),
    'bgr16': (WORDS[..., ::-1], (WORDS >> 8).astype(np.uint8)),
    'mono16': (WORDS[..., 0], np.repeat((WORDS[..., :1] >> 8).astype(np.uint8), 3, axis=2)),
}


@pytest.mark.parametrize('pad', [0, PAD])
@pytest.mark.parametrize('encoding', list(CASES_8BIT))
def test_8bit_encodings_to_rgb_honour_step(encoding, pad):
    pixels, want = CASES_8BIT[encoding]
    msg = raw_msg(np.ascontiguousarray(pixels), encoding, pad=pad)
    for convert in (ic.imgmsg_to_rgb, ic.builtin_imgmsg_to_rgb):
        got = convert(msg)
        assert got.dtype == np.uint8 and got.shape == (H, W, 3)
        np.testing.assert_array_equal(got, want, err_msg=f'{convert.__name__} {encoding}')


@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('encoding', list(CASES_16BIT))
def test_16bit_encodings_honour_is_bigendian_and_step(encoding, bigendian):
    pixels, want = CASES_16BIT[encoding]
    msg = raw_msg(np.ascontiguousarray(pixels), encoding, bigendian=bigendian, pad=4)
    np.testing.assert_array_equal(ic.imgmsg_to_rgb(msg), want)
    np.testing.assert_array_equal(ic.builtin_imgmsg_to_rgb(msg), want)
    # The same bytes read with the wrong byte order give a different image.
    msg.is_bigendian = int(not bigendian)
    assert not np.array_equal(ic.builtin_imgmsg_to_rgb(msg), want)


def test_unpadded_rgb8_is_a_zero_copy_view():
    msg = raw_msg(RGB, 'rgb8', pad=0)
    got = ic.builtin_imgmsg_to_rgb(msg)
    assert np.shares_memory(got, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize('encoding, arr', [
    ('rgb8', RGB), ('bgr8', RGB[..., ::-1]), ('mono8', GRAY),
    ('mono16', WORDS[..., 0]), ('mono16', WORDS[..., 0].astype('>u2')),
    ('32FC1', RNG.random((H, W), dtype=np.float32) * 80),
    ('32FC1', (RNG.random((H, W)) * 80).astype('>f4')),
    ('32FC1', np.array([[np.nan, np.inf], [-np.inf, 1.5]], np.float32)),
])
def test_array_to_imgmsg_round_trips_both_byte_orders(encoding, arr):
    header = Header(frame_id='cam_optical')
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = ic.array_to_imgmsg(arr, encoding, header)
    assert isinstance(msg, Image) and msg.header.frame_id == 'cam_optical'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 34)
    h, w = arr.shape[:2]
    channels = arr.shape[2] if arr.ndim == 3 else 1
    assert (msg.height, msg.width, msg.encoding) == (h, w, encoding)
    assert msg.step == w * channels * arr.dtype.itemsize
    assert len(msg.data) == msg.step * h
    assert msg.is_bigendian == int(arr.dtype.byteorder == '>')
    assert isinstance(msg.data, array.array)
    back = ic.imgmsg_to_array(msg)
    assert back.dtype.isnative and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    if encoding in ('rgb8', 'bgr8', 'mono8'):  # outputs are also valid inputs
        want = arr if encoding == 'rgb8' else CASES_8BIT[encoding][1]
        np.testing.assert_array_equal(ic.imgmsg_to_rgb(msg), want)


@pytest.mark.parametrize('encoding, arr', [
    ('32FC1', RNG.random((H, W), dtype=np.float32) * 80), ('rgb8', RGB), ('mono8', GRAY),
    ('rgb8', RGB[:, ::2]),  # a strided view is made contiguous first
    ('32FC1', (RNG.random((H, W)) * 80).astype('>f4')),
])
def test_zero_copy_messages_serialise_like_copied_ones(encoding, arr):
    from rclpy.serialization import deserialize_message, serialize_message
    copied = ic.array_to_imgmsg(arr, encoding)
    shared = ic.array_to_imgmsg(arr, encoding, zero_copy=True)
    assert not isinstance(shared.data, array.array)  # no copy was made
    if arr.flags.c_contiguous:
        assert np.shares_memory(np.asarray(shared.data), arr)
    wire = serialize_message(shared)
    assert wire == serialize_message(copied)
    back = deserialize_message(wire, Image)
    assert (back.height, back.width, back.encoding, back.step) == \
        (copied.height, copied.width, encoding, copied.step)
    np.testing.assert_array_equal(ic.imgmsg_to_array(back), arr)


def test_imgmsg_to_array_honours_padding_and_big_endian_depth():
    depth = (RNG.random((H, W)) * 50).astype(np.float32)
    msg = raw_msg(depth, '32FC1', bigendian=True, pad=8)
    msg.encoding = '32FC1'
    np.testing.assert_array_equal(ic.imgmsg_to_array(msg), depth)
    msg.step -= 4  # step no longer matches the data
    with pytest.raises(ic.ImageConversionError, match='does not fit'):
        ic.imgmsg_to_array(msg)


def test_array_to_imgmsg_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match='32FC1 needs a float32'):
        ic.array_to_imgmsg(np.zeros((2, 2), np.float64), '32FC1')
    with pytest.raises(ValueError, match='rgb8 needs a uint8 array with 3'):
        ic.array_to_imgmsg(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ValueError, match="cannot publish encoding 'yuv422'"):
        ic.array_to_imgmsg(np.zeros((2, 2), np.uint8), 'yuv422')
    # A non-contiguous view is copied into the message, not misread.
    view = RGB[:, ::2]
    np.testing.assert_array_equal(ic.imgmsg_to_array(ic.array_to_imgmsg(view, 'rgb8')), view)


@pytest.mark.parametrize('kwargs, match', [
    (dict(encoding='yuv422', step=2 * W, size=2 * W * H), "unsupported encoding 'yuv422'"),
    (dict(encoding='32FC1', step=4 * W, size=4 * W * H), 'unsupported encoding'),
    (dict(encoding='rgb8', width=0, height=0, step=0, size=0), 'empty image 0x0'),
    (dict(encoding='rgb8', step=2 * W, size=2 * W * H), 'smaller than one row'),
    (dict(encoding='mono16', step=2 * W + 1, size=(2 * W + 1) * H), 'not a multiple'),
    (dict(encoding='rgb8', step=3 * W, size=3 * W * H - 1), 'truncated data'),
    (dict(encoding='rgb8', step=3 * W, size=3 * W * H + 5), 'oversized data'),
    (dict(encoding='mono8', width=5000, height=5000, step=5000, size=10),
     'more than the limit 1000000'),
])
def test_malformed_messages_raise_with_the_reason(kwargs, match):
    size = kwargs.pop('size')
    fields = dict(width=W, height=H) | kwargs
    msg = Image(**fields)
    msg.data = bytes(size)
    for convert in (ic.imgmsg_to_rgb, ic.builtin_imgmsg_to_rgb):
        with pytest.raises(ic.ImageConversionError, match=match):
            convert(msg, max_pixels=1_000_000)


def test_compressed_png_and_jpeg_decode_to_rgb():
    ok, png = cv2.imencode('.png', np.ascontiguousarray(RGB[..., ::-1]))
    assert ok
    msg = CompressedImage(format='png', data=png.tobytes())
    np.testing.assert_array_equal(ic.compressed_to_rgb(msg), RGB)
    big = np.zeros((100, 100, 3), np.uint8)
    ok, jpg = cv2.imencode('.jpg', big)
    msg = CompressedImage(format='jpeg', data=jpg.tobytes())
    assert ic.compressed_to_rgb(msg).shape == (100, 100, 3)
    with pytest.raises(ic.ImageConversionError, match='larger than max_input_pixels'):
        ic.compressed_to_rgb(msg, max_pixels=5000)
    with pytest.raises(ic.ImageConversionError, match='cannot decode'):
        ic.compressed_to_rgb(CompressedImage(format='jpeg', data=b'not a jpeg'))
    with pytest.raises(ic.ImageConversionError, match='empty'):
        ic.compressed_to_rgb(CompressedImage(format='jpeg'))


def test_backend_is_cv_bridge_only_when_it_imports():
    try:
        importable = importlib.util.find_spec('cv_bridge') is not None
        if importable:
            from cv_bridge import CvBridge  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        importable = False
    assert ic.BACKEND == ('cv_bridge' if importable else 'builtin')


def test_fallback_is_chosen_when_cv_bridge_cannot_import():
    # A fresh interpreter in which importing cv_bridge fails, as on a pip-only install.
    code = ('import sys; sys.modules["cv_bridge"] = None\n'
            'import numpy as np\n'
            'from sensor_msgs.msg import Image\n'
            'from sim2real_perception import image_conversion as ic\n'
            'msg = Image(height=1, width=2, encoding="bgr8", step=6, data=bytes(range(6)))\n'
            'print(ic.BACKEND, ic.imgmsg_to_rgb(msg).tolist())\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split(maxsplit=1)
    assert out == ['builtin', '[[[2, 1, 0], [5, 4, 3]]]\n']


@pytest.mark.skipif(ic.BACKEND != 'cv_bridge', reason='ROS 2 cv_bridge is not installed')
@pytest.mark.parametrize('encoding', list(CASES_8BIT))
def test_cv_bridge_agrees_with_the_fallback(encoding):
    pixels, want = CASES_8BIT[encoding]
    msg = raw_msg(np.ascontiguousarray(pixels), encoding)
    np.testing.assert_array_equal(ic.imgmsg_to_rgb(msg), ic.builtin_imgmsg_to_rgb(msg))
