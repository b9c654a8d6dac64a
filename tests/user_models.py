"""Models a user would bring, for ``--model tests/user_models.py:make_model`` style specs."""

from __future__ import annotations

import torch
from patterns import ResBlock, Stem
from torch import nn

from invertnet import CReLU

NOT_CALLABLE = 3


def make_model() -> nn.Module:
    """A small residual CReLU network (graph walk: a stem, a contractive block)."""
    return Stem(ResBlock(16))


def make_chain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), CReLU(), nn.Conv2d(24, 24, 3, padding=1), CReLU())


def make_seeded_chain() -> nn.Module:
    """make_chain with weights from seed 0: the same in every process (resumed and distributed runs)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return make_chain()


def make_nothing() -> int:
    return 42


class _Doubled(nn.Module):
    """An in-place op after a conv (``h.mul_(2)``), as researchers write it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 2)
        self.act = CReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h.mul_(2)
        return self.act(h)


def make_in_place() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _Doubled()


def make_zero_weights() -> nn.Module:
    model = make_chain()
    nn.init.zeros_(model[2].weight)
    return model


def make_nan_weights() -> nn.Module:
    model = make_chain()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


def make_raises() -> nn.Module:
    raise ValueError("depth must be positive, got 0")


def make_runtime_error() -> nn.Module:
    raise RuntimeError("CUDA error: out of memory")


def make_with(width: int) -> nn.Module:
    return nn.Conv2d(3, width, 3)


def make_exits() -> nn.Module:
    import sys

    sys.exit(0)
