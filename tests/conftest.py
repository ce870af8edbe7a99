"""Fixtures shared by the tests; helpers are in tests/helpers.py."""
import pytest
import torch


@pytest.fixture
def digits_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g) * 2
    y = torch.randint(0, 10, (16,), generator=g)
    return x, y
