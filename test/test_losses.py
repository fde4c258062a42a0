"""Loss terms: closed-form MMD vs Monte Carlo, masks, ignore index, gradients."""
import math

import pytest
import torch

from sim2real_perception.config import load_config
from sim2real_perception.model import ModelConfig, TwinVAE, encode_depth
from training import losses


def _kernel_mean(x, y, g2, exclude_diagonal=False):
    k = torch.exp(-torch.cdist(x, y).pow(2) / (2 * g2))
    if exclude_diagonal:
        n = k.shape[0]
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
    return k.mean()


@pytest.mark.parametrize('shift,scale', [(0.0, 1.0), (0.7, 1.0), (0.0, 2.0)])
def test_mmd_prior_closed_form_matches_monte_carlo(shift, scale):
    gen = torch.Generator().manual_seed(1)
    d, n, m = 12, 24, 6000
    z = shift + scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
    a = torch.randn(m, d, generator=gen, dtype=torch.float64)
    g2 = 1.0 * d
    mc = (_kernel_mean(z, z, g2, True) - 2 * _kernel_mean(z, a, g2)
          + _kernel_mean(a, a, g2, True))
    closed = losses.mmd_prior(z.float(), gamma_scale=1.0).double()
    assert closed.item() == pytest.approx(mc.item(), abs=2e-3)


def test_mmd_prior_small_for_prior_samples_large_for_shifted():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(256, 4, 2, 2, generator=gen)     # flattened d = 16
    matched = losses.mmd_prior(z).item()
    shifted = losses.mmd_prior(z + 1.5).item()
    assert abs(matched) < 0.01
    assert shifted > 0.2
    assert shifted > 20 * abs(matched)


def test_mmd_two_sample_zero_for_same_distribution_large_for_shift():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(128, 16, generator=gen), torch.randn(128, 16, generator=gen)
    assert abs(losses.mmd_two_sample(a, b).item()) < 0.01
    assert losses.mmd_two_sample(a, b + 1.0).item() > 0.1
    # The unbiased U-statistic, written out term by term.
    x, y, g2 = a[:5].double(), b[:4].double(), 16.0
    k = lambda p, q: math.exp(-float(((p - q) ** 2).sum()) / (2 * g2))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    expected = xx + yy - 2 * xy
    assert losses.mmd_two_sample(a[:5], b[:4]).item() == pytest.approx(expected, abs=1e-6)


def test_mmd_large_latent_does_not_underflow():
    z = torch.randn(8, 300, 4, 4)                  # the paper's 4800-dim latent
    value = losses.mmd_prior(z)
    assert torch.isfinite(value)
    assert losses.mmd_prior(z + 3.0) > value


def test_every_term_has_gradients():
    mu = torch.randn(4, 8, 2, 2, requires_grad=True)
    other = torch.randn(4, 8, 2, 2, requires_grad=True)
    for value in (losses.mmd_prior(mu), losses.mmd_two_sample(mu, other), losses.kl_unit(mu)):
        mu.grad = None
        value.backward()
        assert mu.grad is not None and torch.isfinite(mu.grad).all()
        assert mu.grad.abs().sum() > 0


def test_kl_unit_is_kl_of_unit_variance_gaussians():
    mu = torch.randn(3, 5)
    q = torch.distributions.Normal(mu, torch.ones_like(mu))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).mean()
    assert losses.kl_unit(mu).item() == pytest.approx(expected.item(), rel=1e-6)


def _cfg():
    return ModelConfig.from_dict(load_config('test')['model'])


def test_depth_loss_uses_valid_pixels_only_and_encodes_far_and_sky():
    cfg = _cfg()
    depth = torch.tensor([[[[10.0, 0.0], [float('nan'), float('inf')]]]])
    labels = torch.tensor([[[4, 4], [4, 4]]])
    target10 = encode_depth(torch.tensor(10.0), cfg.depth_encoding, cfg.min_depth,
                            cfg.max_depth)
    pred = torch.tensor([[[[target10.item(), 0.3], [-0.9, 1.0]]]], requires_grad=True)
    # 0 and NaN pixels are ignored whatever is predicted there; inf targets +1 (max_depth).
    assert losses.depth_loss(pred, depth, cfg, labels).item() == pytest.approx(0.0, abs=1e-10)
    wrong_far = pred.detach().clone()
    wrong_far[0, 0, 1, 1] = 0.0
    assert losses.depth_loss(wrong_far, depth, cfg, labels).item() == pytest.approx(0.5)
    # A sky label makes the 0-depth pixel a far target (error (0.3 - 1)^2 over 3 pixels).
    sky = torch.tensor([[[4, 1], [4, 4]]])
    assert losses.depth_loss(pred, depth, cfg, sky).item() == pytest.approx(0.49 / 3, rel=1e-5)
    assert losses.depth_loss(pred, depth, cfg, sky, sky_as_far=False).item() == \
        pytest.approx(0.0, abs=1e-10)
    loss = losses.depth_loss(pred, depth, cfg, sky)
    loss.backward()
    assert pred.grad[0, 0, 1, 0] == 0 and pred.grad[0, 0, 0, 1] != 0


def test_depth_loss_l1_norm_is_the_mean_absolute_code_error():
    cfg = _cfg()
    depth = torch.tensor([[[[10.0, 0.0], [10.0, float('inf')]]]])
    t10 = encode_depth(torch.tensor(10.0), cfg.depth_encoding, cfg.min_depth,
                       cfg.max_depth).item()
    # errors 0.5, (ignored), -0.1, -1.0 on the three valid pixels
    pred = torch.tensor([[[[t10 + 0.5, 0.7], [t10 - 0.1, 0.0]]]])
    l1 = losses.depth_loss(pred, depth, cfg, None, norm='l1').item()
    l2 = losses.depth_loss(pred, depth, cfg, None, norm='l2').item()
    assert l1 == pytest.approx(1.6 / 3, rel=1e-5)
    assert l2 == pytest.approx(1.26 / 3, rel=1e-5)
    assert losses.depth_loss(pred, depth, cfg, None).item() == pytest.approx(l2)
    with pytest.raises(ValueError, match='depth_norm'):
        losses.depth_loss(pred, depth, cfg, None, norm='huber')


def test_depth_loss_without_valid_pixels_is_zero_with_graph():
    cfg = _cfg()
    pred = torch.zeros(2, 1, 2, 2, requires_grad=True)
    depth = torch.full((2, 1, 2, 2), 5.0)
    loss = losses.depth_loss(pred, depth, cfg, None, sample_mask=torch.tensor([False, False]))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None


def test_seg_loss_ignores_255():
    logits = torch.randn(1, 12, 2, 2, requires_grad=True)
    labels = torch.tensor([[[3, 255], [255, 7]]])
    expected = (torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([3]))
                + torch.nn.functional.cross_entropy(logits[:, :, 1, 1], torch.tensor([7]))) / 2
    loss = losses.seg_loss(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert logits.grad[0, :, 0, 1].abs().sum() == 0 and logits.grad[0, :, 0, 0].abs().sum() > 0
    empty = losses.seg_loss(logits, torch.full((1, 2, 2), 255))
    assert empty.item() == 0.0 and not math.isnan(empty.item())


def test_stage_terms_train_the_right_modules():
    torch.manual_seed(0)
    cfg = _cfg()
    net = TwinVAE(cfg).train()
    x = torch.rand(2, 3, cfg.height, cfg.width) * 2 - 1
    y = torch.rand(2, 3, cfg.height, cfg.width) * 2 - 1
    terms, _ = losses.stage1_terms(net, x, y)
    assert set(terms) == set(losses.STAGE1_TERMS)
    total, weighted = losses.weighted_total(terms, {k: 1.0 for k in terms})
    total.backward()
    assert all(p.grad is None for p in net.dec_depth.parameters())
    assert all(p.grad is not None for p in net.enc_sim.parameters())
    assert all(p.grad is not None for p in net.dec_real.parameters())
    net.zero_grad(set_to_none=True)
    batch = {'image': y, 'depth': torch.rand(2, 1, cfg.height, cfg.width) * 40,
             'labels': torch.randint(0, 12, (2, cfg.height, cfg.width)),
             'has_depth': torch.tensor([True, False]), 'has_labels': torch.tensor([True, True])}
    terms, _ = losses.stage2_terms(net, batch, x, cfg)
    assert set(terms) == set(losses.STAGE2_TERMS)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in net.dec_depth.parameters())
    assert all(p.grad is not None for p in net.dec_seg.parameters())
