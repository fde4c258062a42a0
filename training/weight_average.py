"""A uniform average of the network's weights over a stage's last steps (SWA).

Averaging the weights a run passes through on its way down (Izmailov et al. 2018) lands in a
wider, flatter region of the loss than the last step; flat minima are what transfers to a
shifted domain (SWAD, Cha et al. 2021: domain generalisation from source data alone). The
average is a submodule of the network (``net.averaged``), so checkpoints save and resume it
and the optimiser never sees it; at the end of the stage its weights replace the network's,
and the export (``DepthSegNet.from_twin``) carries them and leaves the copy out.
"""
import torch
from torch import nn

from .teacher import frozen_copy


class WeightAverage(nn.Module):
    """A frozen copy of a network holding the mean of the weights passed to ``update``."""

    def __init__(self, net):
        super().__init__()
        self.net = frozen_copy(net)
        self.register_buffer('count', torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, student):
        """Fold the student's current weights and float buffers into the running mean."""
        weight = 1.0 / float(self.count + 1)
        params = dict(student.named_parameters())
        for name, p in self.net.named_parameters():
            p.lerp_(params[name].detach(), weight)
        buffers = dict(student.named_buffers())
        for name, b in self.net.named_buffers():
            if b.is_floating_point():   # BatchNorm statistics averaged with the weights
                b.lerp_(buffers[name], weight)
            else:
                b.copy_(buffers[name])
        self.count += 1

    @torch.no_grad()
    def copy_to(self, student):
        """Give the student the averaged weights and buffers (nothing when none was folded)."""
        if int(self.count) == 0:
            return False
        params = dict(self.net.named_parameters())
        for name, p in student.named_parameters():
            if name in params:
                p.copy_(params[name])
        buffers = dict(self.net.named_buffers())
        for name, b in student.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
        return True


def average_start(train_cfg, total):
    """Return the first step whose weights join the average, or None when it is off.

    ``train.weight_average`` is the share of the stage's last steps averaged (0 = off).
    """
    share = float(train_cfg.get('weight_average', 0.0))
    if share <= 0.0:
        return None
    return max(int(round(total * (1.0 - share))), 0)


def attach_average(net, train_cfg):
    """Give ``net`` a ``WeightAverage`` when ``train.weight_average`` > 0; return it or None."""
    if float(train_cfg.get('weight_average', 0.0)) <= 0.0:
        return None
    if getattr(net, 'averaged', None) is None:
        net.add_module('averaged', WeightAverage(net))
    return net.averaged
