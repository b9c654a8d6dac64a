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
