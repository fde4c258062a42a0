"""Dataset readers (VKITTI 2, KITTI, rosbag2, image folders), transforms and procedural data.

``build_dataset`` gives training its torch ``Dataset``; ``iter_frames`` gives tools plain
reader frames; ``open_source`` gives the reader itself. See ``data_config.DEFAULTS`` for the
keys of a ``data.<section>`` config dict.

Names are imported lazily so that the procedural generator and its worker processes do not
pay for importing torch.
"""
import importlib

_EXPORTS = {
    'DEFAULTS': 'data_config', 'FORMATS': 'data_config', 'open_source': 'data_config',
    'resolve': 'data_config', 'select_indices': 'data_config',
    'FrameDataset': 'dataset', 'build_dataset': 'dataset', 'iter_frames': 'dataset',
    'to_tensors': 'dataset', 'DataError': 'image_files',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Import an exported name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    globals()[name] = value
    return value
