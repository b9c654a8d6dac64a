"""Small input checks shared by the modules (private)."""

from __future__ import annotations

import torch

from invertnet.errors import ShapeError


def require_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor, else raise a ``TypeError`` saying what came."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(...)")
    return x


def require_4d(x: object, name: str) -> torch.Tensor:
    """Check that ``x`` is a batched image-like tensor of shape (N, C, H, W)."""
    x = require_tensor(x, name)
    if x.ndim != 4:
        hint = "add a batch axis with x.unsqueeze(0)" if x.ndim == 3 else "reshape it to (N, C, H, W)"
        raise ShapeError(f"{name}: expected a tensor of shape (N, C, H, W), got {tuple(x.shape)}; {hint}")
    return x


def pair(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    """Normalise an int or a 2-tuple (as ``nn.Conv2d`` accepts) into a pair of ints."""
    if isinstance(value, int):
        return (value, value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    if len(value) != 2:
        raise ShapeError(f"{name}: expected an int or a pair (h, w), got {value!r}")
    return (int(value[0]), int(value[1]))


def consistency_tol(dtype: torch.dtype) -> float:
    r"""The relative residual at which an estimate reproduces its target to rounding.

    :math:`10^{-10}` in float64 and :math:`10^{-4}` in float32: about :math:`10^6` unit roundoffs, room for the
    conditioning of the layers in between.
    """
    return 1e-10 if dtype == torch.float64 else 1e-4
