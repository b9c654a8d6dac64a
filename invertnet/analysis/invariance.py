r"""Invariance scores of units (Goodfellow, Lee, Le, Saxe and Ng, NIPS 2009), as used by Shang et al. (2016).

A *unit* is one channel of a layer at the centre of its feature map (a fixed receptive field). For
unit :math:`i` with response :math:`h_i`:

1. its threshold :math:`t_i` makes the **global firing rate** :math:`G(i) = P_x(h_i(x) > t_i)` equal
   ``rate`` (0.01) over the images: :math:`t_i` is the :math:`1 - \text{rate}` quantile;
2. its **local firing rate** :math:`L(i)` is the fraction of transformed inputs :math:`T_k x` on which it
   still fires, over the images :math:`x` that make it fire and the transformations of a trajectory
   (translations and rotations around :math:`x`);
3. its score is :math:`L(i) / G(i)`; a layer's **invariance score** is the mean over its top 20%
   units (``top``). A unit that ignores the transformations scores :math:`1 / \text{rate} = 100`.

Translations are circular shifts by whole pixels (exact, no interpolation); rotations resample
bilinearly about the image centre with reflected borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invertnet._checks import require_4d
from invertnet.capture.graph import layer_values

__all__ = ["InvarianceScore", "invariance_score", "rotations", "translations"]


def translations(images: torch.Tensor, shifts: Sequence[int] = (-4, -2, 2, 4)) -> torch.Tensor:
    """Circular shifts of ``images`` by each of ``shifts`` pixels along H and along W: ``(T, N, C, H, W)``."""
    moved = [torch.roll(images, s, dims=dim) for s in shifts for dim in (-2, -1)]
    return torch.stack(moved)


def rotations(images: torch.Tensor, degrees: Sequence[float] = (-10, -5, 5, 10)) -> torch.Tensor:
    """Rotations of ``images`` about their centre by each of ``degrees``: ``(T, N, C, H, W)``."""
    turned = []
    for angle in degrees:
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=images.dtype, device=images.device)
        grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
        turned.append(F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False))
    return torch.stack(turned)


@dataclass(frozen=True)
class InvarianceScore:
    """A layer's invariance score and its per-unit parts (units = channels at the centre).

    ``score`` is the mean of ``unit_scores`` over the top ``top`` fraction of units; ``unit_scores``
    is NaN for units that never fired.
    """

    layer: str
    score: float
    unit_scores: torch.Tensor
    local_rate: torch.Tensor
    thresholds: torch.Tensor
    global_rate: float


def _centre(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C)`` at the centre position; 2-D features pass through."""
    if features.ndim == 4:
        return features[:, :, features.shape[2] // 2, features.shape[3] // 2]
    return features.flatten(1)


def invariance_score(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    transforms: Sequence[torch.Tensor] | None = None,
    *,
    rate: float = 0.01,
    top: float = 0.2,
) -> InvarianceScore:
    r"""Goodfellow et al.'s invariance score of ``layer`` over ``images`` ``(N, C, H, W)``.

    ``layer`` is a node, module or container name of any network (:func:`invertnet.capture.graph.capture`).

    Parameters
    ----------
    transforms : sequence of tensors, optional
        Trajectories, each ``(T, N, C, H, W)`` (the transformed versions of every image); default
        :func:`translations` and :func:`rotations` of ``images``.
    rate : float, default 0.01
        Global firing rate the thresholds are set to; needs ``N >= 1 / rate`` images to mean anything.
    top : float, default 0.2
        Fraction of units (the most invariant) the layer's score averages.

    Examples
    --------
    >>> import torch
    >>> pooled = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveMaxPool2d(1))
    >>> s = invariance_score(pooled, torch.rand(300, 1, 12, 12), "1")
    >>> s.score > 50  # a global max ignores circular shifts (and mostly rotations)
    True
    """
    images = require_4d(images, "images")
    if not 0 < rate < 1 or not 0 < top <= 1:
        raise ValueError(f"invariance_score: expected 0 < rate < 1 and 0 < top <= 1, got rate={rate}, top={top}")
    if transforms is None:
        transforms = [translations(images), rotations(images)]
    responses = _centre(layer_values(model, images, [layer])[layer])  # (N, U)
    thresholds = torch.quantile(responses.double(), 1 - rate, dim=0)
    fires = responses.double() > thresholds  # (N, U)
    hits = torch.zeros(responses.shape[1], dtype=torch.float64)
    trials = torch.zeros_like(hits)
    for trajectory in transforms:
        for moved in trajectory:
            fired = _centre(layer_values(model, moved, [layer])[layer]).double() > thresholds
            hits += (fired & fires).sum(dim=0).cpu()
            trials += fires.sum(dim=0).cpu()
    global_rate = float(fires.double().mean())
    local = hits / trials  # NaN where a unit never fired
    scores = local / global_rate
    ranked = scores[~scores.isnan()].sort(descending=True).values
    count = max(1, math.ceil(top * len(ranked))) if len(ranked) else 0
    score = float(ranked[:count].mean()) if count else float("nan")
    return InvarianceScore(layer, score, scores, local, thresholds.cpu(), global_rate)
