"""Depth <-> tanh-range coding: round trips, range ends, far and invalid values."""
import math

import pytest
import torch

from sim2real_perception.model import decode_depth, encode_depth


@pytest.mark.parametrize('encoding', ['linear', 'inverse', 'log'])
def test_round_trip_and_range_ends(encoding):
    depth = torch.tensor([0.5, 1.0, 5.0, 20.0, 79.9, 80.0])
    t = encode_depth(depth, encoding, 0.5, 80.0)
    assert float(t.min()) == pytest.approx(-1.0) and float(t.max()) == pytest.approx(1.0)
    assert torch.all(t[1:] > t[:-1])  # monotonic
    assert torch.allclose(decode_depth(t, encoding, 0.5, 80.0), depth, rtol=1e-4)


@pytest.mark.parametrize('encoding', ['linear', 'inverse', 'log'])
def test_far_and_out_of_range_values(encoding):
    t = encode_depth(torch.tensor([math.inf, 1000.0, 0.01]), encoding, 0.5, 80.0)
    assert t.tolist() == pytest.approx([1.0, 1.0, -1.0])
    d = decode_depth(torch.tensor([-5.0, 5.0]), encoding, 0.5, 80.0)
    assert d.tolist() == pytest.approx([0.5, 80.0])


def test_inverse_and_log_give_near_depths_more_range_than_linear():
    span = {e: float(encode_depth(torch.tensor(10.0), e) - encode_depth(torch.tensor(1.0), e))
            for e in ('linear', 'inverse', 'log')}
    assert span['inverse'] > 3.5 * span['linear'] and span['log'] > 3.5 * span['linear']


def test_bad_arguments():
    with pytest.raises(ValueError):
        encode_depth(torch.ones(1), 'sqrt')
    with pytest.raises(ValueError):
        decode_depth(torch.ones(1), 'linear', 10.0, 5.0)
