"""rosbag2 reader on bags written here with ``rosbags`` (sqlite3 and mcap storage).

Images in every common shape of ``sensor_msgs/Image`` (rgb8, bgr8 and mono8 with padded
``step``) and ``CompressedImage`` (jpeg, png), ground-truth depth as 32FC1 metres (REP 117
NaN / +-Inf) and 16UC1 millimetres, labels as mono8, matched by header stamp.
"""
import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from training.data import DataError, build_dataset, open_source

H, W = 5, 7
PAD = 3  # extra bytes at the end of every row (step > width * bytes per pixel)
STAMPS = [1_700_000_000_123_456_789, 1_700_000_000_223_456_789]
TS = get_typestore(Stores.ROS2_KILTED)
STORAGES = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}


def _rgb(k):
    return np.random.default_rng(k).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _depth_m(k):
    d = np.linspace(0.5, 60.0, H * W, dtype=np.float32).reshape(H, W) + k
    d[0, 0], d[0, 1], d[0, 2] = np.nan, np.inf, -np.inf
    return d


def _depth_mm(k):
    mm = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000 + 7 + k)
    mm[1, :2] = 0
    return mm


def _labels(k):
    lab = (np.arange(H * W).reshape(H, W) + k) % 12
    lab[2, 3] = 255
    return lab.astype(np.uint8)


def _header(stamp):
    t = TS.types
    return t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](
        sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id='cam')


def _image(stamp, array, encoding, pad=PAD):
    array = np.ascontiguousarray(array)
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    step = rows.shape[1] + pad
    data = np.zeros((rows.shape[0], step), np.uint8)
    data[:, :rows.shape[1]] = rows
    return TS.types['sensor_msgs/msg/Image'](
        header=_header(stamp), height=array.shape[0], width=array.shape[1], encoding=encoding,
        is_bigendian=0, step=step, data=data.ravel())


def _compressed(stamp, array, fmt):
    ok, buf = cv2.imencode('.' + fmt, array)
    assert ok
    return TS.types['sensor_msgs/msg/CompressedImage'](header=_header(stamp), format=fmt,
                                                       data=buf.ravel())


def _messages(k, stamp):
    rgb = _rgb(k)
    return {
        '/cam/rgb8': _image(stamp, rgb, 'rgb8'),
        '/cam/bgr8': _image(stamp, rgb[..., ::-1], 'bgr8'),
        '/cam/mono8': _image(stamp, rgb[..., 0], 'mono8'),
        '/cam/jpeg': _compressed(stamp, rgb[..., ::-1], 'jpeg'),
        '/cam/png': _compressed(stamp, rgb[..., ::-1], 'png'),
        '/gt/depth32': _image(stamp + 2_000_000, _depth_m(k), '32FC1'),  # stamped 2 ms later
        '/gt/depth16': _image(stamp, _depth_mm(k), '16UC1'),
        '/gt/labels': _image(stamp, _labels(k), 'mono8'),
    }


@pytest.fixture(scope='module', params=sorted(STORAGES))
def bag(request, tmp_path_factory):
    """One bag per storage plugin, two frames on every topic (written out of order)."""
    path = tmp_path_factory.mktemp('bags') / f'frames_{request.param}'
    with Writer(path, version=9, storage_plugin=STORAGES[request.param]) as writer:
        conns = {}
        for k, stamp in enumerate(STAMPS):
            for topic, msg in _messages(k, stamp).items():
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=TS)
                # log time != header stamp: frames are matched by header stamp
                writer.write(conns[topic], stamp + 50_000_000 + len(topic),
                             TS.serialize_cdr(msg, msg.__msgtype__))
    return path


def _cfg(bag, **kw):
    return {'format': 'rosbag', 'root': str(bag), **kw}


@pytest.mark.parametrize('topic', ['/cam/rgb8', '/cam/bgr8', '/cam/png'])
def test_lossless_images_exact(bag, topic):
    source = open_source(_cfg(bag, topic=topic))
    assert len(source) == 2
    for k, stamp in enumerate(STAMPS):
        frame = source.load(k)
        assert frame['stamp_ns'] == stamp
        np.testing.assert_array_equal(frame['image'], _rgb(k))
        assert frame['depth'] is None and frame['labels'] is None


def test_mono_and_jpeg(bag):
    mono = open_source(_cfg(bag, topic='/cam/mono8')).load(1)['image']
    np.testing.assert_array_equal(mono, np.repeat(_rgb(1)[..., :1], 3, axis=2))
    jpeg = open_source(_cfg(bag, topic='/cam/jpeg')).load(0)['image']
    assert jpeg.shape == (H, W, 3) and jpeg.dtype == np.uint8
    ok, buf = cv2.imencode('.jpeg', _rgb(0)[..., ::-1])
    np.testing.assert_array_equal(jpeg, cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def test_depth_16uc1_and_labels_exact(bag):
    source = open_source(_cfg(bag, topic='/cam/rgb8', depth_topic='/gt/depth16',
                              labels_topic='/gt/labels'))
    for k in range(2):
        frame = source.load(k)
        np.testing.assert_array_equal(frame['depth'], _depth_mm(k).astype(np.float32) / 1000)
        assert (frame['depth'][1, :2] == 0).all()
        np.testing.assert_array_equal(frame['labels'], _labels(k))
    sample = build_dataset(_cfg(bag, topic='/cam/rgb8', depth_topic='/gt/depth16',
                                labels_topic='/gt/labels'), 'all', H, W, False, 0)[1]
    assert sample['has_depth'] and sample['has_labels']
    np.testing.assert_array_equal(sample['labels'].numpy(), _labels(1))


def test_depth_32fc1_stamp_tolerance(bag):
    cfg = _cfg(bag, topic='/cam/png', depth_topic='/gt/depth32')
    with pytest.raises(DataError, match='no depth message for the image stamped'):
        open_source(cfg)                          # 2 ms apart: no exact match
    skipping = open_source({**cfg, 'skip_bad': True})
    assert len(skipping) == 0 and len(skipping.skipped) == 2
    source = open_source({**cfg, 'sync_tolerance_ms': 3.0})
    depth = source.load(1)['depth']
    expected = _depth_m(1)
    assert depth[0, 0] == 0 and np.isposinf(depth[0, 1]) and depth[0, 2] == 0
    np.testing.assert_array_equal(depth.ravel()[3:], expected.ravel()[3:])


def test_topic_selection_errors(bag):
    with pytest.raises(DataError, match='set data.topic'):
        open_source(_cfg(bag))                    # several image topics
    with pytest.raises(DataError, match="no topic '/nope'"):
        open_source(_cfg(bag, topic='/nope'))
    with pytest.raises(DataError, match='bag not found'):
        open_source(_cfg(bag.parent / 'missing', topic='/cam/rgb8'))
