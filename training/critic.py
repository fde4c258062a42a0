"""Adversarial alignment of the shared features (the discriminator UNIT had, on features).

A small convolutional critic tells real-image features from sim-image features at one
scale of the shared encoder; a gradient-reversal layer (Ganin & Lempitsky's DANN) lets the
encoders learn to make them indistinguishable while the critic learns to separate them, in
one backward pass. It is training-only: the critic lives in the checkpoint (so a resumed run
keeps it) but never in an exported model.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _Reverse(torch.autograd.Function):
    """Identity forward; gradient times ``-scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.neg() * ctx.scale, None


def reverse_grad(x, scale=1.0):
    """Return ``x`` unchanged; its gradient is reversed (and scaled) on the way back."""
    return _Reverse.apply(x, scale)


class FeatureCritic(nn.Module):
    """Per-location real-vs-sim logits for a feature map of ``channels`` channels."""

    def __init__(self, channels, width=32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 1, 1))

    def forward(self, x):
        return self.body(x)


def critic_scale(model_cfg):
    """Return the scale the critic watches: the finest skip source (first shared layer)."""
    sources = model_cfg.skip_sources()
    return min(sources) if sources else None


def critic_channels(model_cfg):
    """Return the channels at ``critic_scale``, or the latent's without skips."""
    scale = critic_scale(model_cfg)
    return model_cfg.latent_channels if scale is None else model_cfg.skip_sources()[scale][1]


def adversarial_loss(critic, feat_sim, feat_real):
    """Binary cross entropy of the critic on reversed-gradient sim (1) and real (0) features."""
    ls = critic(reverse_grad(feat_sim.float()))
    lr = critic(reverse_grad(feat_real.float()))
    return 0.5 * (F.binary_cross_entropy_with_logits(ls, torch.ones_like(ls))
                  + F.binary_cross_entropy_with_logits(lr, torch.zeros_like(lr)))
