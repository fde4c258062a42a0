"""Exported model directories: what training hands to the robot.

A directory holds ``config.json`` (model config, label names and palette, provenance) and
``model.safetensors`` (the real encoder + depth + segmentation decoders only), and
optionally ``model.onnx``. Safetensors cannot execute code on load, unlike pickles, so a
model file from elsewhere is safe to open.

Reading a config needs neither torch nor safetensors (an ONNX Runtime robot has neither):
they are imported only by the functions that build or save the PyTorch network.

An export can be rewritten while a node starts. ``config.json`` names the SHA-256 of the
weights it belongs to (``weights_sha256``) and ``model.onnx`` carries the same value in its
metadata (:data:`ONNX_WEIGHTS_KEY`). :func:`read_consistent` reads the config and one model
file into memory and checks they belong together; while they do not (another export is
half-way through) it reads again, and after :data:`SETTLE_SECONDS` it gives up with a
ModelLoadError. So a loader gets one export's files or a clear error, never a mix.
Directories from before these fields are read unchecked.
"""
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from . import labels
from .model_config import ModelConfig

FORMAT = 'sim2real_perception/exported-model'
FORMAT_VERSION = 1
CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
ONNX_NAME = 'model.onnx'
#: ONNX metadata key: SHA-256 of the model.safetensors the graph was exported from.
ONNX_WEIGHTS_KEY = 'sim2real_perception.weights_sha256'
#: How long a loader waits for a directory under rewrite to become consistent again.
SETTLE_SECONDS = 5.0
_RETRY_PERIOD = 0.05


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable or does not match its config."""


class InconsistentModelError(ModelLoadError):
    """The files of a model directory come from different exports (read again later)."""


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


def sha256_hex(data):
    """Return the SHA-256 of ``data`` (bytes) as hex."""
    return hashlib.sha256(data).hexdigest()


def export_model_dir(net, out_dir, metadata=None):
    """Write ``config.json`` + ``model.safetensors`` for a DepthSegNet (or TwinVAE).

    The weights go first and the config (naming their SHA-256) last, each by an atomic
    rename, so a reader matching the two never mixes this export with the previous one.
    """
    from safetensors.torch import save
    from .model import DepthSegNet, MeanPriorNet
    if not isinstance(net, (DepthSegNet, MeanPriorNet)):
        net = DepthSegNet.from_twin(net)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    weights = save(state, metadata={'format': FORMAT})
    atomic_write_bytes(out / WEIGHTS_NAME, weights)
    config = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'model': net.cfg.to_dict(),
        'labels': {
            'names': list(labels.CLASS_NAMES[:net.cfg.num_classes]),
            'ignore_index': labels.IGNORE_INDEX,
            'palette': labels.PALETTE[:net.cfg.num_classes].tolist(),
        },
        'weights_sha256': sha256_hex(weights),
        'metadata': metadata or {},
    }
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return out


def parse_model_config(data, path):
    """Parse and check ``config.json`` bytes read from ``path``; errors name the file."""
    try:
        config = json.loads(data.decode('utf-8'))
    except ValueError as exc:
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
    config['config_sha256'] = sha256_hex(data)
    return config


def _read_bytes(path, what):
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f'{what} not found: {path}') from None
    except OSError as exc:
        raise ModelLoadError(f'cannot read {what} {path}: {exc}') from exc


def read_model_config(model_dir):
    """Read and check ``config.json``; errors name the file."""
    path = Path(model_dir) / CONFIG_NAME
    if not Path(model_dir).is_dir():
        raise ModelLoadError(f'model directory not found: {model_dir}')
    if not path.is_file():
        raise ModelLoadError(f'model config not found: {path}')
    return parse_model_config(_read_bytes(path, 'model config'), path)


def read_consistent(model_dir, load, settle=None):
    """Read ``config.json`` and call ``load(config)`` until both come from one export.

    ``load`` reads the model file(s), checks them against the config (raising
    InconsistentModelError when they belong to another export) and returns what it built.
    Returns ``(config, result)``. Other ModelLoadErrors (missing, corrupt) end at once; an
    inconsistency that lasts ``settle`` seconds (:data:`SETTLE_SECONDS`) ends in a
    ModelLoadError that says the directory is being rewritten.
    """
    settle = SETTLE_SECONDS if settle is None else settle
    deadline = time.monotonic() + settle
    attempts = 0
    while True:
        attempts += 1
        config = read_model_config(model_dir)
        try:
            result = load(config)
            # The config read first must still be the current one: the model file may
            # have been read after a new export replaced both.
            again = _read_bytes(Path(model_dir) / CONFIG_NAME, 'model config')
            if sha256_hex(again) != config['config_sha256']:
                raise InconsistentModelError(f'{Path(model_dir) / CONFIG_NAME} changed while '
                                             'the model was being read')
            return config, result
        except InconsistentModelError as exc:
            if time.monotonic() >= deadline:
                raise ModelLoadError(
                    f'model directory {model_dir} is being rewritten or mixes two exports '
                    f'(still so after {attempts} reads in {settle:g} s): {exc}; wait for the '
                    'export to finish, or export the model again') from exc
            time.sleep(_RETRY_PERIOD)


def check_weights(config, data, path):
    """Raise InconsistentModelError if weights ``data`` are not the ones ``config`` names."""
    want = config.get('weights_sha256')
    if want and sha256_hex(data) != want:
        raise InconsistentModelError(
            f'{path} (sha256 {sha256_hex(data)[:12]}) is not the weights file '
            f'{Path(path).parent / CONFIG_NAME} names (weights_sha256 {want[:12]})')


def check_onnx_metadata(config, metadata, path):
    """Raise InconsistentModelError if an ONNX graph was exported from other weights."""
    want, have = config.get('weights_sha256'), metadata.get(ONNX_WEIGHTS_KEY)
    if want and have and want != have:
        raise InconsistentModelError(
            f'{path} was exported from other weights (sha256 {have[:12]}) than '
            f'{Path(path).parent / CONFIG_NAME} names (weights_sha256 {want[:12]}); export '
            'it again with python -m sim2real_perception.onnx_export')


def load_depth_seg_net(model_dir, device='cpu', settle=None):
    """Build the deployed network from an exported directory, in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    from .model import deployed_network
    weights = Path(model_dir) / WEIGHTS_NAME

    def build(config):
        if not weights.is_file():
            raise ModelLoadError(f'model weights not found: {weights}')
        data = _read_bytes(weights, 'model weights')
        try:
            state = load(data)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f'cannot read model weights {weights}: {exc}') from exc
        check_weights(config, data, weights)
        net = deployed_network(config['model_config'])
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f'{weights} does not match {Path(model_dir) / CONFIG_NAME}: '
                                 f'{str(exc).splitlines()[0]}') from exc
        return net

    config, net = read_consistent(model_dir, build, settle)
    return net.eval().to(device), config


def torch_device(name='auto'):
    """Resolve 'auto' | 'cpu' | 'cuda[:N]' to a torch.device, CUDA when present."""
    import torch
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} requested but CUDA is not available')
    return device
