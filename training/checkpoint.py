"""Training checkpoints: safetensors weights + optimizer state + a JSON record.

A checkpoint ``<tag>`` is three files in ``RUN/checkpoints/``:

* ``<tag>.<step>.safetensors``: every tensor of the network's state dict (shared layers
  appear once per name, as copies, so safetensors can store them);
* ``<tag>.<step>.optim.pt``: the optimizer state, written with ``torch.save`` and read back
  only with ``weights_only=True`` (plain tensors and containers; nothing executes);
* ``<tag>.json``: config, method, stage, epoch, step, metrics, RNG states (as lists) and the
  names of the two files above.

Every file is written to a temporary name, flushed to disk (fsync) and renamed; the JSON
goes last and is the commit point, so a run killed at any moment (SIGKILL, disk full,
power loss) leaves either the old or the new checkpoint, never a mix. A new checkpoint
never reuses a file name the current JSON references (a second save at the same step gets
``<tag>.<step>.r1.*``), so a failed save cannot touch the checkpoint it replaces. A write
that fails (``OSError``, e.g. ENOSPC) removes its own partial files and raises
:class:`CheckpointWriteError` naming the file and the previous checkpoint, which stays
loadable. Files a JSON no longer references are deleted after it is replaced, and
temporary files a killed run left behind at the next save.
"""
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the network."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error); the previous one is intact."""


def _put(fh, data):
    """Write all of ``data`` to an open file and flush it to disk."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def _write_file(path, data):
    """Write ``data`` to ``path`` via a temporary file + fsync + rename (all or nothing)."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as fh:
            _put(fh, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _referenced(ckpt_dir, tag):
    """Return the current record of ``tag`` (None if none or unreadable) and its file names."""
    try:
        record = read_record(ckpt_dir, tag)
    except CheckpointError:
        return None, set()
    if record is None:
        return None, set()
    return record, {record.get('weights'), record.get('optimizer')}


def _fresh_names(tag, step, taken):
    for k in range(1000):
        base = f'{tag}.{step:09d}' + (f'.r{k}' if k else '')
        names = (f'{base}.safetensors', f'{base}.optim.pt')
        if not taken & set(names):
            return names
    raise CheckpointError(f'{tag}: no free checkpoint file name at step {step}')


def rng_state():
    """RNG states of python, numpy and torch (CPU + CUDA) as JSON-friendly lists."""
    np_state = np.random.get_state()
    state = {
        'python': [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        'numpy': [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        'torch': torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state['cuda'] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state):
    """Restore what ``rng_state`` returned."""
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state['numpy']
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
    torch.set_rng_state(torch.tensor(state['torch'], dtype=torch.uint8))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8)
                                      for s in state['cuda']])


def _state_tensors(net):
    return {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}


def save_checkpoint(ckpt_dir, tag, net, optimizer, record):
    """Write checkpoint ``tag`` (weights, optimizer, JSON ``record``); return the JSON path."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f'{tag}.json'
    step = int(record.get('step', 0))
    previous, taken = _referenced(ckpt_dir, tag)
    weights, optim = _fresh_names(tag, step, taken)
    buf = io.BytesIO()
    torch.save(optimizer.state_dict() if optimizer is not None else {}, buf)
    record = {**record, 'tag': tag, 'weights': weights, 'optimizer': optim}
    files = ((ckpt_dir / weights, save(_state_tensors(net), {'tag': tag, 'step': str(step)})),
             (ckpt_dir / optim, buf.getvalue()),
             (path, json.dumps(record, indent=1).encode()))
    committed, target = False, ckpt_dir
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(f'.{tag}.*.tmp'):  # left by a killed run
            stale.unlink(missing_ok=True)
        for target, data in files:
            _write_file(target, data)
        committed = True
        _fsync_dir(ckpt_dir)
    except OSError as exc:
        if not committed:
            for new_file in (weights, optim):
                (ckpt_dir / new_file).unlink(missing_ok=True)
        kept = (f'the previous checkpoint {path} (step {previous.get("step")}) is intact'
                if previous else f'there is no previous {tag} checkpoint')
        raise CheckpointWriteError(
            f'cannot write checkpoint {target}: {exc}; '
            + (f'{path} was written but may not be on disk yet' if committed else kept)
            + '; free the space and rerun with --resume') from exc
    for old in ckpt_dir.glob(f'{tag}.*'):
        if old.name not in (weights, optim, path.name) and not old.name.startswith('.'):
            old.unlink(missing_ok=True)
    return path


def read_record(ckpt_dir, tag):
    """Return the JSON record of checkpoint ``tag`` or None when there is none."""
    path = Path(ckpt_dir) / f'{tag}.json'
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except ValueError as exc:
        raise CheckpointError(f'cannot read {path}: {exc}') from exc


def load_checkpoint(ckpt_dir, tag, net, optimizer=None):
    """Load weights (and the optimizer state when given) of ``tag``; return its record."""
    ckpt_dir = Path(ckpt_dir)
    record = read_record(ckpt_dir, tag)
    if record is None:
        raise CheckpointError(f'no checkpoint {tag!r} in {ckpt_dir}')
    try:
        state = load_file(str(ckpt_dir / record['weights']), device='cpu')
        net.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f'{ckpt_dir / record["weights"]}: {exc}') from exc
    if optimizer is not None:
        optim_state = torch.load(ckpt_dir / record['optimizer'], map_location='cpu',
                                 weights_only=True)
        optimizer.load_state_dict(optim_state)
    return record
