"""Step-indexed batches: the data order is a pure function of (seed, stream, step).

A resumed run must see exactly the batches an uninterrupted one would, from any step,
with any number of loader workers and processes. So instead of stateful iterators every
stream draws epoch ``e``'s order from ``randperm(n, seed=(seed, stream, e))``; step ``s``
takes slice ``s % steps_per_epoch`` of it. Under DDP the global batch of ``batch * world``
indices is dealt out round-robin (``[rank::world]``, like ``DistributedSampler``), so the
ranks' shards are disjoint and their union is the global batch.
"""
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def steps_per_epoch(n, batch, world=1):
    """Whole global batches per pass over ``n`` items (at least 1: small sets repeat)."""
    return max(1, n // (batch * world))


def epoch_order(n, seed, stream, epoch):
    """Return the shuffled order of epoch ``epoch`` of stream ``stream`` (a LongTensor)."""
    key = int(np.random.SeedSequence([int(seed), int(stream), int(epoch)]).generate_state(1)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(key))


def global_batch(n, batch, world, seed, stream, step):
    """Return (epoch, indices) of the global batch at ``step`` (``batch * world`` indices)."""
    spe = steps_per_epoch(n, batch, world)
    epoch, pos = divmod(int(step), spe)
    order = epoch_order(n, seed, stream, epoch)
    need = batch * world
    if n < need:
        order = order.repeat(math.ceil(need / n))
    return epoch, order[pos * need:(pos + 1) * need].tolist()


def rank_batch(n, batch, world, rank, seed, stream, step):
    """Return this rank's share of the global batch at ``step``: [(epoch, index), ...]."""
    epoch, indices = global_batch(n, batch, world, seed, stream, step)
    return [(epoch, i) for i in indices[rank::world]]


class StepBatchSampler(Sampler):
    """Yield this rank's batch for steps ``start .. stop-1`` of one stream."""

    def __init__(self, n, batch, world, rank, seed, stream, start, stop):
        self.args = (n, batch, world, rank, seed, stream)
        self.start, self.stop = int(start), int(stop)

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield rank_batch(*self.args, step)


class EpochIndexed(Dataset):
    """Dataset taking ``(epoch, index)`` so augmentation depends on the epoch, not on state."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def step_loader(dataset, batch, world, rank, seed, stream, start, stop, num_workers=0):
    """Return a DataLoader over steps ``start .. stop-1``; deterministic for any worker count."""
    sampler = StepBatchSampler(len(dataset), batch, world, rank, seed, stream, start, stop)
    # A private generator: creating the iterator must not consume the global torch RNG
    # (the latent noise), or a resumed run would draw different noise.
    return DataLoader(EpochIndexed(dataset), batch_sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(int(seed)),
                      persistent_workers=False)
