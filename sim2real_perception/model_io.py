"""Exported model directories: what training hands to the robot.

A directory holds ``config.json`` (model config, label names and palette, provenance) and
``model.safetensors`` (the real encoder + depth + segmentation decoders only), and
optionally ``model.onnx``. Safetensors cannot execute code on load, unlike pickles, so a
model file from elsewhere is safe to open.
"""
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import labels
from .model import DepthSegNet, ModelConfig

FORMAT = 'sim2real_perception/exported-model'
FORMAT_VERSION = 1
CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
ONNX_NAME = 'model.onnx'


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable or does not match its config."""


def atomic_write_bytes(path, data):
    """Write via a temporary file + rename so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(fd, 'wb') as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_model_dir(net, out_dir, metadata=None):
    """Write ``config.json`` + ``model.safetensors`` for a DepthSegNet (or TwinVAE)."""
    if not isinstance(net, DepthSegNet):
        net = DepthSegNet.from_twin(net)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix='.weights.')
    os.close(fd)
    save_file(state, tmp, metadata={'format': FORMAT})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / WEIGHTS_NAME)
    config = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'model': net.cfg.to_dict(),
        'labels': {
            'names': list(labels.CLASS_NAMES[:net.cfg.num_classes]),
            'ignore_index': labels.IGNORE_INDEX,
            'palette': labels.PALETTE[:net.cfg.num_classes].tolist(),
        },
        'metadata': metadata or {},
    }
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return out


def read_model_config(model_dir):
    """Read and check ``config.json``; errors name the file."""
    path = Path(model_dir) / CONFIG_NAME
    if not Path(model_dir).is_dir():
        raise ModelLoadError(f'model directory not found: {model_dir}')
    if not path.is_file():
        raise ModelLoadError(f'model config not found: {path}')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f'cannot read model config {path}: {exc}') from exc
    if not isinstance(config, dict) or config.get('format') != FORMAT:
        raise ModelLoadError(f'{path} is not a {FORMAT} config')
    if config.get('format_version', 0) > FORMAT_VERSION:
        raise ModelLoadError(f'{path}: format_version {config["format_version"]} is newer '
                             f'than this package understands ({FORMAT_VERSION})')
    try:
        config['model_config'] = ModelConfig.from_dict(config['model'])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f'{path}: invalid model section: {exc}') from exc
    return config


def load_depth_seg_net(model_dir, device='cpu'):
    """Build the deployed network from an exported directory, in eval mode on ``device``."""
    config = read_model_config(model_dir)
    weights = Path(model_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f'model weights not found: {weights}')
    try:
        state = load_file(str(weights), device='cpu')
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f'cannot read model weights {weights}: {exc}') from exc
    net = DepthSegNet(config['model_config'])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f'{weights} does not match {Path(model_dir) / CONFIG_NAME}: '
                             f'{str(exc).splitlines()[0]}') from exc
    return net.eval().to(device), config


def torch_device(name='auto'):
    """Resolve 'auto' | 'cpu' | 'cuda[:N]' to a torch.device, CUDA when present."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} requested but CUDA is not available')
    return device
