r"""Rademacher complexity and the CReLU bound of Shang et al. (2016), Theorem 4.1.

The empirical Rademacher complexity of a class :math:`F` on points :math:`x_1, \dots, x_L`:

.. math::

    R_L(F) = \mathbb{E}_\sigma \sup_{f \in F} \Big| \frac{2}{L} \sum_{i=1}^{L} \sigma_i f(x_i) \Big|,
    \qquad \sigma_i = \pm 1 \text{ uniformly}.

- finite classes (:func:`rademacher_complexity`): exact, by enumerating all :math:`2^L` sign
  vectors (``L <= 20``), or Monte Carlo;
- norm-bounded linear classes :math:`\{x \mapsto \langle w, x \rangle : \|w\|_2 \le W\}`
  (:func:`linear_class_rademacher`): the supremum is :math:`\tfrac{2W}{L} \|\sum_i \sigma_i x_i\|_2`;
  its expectation exactly (enumeration) or by Monte Carlo, and the closed-form bound
  :math:`\tfrac{2W}{L} \sqrt{\sum_i \|x_i\|^2}` (Jensen), tight to a factor :math:`\sqrt 2`.

Theorem 4.1 (:func:`theorem_4_1_bound`): for :math:`G = F^{d_{in}}` (each of :math:`d_{in}`
coordinates a function of :math:`F`), CReLU :math:`\rho_c`, and linear :math:`H` with
:math:`\|w\|_2 \le B` (:func:`spectral_norm` of a layer's weight),
:math:`R_L(H \circ \rho_c \circ G) \le \sqrt{d_{in}} \, B \, R_L(F)`; a ReLU layer with the same
output width (:math:`2 d_{in}` filters) gets :math:`\sqrt{2 d_{in}} \, B \, R_L(F)`, the paper's
argument that CReLU does not raise the complexity over ReLU.

Measured, not assumed: :func:`composed_rademacher` computes the left side exactly for finite
:math:`F`. As stated, with constant 1, the bound **fails on some small classes**: for
:math:`F = \{f\}`, :math:`f(x_1, x_2) = (1, -1)`, :math:`d_{in} = B = 1`, the left side is
:math:`\sqrt 2` and :math:`R_L(F) = 1` (CReLU's two halves of a difference can both be large
where the difference is not). What the Ledoux-Talagrand contraction proves is the bound with
constant 4 (:data:`PROVABLE_CONSTANT`): :math:`\sqrt{P^2 + N^2} \le |P| + |N|`, and each of the
two halves contracts with a factor 2. ``theorem_4_1_bound(..., constant=PROVABLE_CONSTANT)``
gives that one.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from invertnet.errors import ShapeError

__all__ = [
    "PROVABLE_CONSTANT",
    "composed_rademacher",
    "linear_class_bound",
    "linear_class_rademacher",
    "rademacher_complexity",
    "spectral_norm",
    "theorem_4_1_bound",
]

#: The constant the contraction argument proves in Theorem 4.1's bound (the paper states 1).
PROVABLE_CONSTANT = 4.0
#: Largest L enumerated exactly (2^L sign vectors).
EXACT_MAX_POINTS = 20


def _signs(points: int, samples: int | None, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """All ``2^points`` sign vectors (``samples`` None and points <= 20), else ``samples`` random ones."""
    if samples is None:
        if points > EXACT_MAX_POINTS:
            raise ValueError(
                f"expected at most {EXACT_MAX_POINTS} points for exact enumeration, got {points}; "
                "pass samples=... for a Monte Carlo estimate"
            )
        return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=points)), dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (samples, points), generator=generator).to(dtype) * 2 - 1


def _values(values: torch.Tensor, name: str) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim != 2 or values.shape[1] < 1:
        raise ShapeError(f"{name}: expected values of shape (functions, points), got {tuple(values.shape)}")
    return values


def rademacher_complexity(values: torch.Tensor, *, samples: int | None = None, seed: int = 0) -> float:
    r""":math:`R_L(F)` of a finite class from its values ``(functions, L)``: exact, or Monte Carlo with ``samples``.

    Examples
    --------
    >>> rademacher_complexity(torch.tensor([[1.0, -1.0]]))  # E|s1 - s2| = 1
    1.0
    """
    values = _values(values, "rademacher_complexity")
    points = values.shape[1]
    signs = _signs(points, samples, seed, values.dtype)
    return float((signs @ values.T).abs().amax(dim=1).mean() * 2 / points)


def linear_class_rademacher(x: torch.Tensor, norm_bound: float, *, samples: int | None = None, seed: int = 0) -> float:
    r""":math:`R_L` of :math:`\{x \mapsto \langle w, x\rangle : \|w\|_2 \le W\}` on the rows of ``x`` ``(L, d)``.

    :math:`\mathbb{E}_\sigma \tfrac{2W}{L} \|\sum_i \sigma_i x_i\|_2`, exact for ``L <= 20`` or by
    Monte Carlo with ``samples``.
    """
    x = _values(x, "linear_class_rademacher")
    signs = _signs(x.shape[0], samples, seed, x.dtype)
    return float((signs @ x).norm(dim=1).mean() * 2 * norm_bound / x.shape[0])


def linear_class_bound(x: torch.Tensor, norm_bound: float) -> float:
    r"""The closed form :math:`\tfrac{2W}{L} \sqrt{\sum_i \|x_i\|_2^2} \ge` :func:`linear_class_rademacher`."""
    x = _values(x, "linear_class_bound")
    return float(2 * norm_bound * x.pow(2).sum().sqrt() / x.shape[0])


def spectral_norm(layer: nn.Module | torch.Tensor) -> float:
    """Largest singular value of a layer's weight as a matrix ``(out, in * kh * kw)`` (the paper's ``B``).

    For the norm of a convolution as an operator on whole images, see
    :func:`invertnet.linalg.spectrum.sigma_max`.
    """
    weight = getattr(layer, "weight", None) if isinstance(layer, nn.Module) else layer
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        raise TypeError(f"spectral_norm: expected a Conv2d, a Linear or a weight tensor, got {type(layer).__name__}")
    return float(torch.linalg.matrix_norm(weight.detach().flatten(1).double(), ord=2))


def composed_rademacher(
    values: torch.Tensor,
    d_in: int,
    norm_bound: float,
    activation: str = "crelu",
    *,
    samples: int | None = None,
    seed: int = 0,
) -> float:
    r"""Exact :math:`R_L(H \circ \rho \circ G)` for a finite :math:`F` given by its values ``(functions, L)``.

    :math:`G = F^{d_{in}}` (every coordinate any function of :math:`F`).

    With :math:`\|w\|_2 \le B` the supremum over :math:`H` is :math:`B \|\sum_i \sigma_i \rho(g(x_i))\|_2`,
    and over :math:`G` it splits per coordinate:
    :math:`\sqrt{d_{in}} \, B \, \tfrac{2}{L} \max_f \|\sum_i \sigma_i \rho(f(x_i))\|_2`, with
    :math:`\rho(t) = (\max(0, t), \max(0, -t))` for ``"crelu"`` and :math:`\max(0, t)` for ``"relu"``.
    """
    values = _values(values, "composed_rademacher")
    if activation == "crelu":
        halves = torch.stack([values.clamp(min=0), (-values).clamp(min=0)])
    elif activation == "relu":
        halves = values.clamp(min=0).unsqueeze(0)
    else:
        raise ValueError(f"composed_rademacher: expected activation 'crelu' or 'relu', got {activation!r}")
    signs = _signs(values.shape[1], samples, seed, values.dtype)
    sums = torch.einsum("sl,hfl->sfh", signs, halves).norm(dim=2)  # (signs, functions)
    return float(math.sqrt(d_in) * norm_bound * sums.amax(dim=1).mean() * 2 / values.shape[1])


def theorem_4_1_bound(
    d_in: int, norm_bound: float, rademacher_f: float, activation: str = "crelu", constant: float = 1.0
) -> float:
    r"""Theorem 4.1's right side, ``constant`` :math:`\cdot \sqrt{d} \, B \, R_L(F)`.

    :math:`d = d_{in}` for a CReLU layer of :math:`d_{in}` filters (:math:`2 d_{in}` outputs); for
    ``"relu"`` the comparison the paper draws, a ReLU layer of the same output width,
    :math:`d = 2 d_{in}`.

    Examples
    --------
    >>> theorem_4_1_bound(8, 1.0, 0.5), round(theorem_4_1_bound(8, 1.0, 0.5, "relu"), 4)
    (1.4142135623730951, 2.0)
    """
    if activation not in ("crelu", "relu"):
        raise ValueError(f"theorem_4_1_bound: expected activation 'crelu' or 'relu', got {activation!r}")
    width = d_in if activation == "crelu" else 2 * d_in
    return constant * math.sqrt(width) * norm_bound * rademacher_f
