"""Dataset readers (VKITTI 2, KITTI, rosbag2, image folders), transforms and procedural data.

``build_dataset`` gives training its torch ``Dataset``; ``iter_frames`` gives tools plain
reader frames; ``open_source`` gives the reader itself. See ``data_config.DEFAULTS`` for the
keys of a ``data.<section>`` config dict.
"""
from .data_config import DEFAULTS, FORMATS, open_source, resolve, select_indices
from .dataset import FrameDataset, build_dataset, iter_frames, to_tensors
from .image_files import DataError

__all__ = ['DEFAULTS', 'FORMATS', 'DataError', 'FrameDataset', 'build_dataset', 'iter_frames',
           'open_source', 'resolve', 'select_indices', 'to_tensors']
