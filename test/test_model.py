"""The network against the paper's Table 2, weight sharing, gradients and batch behaviour."""
import pytest
import torch

from margins import assert_labels_agree, Reference
from sim2real_perception.config import load_config
from sim2real_perception.model import DepthSegNet, ModelConfig, TwinVAE, build_model, list_models

# Table 2, rows 1-20: (channels, height, width) for a 3x256x256 input.
TABLE2 = [
    (64, 256), (76, 128), (88, 64), (100, 32), (128, 16), (200, 8), (200, 8), (200, 8),
    (250, 4), (300, 4),                                   # encoder rows 1-10
    (250, 4), (200, 8), (200, 8), (200, 8), (128, 16), (100, 32), (88, 64), (76, 128),
    (64, 256), (3, 256),                                  # decoder rows 11-20
]


@pytest.fixture(scope='module')
def paper_twin():
    torch.manual_seed(0)
    return TwinVAE(ModelConfig.from_dict(load_config('paper')['model'])).eval()


@pytest.fixture()
def tiny_cfg():
    return ModelConfig.from_dict(load_config('test')['model'])


@pytest.mark.parametrize('domain', ['real', 'sim'])
def test_table2_shapes_row_by_row(paper_twin, domain):
    x = torch.randn(1, 3, 256, 256)
    layers = list(paper_twin.encoder(domain).layers) + list(paper_twin.decoder(domain).layers)
    assert len(layers) == len(TABLE2)
    with torch.no_grad():
        for row, (layer, (ch, size)) in enumerate(zip(layers, TABLE2), start=1):
            x = layer(x)
            assert tuple(x.shape) == (1, ch, size, size), f'Table 2 row {row}'


def test_auxiliary_decoders_output_depth_and_class_logits(paper_twin):
    z = torch.zeros(1, 300, 4, 4)
    with torch.no_grad():
        depth = paper_twin.decode(z, 'depth')
        seg = paper_twin.decode(z, 'seg')
    assert depth.shape == (1, 1, 256, 256) and depth.abs().max() <= 1.0  # tanh
    assert seg.shape == (1, 12, 256, 256)
    assert not isinstance(paper_twin.dec_seg.layers[-1][-1], torch.nn.Tanh)


@pytest.mark.parametrize('shared', [1, 3, 5])
def test_shared_layers_are_the_same_parameter_objects(tiny_cfg, shared):
    cfg = ModelConfig.from_dict({**tiny_cfg.to_dict(), 'shared_layers': shared})
    twin = TwinVAE(cfg)
    enc_r, enc_s = twin.enc_real.layers, twin.enc_sim.layers
    dec_r, dec_s = twin.dec_real.layers, twin.dec_sim.layers
    n = len(enc_r)
    for i in range(n):
        same = enc_r[i] is enc_s[i]
        assert same == (i >= n - shared), f'encoder layer {i + 1}'
        assert (dec_r[i] is dec_s[i]) == (i < shared), f'decoder layer {i + 11}'
    # Auxiliary decoders never share weights with anything.
    ids = {id(p) for m in (twin.enc_real, twin.enc_sim, twin.dec_real, twin.dec_sim)
           for p in m.parameters()}
    for aux in (twin.dec_depth, twin.dec_seg):
        assert not ids & {id(p) for p in aux.parameters()}
    # A shared parameter updated through one branch is updated in the other.
    with torch.no_grad():
        enc_r[-1][0].weight.add_(1.0)
    assert torch.equal(enc_r[-1][0].weight, enc_s[-1][0].weight)


def test_default_shared_layers_follows_section_3_2():
    assert ModelConfig().shared_layers == 3
    assert load_config('paper')['model']['shared_layers'] == 3


def test_gradients_reach_every_parameter(tiny_cfg):
    torch.manual_seed(0)
    twin = TwinVAE(tiny_cfg).train()
    xr, xs = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    _, zr = twin.encode(xr, 'real')
    _, zs = twin.encode(xs, 'sim')
    loss = (twin.decode(zr, 'real') - xr).pow(2).mean()
    loss = loss + (twin.decode(zs, 'sim') - xs).pow(2).mean()
    loss = loss + twin.decode(zs, 'depth').mean() + twin.decode(zr, 'seg').logsumexp(1).mean()
    loss.backward()
    missing = [n for n, p in twin.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_eval_batch_of_one_equals_batch_of_four(tiny_cfg):
    torch.manual_seed(0)
    twin = TwinVAE(tiny_cfg)
    twin.train()
    with torch.no_grad():  # move BatchNorm running stats away from their init
        for _ in range(3):
            twin.encode(torch.randn(4, 3, 128, 128), 'real')
    twin.eval()
    x = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        batch = twin(x)
        singles = [twin(x[i:i + 1]) for i in range(4)]
    for out, name in zip(range(2), ('depth', 'seg')):
        stacked = torch.cat([s[out] for s in singles])
        assert torch.allclose(batch[out], stacked, atol=1e-5), name


def test_latent_is_sampled_in_training_and_the_mean_in_eval(tiny_cfg):
    twin = TwinVAE(tiny_cfg)
    x = torch.randn(2, 3, 128, 128)
    twin.train()
    mu, z = twin.encode(x, 'real')
    assert not torch.equal(mu, z)
    twin.eval()
    mu, z = twin.encode(x, 'real')
    assert torch.equal(mu, z)


def test_depth_seg_net_matches_the_twin_inference_path(tiny_cfg):
    twin = TwinVAE(tiny_cfg).eval()
    net = DepthSegNet.from_twin(twin)
    image = torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8)
    with torch.no_grad():
        depth, labels = net(image)
        t_depth, t_seg = twin(image.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert depth.shape == (2, 128, 128) and labels.dtype == torch.uint8
    # x * (2/255) - 1 vs x / 127.5 - 1 round differently: compare clear-margin pixels only.
    _, ambiguous, _ = Reference(twin)(image.numpy())
    assert_labels_agree(labels.numpy(), t_seg.argmax(1).to(torch.uint8).numpy(), ambiguous)
    assert float(depth.min()) >= tiny_cfg.min_depth and float(depth.max()) <= tiny_cfg.max_depth


@pytest.mark.parametrize('override, message', [
    ({'height': 200}, 'multiple of 128'),
    ({'height': 96, 'pack_channels': [4, 4, 8, 8]}, 'multiple of 64'),
    ({'shared_layers': 0}, 'shared_layers'),
    ({'depth_encoding': 'sqrt'}, 'depth_encoding'),
    ({'num_classes': 300}, 'num_classes'),
    ({'packing_d': 3}, 'packing_d'),
])
def test_invalid_configs_are_rejected(tiny_cfg, override, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**tiny_cfg.to_dict(), **override})


def test_one_packing_fewer_halves_the_smallest_input(tiny_cfg):
    # Five packings instead of six: 64x128 keeps a 2x4 latent, which InstanceNorm accepts.
    cfg = ModelConfig.from_dict({**tiny_cfg.to_dict(), 'height': 64, 'width': 128,
                                 'pack_channels': [4, 4, 8, 8]})
    assert cfg.downsampling == 32
    twin = TwinVAE(cfg).train()
    depth, seg = twin(torch.randn(2, 3, 64, 128))
    assert depth.shape[-2:] == seg.shape[-2:] == (64, 128)
    (depth.mean() + seg.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in twin.parameters() if p.grad is not None)


def test_unknown_config_key_is_rejected():
    with pytest.raises(KeyError, match='widht'):
        ModelConfig.from_dict({'widht': 256})
    with pytest.raises(KeyError, match='widht'):
        load_config('cpu', ['model.widht=256'])


def test_overrides_read_exponent_numbers_as_floats(tmp_path):
    from sim2real_perception.config import parse_override
    cfg = load_config('cpu', ['train.lr=3e-3', 'train.self_train_lr=1E-4'])
    assert cfg['train']['lr'] == 0.003 and isinstance(cfg['train']['lr'], float)
    assert cfg['train']['self_train_lr'] == 1e-4
    assert parse_override('a=[2e-3, 1.5e2, 7, abc1e5]')[1] == [0.002, 150.0, 7, 'abc1e5']
    preset = tmp_path / 'mine.yaml'
    preset.write_text('train:\n  lr: 5e-4\n')
    assert load_config(str(preset))['train']['lr'] == 5e-4


def test_registry_and_presets():
    assert 'twin_vae' in list_models()
    for preset in ('paper', 'cpu', 'test'):
        cfg = load_config(preset)
        assert cfg['preset'] == preset
        assert isinstance(build_model(cfg['model']), TwinVAE)
    with pytest.raises(KeyError):
        build_model(load_config('test')['model'], name='resnet')
    with pytest.raises(FileNotFoundError, match='presets'):
        load_config('nope')


@pytest.mark.parametrize('x_grad, w_grad', [(True, True), (True, False), (False, True)])
def test_fold_conv3d_gradients_equal_autograds_conv3d(x_grad, w_grad):
    """The packing Conv3d's hand-written backward is conv3d's gradient (float64 gradcheck)."""
    from sim2real_perception.model.packnet import _FoldConv3d, FoldConv3d
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 6, 7, dtype=torch.float64, requires_grad=x_grad)
    w = torch.randn(4, 1, 3, 3, 3, dtype=torch.float64, requires_grad=w_grad)
    b = torch.randn(4, dtype=torch.float64, requires_grad=w_grad)
    assert torch.autograd.gradcheck(_FoldConv3d.apply, (x, w, b))
    conv = FoldConv3d(4).double()
    plain = torch.nn.Conv3d(1, 4, 3, padding=1).double()
    plain.load_state_dict(conv.state_dict())   # same parameters, same names
    xs = [torch.randn(2, 1, 8, 9, 10, dtype=torch.float64, requires_grad=True)
          for _ in range(2)]
    xs[1].data.copy_(xs[0].data)
    g = torch.randn(2, 4, 8, 9, 10, dtype=torch.float64)
    for module, xi in ((conv, xs[0]), (plain, xs[1])):
        module(xi).backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad)
    torch.testing.assert_close(conv.bias.grad, plain.bias.grad)
