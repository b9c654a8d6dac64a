r"""Image priors for the joint inversion and the default completion: differentiable, one value per image.

A prior is any callable ``prior(x) -> values`` with ``x`` of shape ``(N, C, H, W)`` and ``values`` of shape
``(N,)``, differentiable in ``x`` (autograd), larger for less natural images. The solvers add
``weight * prior(x) / ||y||^2`` to the relative feature misfit :math:`\|f(x) - y\|^2 / \|y\|^2`, so a weight is
comparable across layers and images; they never let a prior move what the features determine (see
:mod:`invertnet.reconstruction.completion`).

:class:`TotalVariation` is the default for images (isotropic, smoothed):

.. math::

    \mathrm{TV}_\epsilon(x) = \sum_{c, p} \sqrt{(\nabla_h x)_{c,p}^2 + (\nabla_w x)_{c,p}^2 + \epsilon^2},

with forward differences (zero at the far border). It favours piecewise-smooth images and keeps edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Prior", "TotalVariation", "image_gradient"]

#: A differentiable image prior: ``(N, ...) -> (N,)``.
Prior = Callable[[torch.Tensor], torch.Tensor]


def image_gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences along H and W (zero at the far border), stacked on a new axis 1: ``(N, 2, C, H, W)``."""
    dh = torch.zeros_like(x)
    dw = torch.zeros_like(x)
    dh[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dw[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([dh, dw], dim=1)


@dataclass(frozen=True)
class TotalVariation:
    r"""Smoothed isotropic total variation, :math:`\sum_p \sqrt{|\nabla x|_p^2 + \epsilon^2}` per image.

    Attributes
    ----------
    eps : float, default 1e-3
        Smoothing: below gradients of about ``eps`` the prior is quadratic (differentiable everywhere).

    Examples
    --------
    >>> import torch
    >>> flat, ramp = torch.zeros(1, 1, 4, 4), torch.arange(4.0).repeat(1, 1, 4, 1)
    >>> tv = TotalVariation(eps=0.0)
    >>> float(tv(flat)), float(tv(ramp))
    (0.0, 12.0)
    """

    eps: float = 1e-3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        squared = image_gradient(x).pow(2).sum(dim=1)
        value: torch.Tensor = (squared + self.eps**2).sqrt().flatten(1).sum(dim=1)
        return value
