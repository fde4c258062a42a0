"""train.style_mix: sim features given real-frame channel statistics (training/style_mix.py)."""
import pytest
import torch

from sim2real_perception.config import load_config
from sim2real_perception.model import ModelConfig, TwinVAE
from sim2real_perception.model_io import load_depth_seg_net
from training.style_mix import channel_stats, mix_styles, StyleMixer


def _net():
    torch.manual_seed(0)
    return TwinVAE(ModelConfig.from_dict(load_config('test')['model'])).train()


def _frames(net, n, low, high, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = net.cfg
    return low + (high - low) * torch.rand(n, 3, cfg.height, cfg.width, generator=g)


def test_mix_styles_by_hand():
    g = torch.Generator().manual_seed(1)
    x = 3.0 + 0.5 * torch.randn(2, 4, 8, 8, generator=g)
    real_mu = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1).expand(2, 4, 1, 1)
    real_sigma = torch.tensor([0.1, 1.0, 2.0, 4.0]).view(1, 4, 1, 1).expand(2, 4, 1, 1)
    use = torch.tensor([True, False]).view(2, 1, 1, 1)
    out = mix_styles(x, real_mu, real_sigma, torch.zeros(2, 1, 1, 1), use)
    mu, sigma = channel_stats(out)
    torch.testing.assert_close(mu[0], real_mu[0], atol=1e-4, rtol=0)   # lam 0: the real's
    torch.testing.assert_close(sigma[0], real_sigma[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(out[1], x[1])                                     # not drawn: as it was
    half = mix_styles(x, real_mu, real_sigma, torch.full((2, 1, 1, 1), 0.5), use)
    own_mu, own_sigma = channel_stats(x)
    mu, sigma = channel_stats(half)
    torch.testing.assert_close(mu[0], 0.5 * (own_mu[0] + real_mu[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(sigma[0], 0.5 * (own_sigma[0] + real_sigma[0]), atol=1e-4,
                               rtol=1e-4)
    # The spatial pattern of each channel is kept: only its offset and scale change.
    z = (x[0] - own_mu[0]) / own_sigma[0]
    torch.testing.assert_close((half[0] - mu[0]) / sigma[0], z, atol=1e-3, rtol=1e-3)


def test_mixer_acts_once_per_prepare_in_training_only_and_can_be_removed():
    net = _net()
    sim = _frames(net, 4, -0.6, -0.4, 2)      # flat, dark: small feature spread
    real = _frames(net, 4, -1.0, 1.0, 3)      # full-range noise: large spread
    mixer = StyleMixer(net.enc_real, [0, 1], p=1.0, alpha=0.1)
    seen = []   # registered after the mixer's hook: sees what the next layer gets
    spy = net.enc_real.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        net.encode_skips(sim, 'real')
        plain = seen[-1]
        mixer.prepare(real, sim.shape[0])
        real_std = channel_stats(seen[-1])[1]   # the real pass, untouched by the mixer
        net.encode_skips(sim, 'real')
        mixed = seen[-1]
        mixer.clear()
        net.encode_skips(sim, 'real')
        assert torch.equal(seen[-1], plain)     # cleared: sim features as they were
        mixer.prepare(real, sim.shape[0])
        net.eval()
        net.encode_skips(sim, 'real')
        assert torch.equal(seen[-1], plain)     # eval mode (monitoring, export): never mixed
        net.train()
        mixer.remove()
        net.encode_skips(sim, 'real')
        assert torch.equal(seen[-1], plain)     # removed: for good
    sim_std = channel_stats(plain)[1].mean()
    assert channel_stats(mixed)[1].mean() > 2 * sim_std
    assert real_std.mean() > 2 * sim_std
    spy.remove()


@pytest.mark.parametrize('kwargs, match', [({'p': 0.0}, 'style_mix='),
                                           ({'p': 1.5}, 'style_mix='),
                                           ({'alpha': 0.0}, 'style_mix_alpha'),
                                           ({'layers': [99]}, 'style_mix_layers'),
                                           ({'layers': []}, 'style_mix_layers')])
def test_mixer_refuses_unusable_settings(kwargs, match):
    net = _net()
    args = {'layers': [0, 1], 'p': 0.5, 'alpha': 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        StyleMixer(net.enc_real, args['layers'], args['p'], args['alpha'])


def test_sim_only_trains_with_style_mix_on_its_sim_epochs(tiny_data, tmp_path, capsys):
    from training import train
    sets = [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')] + [
        'data.eval.val_fraction=0.25', 'train.supervised_steps=3', 'train.prior_frames=4',
        'train.log_every=1']
    cfg = load_config('test', sets + ['train.style_mix=1.0'])
    trainer = train.Trainer(cfg, tmp_path / 'mix', 'sim_only')
    assert [name for name, _ in trainer._streams('supervised')] == ['sim', 'real']
    summary = trainer.run('all')
    trainer.close()
    assert load_depth_seg_net(summary['export_dir'])[0] is not None
    # No hook is left on the exported (shared) encoder after the stage.
    assert not any(layer._forward_hooks for layer in trainer.net.enc_real.layers)
    plain = train.Trainer(load_config('test', sets), tmp_path / 'plain', 'sim_only')
    assert [name for name, _ in plain._streams('supervised')] == ['sim']
    with pytest.raises(ValueError, match='style_mix is for --method sim_only'):
        train.Trainer(load_config('test', sets + ['train.style_mix=0.5']), tmp_path / 'o',
                      'oracle')
    assert train.main(['--config', 'test', '--run-dir', str(tmp_path / 'bad'), '--method',
                       'sim_only', '--set', *sets, 'train.style_mix=2']) == 2
