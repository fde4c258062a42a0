"""An exponential-moving-average copy of the network: steadier self-training targets.

Mean Teacher and DACS take the pseudo-labels from an EMA of the student's weights rather
than from the student itself, so a single noisy step does not become next step's target.
The teacher is a submodule of the network (``net.teacher``): checkpoints save and resume it
with everything else, the optimiser never sees it, and the export (the deployed path of the
student, ``DepthSegNet.from_twin``) leaves it out.
"""
import copy

import torch
from torch import nn


#: Submodules a copy of the network leaves out: training helpers that are never deployed
#: (and a copy never holds a copy of itself).
NOT_COPIED = ('teacher', 'critic', 'averaged')


def frozen_copy(net):
    """Return a deep copy of ``net`` without ``NOT_COPIED`` submodules and without gradients."""
    hidden = {k: net._modules.pop(k) for k in NOT_COPIED if k in net._modules}
    try:
        out = copy.deepcopy(net)
    finally:
        net._modules.update(hidden)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class EmaTeacher(nn.Module):
    """A frozen copy of a network, moved towards it by ``update`` after every step."""

    def __init__(self, net, decay):
        super().__init__()
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f'loss.pseudo_teacher_ema={decay!r}: the EMA decay must be in '
                             '(0, 1), or 0 for no teacher')
        self.decay = float(decay)
        self.net = frozen_copy(net)

    @torch.no_grad()
    def update(self, student):
        """Move every weight ``1 - decay`` of the way to the student's; copy its buffers."""
        params = dict(student.named_parameters())
        for name, p in self.net.named_parameters():
            p.lerp_(params[name].detach(), 1.0 - self.decay)
        buffers = dict(student.named_buffers())
        for name, b in self.net.named_buffers():
            b.copy_(buffers[name])


def attach_teacher(net, loss_cfg):
    """Give ``net`` an EMA teacher if ``loss.pseudo_teacher_ema`` > 0; return it or None.

    Only self-training reads it, so with both ``loss.s2_pseudo_*`` at 0 there is none.
    """
    decay = float(loss_cfg.get('pseudo_teacher_ema', 0.0))
    pseudo = any(float(loss_cfg.get(f's2_pseudo_{k}', 0.0)) > 0 for k in ('ce', 'depth'))
    if decay == 0.0 or not pseudo:   # it only gives self-training's targets
        return None
    if getattr(net, 'teacher', None) is None:
        net.add_module('teacher', EmaTeacher(net, decay))
    return net.teacher
