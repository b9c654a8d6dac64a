r"""Pairing of opposite-phase filters (Shang et al. 2016, Sec. 2.1, Figs. 2-3).

For the unit-normalised filters :math:`\phi_1, \dots, \phi_n` of a layer (each filter flattened over
its input channels and kernel), the *pairing filter* of :math:`\phi_i` is the most negatively
correlated other filter, and :math:`\mu_i` its cosine:

.. math::

    \bar\phi_i = \phi_{j^*}, \quad j^* = \arg\min_{j \ne i} \langle \phi_i, \phi_j \rangle, \qquad
    \mu_i = \langle \phi_i, \bar\phi_i \rangle \in [-1, 1].

The paper observes that the lower layers of ReLU networks learn pairs (:math:`\mu_i` near
:math:`-1`), i.e. the network spends filters on recovering the negative phase, which CReLU gives for
free. The reference is random filters of the same shape: the cosine of two independent uniform
directions in :math:`\mathbb{R}^d` has :math:`(t + 1) / 2 \sim \mathrm{Beta}(\tfrac{d-1}{2}, \tfrac{d-1}{2})`,
and given :math:`\phi_i` the :math:`n - 1` cosines are independent, so :math:`\mu_i` is their minimum:
:math:`P(\mu_i \le t) = 1 - (1 - F(t))^{n-1}` (:func:`random_mu_cdf`).

Works on any checkpoint: :func:`conv_weights` takes an ``nn.Module`` (every ``Conv2d``) or a state
dict (every 4-D floating-point tensor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt
import scipy.integrate
import scipy.stats
import torch
from torch import nn

from invertnet.errors import ArgumentTypeError, InvertnetError, NonFiniteError, OptionError, ShapeError

__all__ = [
    "NoConvWeightsError",
    "Pairing",
    "PairingsByLayer",
    "ZeroFilterError",
    "conv_weights",
    "expected_random_mu",
    "pairing",
    "pairing_by_layer",
    "random_mu_cdf",
    "random_pairing",
]


class NoConvWeightsError(InvertnetError, ValueError):
    """A model or checkpoint without the convolution weights an analysis needs."""


class ZeroFilterError(InvertnetError, ValueError):
    """A filter of all zeros (e.g. pruned), which has no direction to pair."""


@dataclass(frozen=True)
class Pairing:
    r"""The pairing of one layer's filters.

    Attributes
    ----------
    mu : torch.Tensor
        ``(n,)`` float64, :math:`\mu_i`.
    partner : torch.Tensor
        ``(n,)`` long, the index of each filter's pairing filter.
    shape : tuple of int
        The weight's shape, ``(n, C_in / groups, kh, kw)``.
    """

    mu: torch.Tensor
    partner: torch.Tensor
    shape: tuple[int, ...]


class PairingsByLayer(dict[str, Pairing]):
    """:func:`pairing_by_layer`'s answer: a dict of :class:`Pairing` by weight name, and what was left out.

    Attributes
    ----------
    skipped : dict of str to str
        Weights that were not asked for by name and could not be paired, with the reason
        (e.g. ``"1 filter: pairing needs at least 2"``).
    """

    def __init__(self, pairings: Mapping[str, Pairing] | None = None, skipped: Mapping[str, str] | None = None) -> None:
        super().__init__(pairings or {})
        self.skipped: dict[str, str] = dict(skipped or {})


def pairing(weight: torch.Tensor) -> Pairing:
    r"""Pairing filters and :math:`\mu_i` of a layer's filters (one per row of ``weight.flatten(1)``).

    Computed in float64 on the weight's device. Zero filters have no direction and are refused, and so
    are weights with NaN or infinite entries.

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])
    >>> p = pairing(w)
    >>> p.mu.tolist(), p.partner.tolist()
    ([-1.0, -1.0, 0.0], [1, 0, 0])
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2 or weight.shape[0] < 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ShapeError(
            f"pairing: expected a weight of shape (n >= 2, ...), got {shape}; a filter needs another one to pair with"
        )
    flat = weight.detach().flatten(1).double()
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[:, 0].tolist()
        raise NonFiniteError(
            f"pairing: expected finite weights, got NaN or infinite entries in {len(bad)} of {len(finite)} filters "
            f"(first: filter {bad[0]}); the training diverged or the checkpoint is damaged"
        )
    norms = flat.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        zero = int((norms[:, 0] == 0).nonzero()[0])
        raise ZeroFilterError(f"pairing: filter {zero} is zero and has no direction; drop zero filters first")
    unit = flat / norms
    cosines = (unit @ unit.T).clamp(-1, 1)
    cosines.fill_diagonal_(float("inf"))
    mu, partner = cosines.min(dim=1)
    return Pairing(mu, partner, tuple(weight.shape))


def _check_counts(dim: int, filters: int, fn: str) -> None:
    if dim < 2 or filters < 2:
        raise OptionError(
            f"{fn}: expected dim >= 2 and filters >= 2 (a cosine between two directions), got dim={dim}, "
            f"filters={filters}"
        )


def random_pairing(shape: Sequence[int], seed: int = 0) -> Pairing:
    """The pairing of Gaussian random filters of ``shape`` (the paper's reference histogram)."""
    generator = torch.Generator().manual_seed(seed)
    return pairing(torch.randn(tuple(shape), generator=generator, dtype=torch.float64))


@overload
def random_mu_cdf(t: float, dim: int, filters: int) -> float: ...
@overload
def random_mu_cdf(t: npt.NDArray[np.floating], dim: int, filters: int) -> npt.NDArray[np.float64]: ...
def random_mu_cdf(t: npt.NDArray[np.floating] | float, dim: int, filters: int) -> npt.NDArray[np.float64] | float:
    r""":math:`P(\mu_i \le t)` for ``filters`` independent uniform directions in :math:`\mathbb{R}^{dim}`."""
    _check_counts(dim, filters, "random_mu_cdf")
    a = (dim - 1) / 2
    survival = scipy.stats.beta.sf((np.asarray(t, dtype=float) + 1) / 2, a, a)
    return 1 - survival ** (filters - 1)


def expected_random_mu(dim: int, filters: int) -> float:
    r""":math:`E[\mu_i] = -1 + \int_{-1}^{1} (1 - F(t))^{n-1} \, dt` for random filters (see :func:`random_mu_cdf`).

    Examples
    --------
    >>> round(expected_random_mu(2, 2), 6)  # two random directions in the plane: E cos = 0
    0.0
    """
    _check_counts(dim, filters, "expected_random_mu")
    value, _ = scipy.integrate.quad(lambda t: 1 - random_mu_cdf(t, dim, filters), -1, 1, limit=200)
    return -1 + value


def conv_weights(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convolution weights by name: every ``Conv2d`` of a module, or every 4-D float tensor of a state dict.

    Module entries are named after the module (``"conv1.conv"``), state dict entries after the key.
    """
    if isinstance(source, nn.Module):
        found = {name: m.weight for name, m in source.named_modules() if isinstance(m, nn.Conv2d)}
    elif isinstance(source, Mapping):
        found = {
            str(k): v
            for k, v in source.items()
            if isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point()
        }
    else:
        raise ArgumentTypeError(
            f"conv_weights: expected an nn.Module or a state dict, got {type(source).__name__}; "
            "pass the model or model.state_dict()"
        )
    if not found:
        raise NoConvWeightsError(
            "expected convolution weights (4-D floating-point tensors), found none; "
            "give a model with Conv2d layers or a checkpoint that holds their weights"
        )
    return found


def pairing_by_layer(
    source: nn.Module | Mapping[str, torch.Tensor], layers: Sequence[str] | None = None
) -> PairingsByLayer:
    """:func:`pairing` of every convolution weight of ``source`` (or of the named ``layers``).

    Pairing needs at least two filters. A weight named in ``layers`` with one filter is an error;
    without ``layers``, such weights are left out and listed, with the reason, in the result's
    ``skipped``. A source where no weight can be paired is an error.

    Raises
    ------
    NoConvWeightsError
        No convolution weight, an unknown name in ``layers``, or no weight with two filters.
    ShapeError
        A weight named in ``layers`` with a single filter.
    NonFiniteError, ZeroFilterError
        Weights with NaN/Inf entries or a zero filter (the message names the weight).

    Examples
    --------
    >>> from invertnet.zoo.models import build_model
    >>> result = pairing_by_layer(build_model("convpool-cnn-c-relu"), ["conv1.conv"])
    >>> result["conv1.conv"].mu.shape
    torch.Size([96])
    """
    if isinstance(layers, str):
        raise ArgumentTypeError(
            f"pairing_by_layer: expected a list of weight names, got the string {layers!r}; pass [{layers!r}]"
        )
    weights = conv_weights(source)
    if layers is not None:
        missing = [name for name in layers if name not in weights]
        if missing:
            raise NoConvWeightsError(
                f"expected convolution weights named {missing}, found only {sorted(weights)}; pick names from that list"
            )
        weights = {name: weights[name] for name in layers}
    result = PairingsByLayer()
    for name, weight in weights.items():
        reason = _unpairable(weight)
        if reason:
            if layers is not None:
                raise ShapeError(
                    f"pairing: expected at least 2 filters of at least 2 entries in {name!r}, got shape "
                    f"{tuple(weight.shape)} ({reason}); drop it from the list"
                )
            result.skipped[name] = reason
            continue
        try:
            result[name] = pairing(weight)
        except InvertnetError as err:
            raise type(err)(f"{name!r}: {err}") from None
    if not result:
        raise NoConvWeightsError(
            "expected a convolution weight with at least 2 filters of at least 2 entries, found only "
            + "; ".join(f"{name} ({reason})" for name, reason in result.skipped.items())
        )
    return result


def _unpairable(weight: torch.Tensor) -> str:
    """Why ``weight`` cannot be paired against random filters, or ``""``."""
    if weight.shape[0] < 2:
        return f"{weight.shape[0]} filter: pairing needs at least 2"
    if weight[0].numel() < 2:
        return "1 entry per filter: every cosine is +-1 and random filters have no reference"
    return ""
