"""YAML configuration: ``config/defaults.yaml`` <- preset <- ``key.sub=value`` overrides.

Every key has a documented default in ``defaults.yaml``; presets only list what differs, so
one file explains every knob. Unknown keys in a preset or override are errors, because a
typo that silently does nothing is the worst kind of configuration bug.
"""
import copy
import os
import re
from pathlib import Path

import yaml

PACKAGE = 'sim2real_perception'


def config_dir():
    """Find ``config/``: the source tree first, then the installed ament share directory."""
    here = Path(__file__).resolve().parent.parent / 'config'
    if (here / 'defaults.yaml').is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory(PACKAGE)) / 'config'
        if (share / 'defaults.yaml').is_file():
            return share
    except Exception:  # noqa: BLE001 - ament index absent or package not installed
        pass
    env = os.environ.get('SIM2REAL_CONFIG_DIR')
    if env and (Path(env) / 'defaults.yaml').is_file():
        return Path(env)
    raise FileNotFoundError(
        f'cannot find config/defaults.yaml next to {Path(__file__).parent} or in the '
        f'{PACKAGE} share directory; set SIM2REAL_CONFIG_DIR')


def resolve_preset(name_or_path):
    """Return the YAML path for a preset name (``cpu``) or an explicit file path."""
    path = Path(name_or_path)
    if path.suffix in ('.yaml', '.yml') and path.is_file():
        return path
    candidate = config_dir() / f'{name_or_path}.yaml'
    if candidate.is_file():
        return candidate
    presets = sorted(p.stem for p in config_dir().glob('*.yaml')
                     if p.stem not in ('defaults', 'depth_seg'))
    raise FileNotFoundError(f'config {name_or_path!r} not found (a YAML file path or one of '
                            f'the presets {presets})')


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, reading ``1e-4`` as a float as YAML 1.2 and Python do.

    YAML 1.1 wants a dot in a float's mantissa, so ``--set train.lr=1e-4`` was the string
    '1e-4': a config that recorded another type than its preset's and a run that only
    worked where the reader called float().
    """


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$'),
    list('-+0123456789.'))


def _read_yaml(path):
    with open(path, encoding='utf-8') as fh:
        data = yaml.load(fh, Loader=_Loader) or {}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: top level must be a mapping')
    return data


def merge(base, update, where='config'):
    """Recursively merge ``update`` into a copy of ``base``; unknown keys raise."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise KeyError(f'{where}: unknown key {key!r} (known: {sorted(out)})')
        if isinstance(out[key], dict) and isinstance(value, dict):
            if _is_open(out[key]):
                out[key] = {**out[key], **copy.deepcopy(value)}
            else:
                out[key] = merge(out[key], value, f'{where}.{key}')
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_open(mapping):
    """Open sections (marked ``_open: true``) accept any keys, e.g. per-dataset options.

    Their keys are checked by whoever consumes them (``training.data.resolve``), which
    knows the options of each dataset format.
    """
    return bool(mapping.get('_open', False))


def parse_override(text):
    """Split ``a.b.c=value`` into (['a', 'b', 'c'], YAML-parsed value)."""
    if '=' not in text:
        raise ValueError(f'override {text!r} must look like section.key=value')
    key, raw = text.split('=', 1)
    return key.strip().split('.'), yaml.load(raw, Loader=_Loader)


def apply_override(cfg, keys, value):
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f'override: unknown key {".".join(keys[:i + 1])!r}')
        node = node[key]
    if not isinstance(node, dict) or (keys[-1] not in node and not _is_open(node)):
        raise KeyError(f'override: unknown key {".".join(keys)!r}')
    node[keys[-1]] = value


def load_config(preset='cpu', overrides=()):
    """Load defaults, merge a preset (name or path) and ``key=value`` overrides."""
    cfg = _read_yaml(config_dir() / 'defaults.yaml')
    if preset:
        path = resolve_preset(preset)
        if path.resolve() != (config_dir() / 'defaults.yaml').resolve():
            cfg = merge(cfg, _read_yaml(path), where=str(path))
        cfg['preset'] = path.stem
    for text in overrides:
        apply_override(cfg, *parse_override(text))
    return cfg
