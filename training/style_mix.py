"""Cross-domain style mixing: sim features trained under the real frames' feature statistics.

What separates the real-style frames from the sim ones is mostly texture, and a texture shows
in the first layers' features as per-channel statistics: a filter that answers to fine grain
has a small spread over a flat sim wall and a large one over a real hedge. MixStyle (Zhou et
al., ICLR 2021) mixes those statistics between training images; here the other image is an
unlabelled *real* frame (the cross-domain use, as in AdaIN-style feature stylisation), so the
heads learn the sim labels from features that carry real-frame statistics.

For each sim frame in a batch, with probability ``p``, the output of each chosen encoder
layer is re-normalised: ``(f - mu_s) / sigma_s * sigma + mu``, where ``mu, sigma`` mix the
frame's own channel statistics with a random real frame's (weight ``lam ~ Beta(alpha,
alpha)`` on the sim frame's, the rest on the real one's). Real statistics come from the same
layers run on the real batch without gradient; the mixing weights are drawn per frame.
Training only: the deployed network is unchanged, so inference costs nothing more.
"""
import torch

EPS = 1e-6


def channel_stats(x):
    """Return per-sample, per-channel (mean, std) of NCHW features, shaped N x C x 1 x 1."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    return mu, sigma


def mix_styles(x, real_mu, real_sigma, lam, use):
    """Give each sample of ``x`` the statistics ``lam * own + (1 - lam) * real`` where ``use``.

    ``lam`` and ``use`` are per sample (N x 1 x 1 x 1; ``use`` boolean); the real statistics
    are N x C x 1 x 1 (already matched to the samples) and carry no gradient.
    """
    mu, sigma = channel_stats(x)
    new_mu = lam * mu + (1.0 - lam) * real_mu
    new_sigma = lam * sigma + (1.0 - lam) * real_sigma
    mixed = (x - mu) / sigma * new_sigma + new_mu
    return torch.where(use, mixed, x)


class StyleMixer:
    """Forward hooks on some encoder layers that give sim features real-frame statistics.

    ``prepare(real_images)`` (before the sim forward pass) runs the hooked layers on the real
    batch without gradient and draws, per sim frame, a real partner, ``lam`` and whether to
    mix; the hooks then act on the next forward pass through the encoder only, and
    ``clear()`` switches them off (``prepare`` per step, ``clear`` after the sim pass).
    """

    def __init__(self, encoder, layers, p=0.5, alpha=0.1):
        if not 0.0 < float(p) <= 1.0:
            raise ValueError(f'train.style_mix={p!r}: a probability in (0, 1], or 0 for off')
        if float(alpha) <= 0.0:
            raise ValueError(f'train.style_mix_alpha={alpha!r}: must be > 0')
        n = len(encoder.layers)
        layers = sorted({int(i) for i in layers})
        if not layers or layers[0] < 0 or layers[-1] >= n:
            raise ValueError(f'train.style_mix_layers={layers}: encoder layer indices in '
                             f'[0, {n - 1}], at least one')
        self.encoder, self.layers = encoder, layers
        self.p, self.alpha = float(p), float(alpha)
        self._plan = None
        self._handles = [encoder.layers[i].register_forward_hook(self._hook(i))
                         for i in layers]

    def prepare(self, real_images, batch_size):
        """Compute the real statistics and draw this step's mixing for ``batch_size`` frames."""
        stats = {}
        with torch.no_grad():
            x = real_images
            self._plan = None   # the hooks stay idle on this pass
            for i, layer in enumerate(self.encoder.layers[:self.layers[-1] + 1]):
                x = layer(x)
                if i in self.layers:
                    stats[i] = channel_stats(x.float())
        device = real_images.device
        partner = torch.randint(0, real_images.shape[0], (batch_size,), device=device)
        beta = torch.distributions.Beta(self.alpha, self.alpha)
        lam = beta.sample((batch_size, 1, 1, 1)).to(device)
        use = torch.rand(batch_size, 1, 1, 1, device=device) < self.p
        self._plan = {i: (mu[partner], sigma[partner]) for i, (mu, sigma) in stats.items()}
        self._plan['lam'], self._plan['use'] = lam, use

    def clear(self):
        """Switch the hooks off until the next ``prepare``."""
        self._plan = None

    def remove(self):
        """Detach the hooks from the encoder for good."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, index):
        def hook(module, inputs, output):
            plan = self._plan
            if plan is None or not module.training or output.shape[0] != plan['lam'].shape[0]:
                return output
            mu, sigma = plan[index]
            return mix_styles(output, mu.to(output.dtype), sigma.to(output.dtype),
                              plan['lam'].to(output.dtype), plan['use'])
        return hook
