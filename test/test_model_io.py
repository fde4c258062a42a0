"""Exported model directories: round trip, and clear errors that name the file."""
import json

import pytest
import torch

from margins import assert_labels_agree, Reference
from sim2real_perception.config import load_config
from sim2real_perception.labels import CLASS_NAMES
from sim2real_perception.model import build_model
from sim2real_perception.model_io import (ModelLoadError, export_model_dir,
                                          load_depth_seg_net, read_model_config)


@pytest.fixture()
def exported(tmp_path):
    twin = build_model(load_config('test')['model']).eval()
    export_model_dir(twin, tmp_path / 'm', metadata={'step': 3})
    return twin, tmp_path / 'm'


def test_round_trip_gives_identical_outputs(exported):
    twin, path = exported
    net, config = load_depth_seg_net(path)
    assert config['labels']['names'] == list(CLASS_NAMES)
    assert config['metadata'] == {'step': 3}
    image = torch.randint(0, 256, (1, 128, 128, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = twin(image.permute(0, 3, 1, 2).float() / 127.5 - 1)
        depth, labels = net(image)
    _, ambiguous, _ = Reference(twin)(image.numpy())  # clear-margin pixels must be equal
    assert_labels_agree(labels.numpy(), ref[1].argmax(1).to(torch.uint8).numpy(), ambiguous)
    # Only the deployed path is stored: no sim encoder, no image decoders.
    assert all(k.split('.')[0] in ('encoder', 'dec_depth', 'dec_seg') for k in net.state_dict())


def test_missing_directory_and_files_are_named(tmp_path, exported):
    _, path = exported
    with pytest.raises(ModelLoadError, match='model directory not found'):
        load_depth_seg_net(tmp_path / 'absent')
    (path / 'model.safetensors').unlink()
    with pytest.raises(ModelLoadError, match='model.safetensors'):
        load_depth_seg_net(path)
    (path / 'config.json').unlink()
    with pytest.raises(ModelLoadError, match='config.json'):
        read_model_config(path)


def test_corrupt_weights_and_config_are_named(exported):
    _, path = exported
    weights = path / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match='cannot read model weights .*model.safetensors'):
        load_depth_seg_net(path)
    (path / 'config.json').write_text('{not json')
    with pytest.raises(ModelLoadError, match='cannot read model config'):
        read_model_config(path)


def test_weights_from_another_config_are_rejected(exported, tmp_path):
    _, path = exported
    config = json.loads((path / 'config.json').read_text())
    config['model']['latent_channels'] = 16
    (path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match='does not match'):
        load_depth_seg_net(path)
