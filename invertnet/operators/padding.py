r"""Padding as a linear operator, and its adjoint.

Every padding mode torch offers is a gather: the padded image is :math:`x[\pi]` for an index
map :math:`\pi` (zero padding gathers from an implicit zero). The adjoint scatters back and
adds: :math:`(\Pi^T u)_j = \sum_{i: \pi(i) = j} u_i`. For zero padding that is a crop; for
circular, reflect and replicate padding the border values fold back onto the pixels they
copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from invertnet._checks import require_tensor
from invertnet.errors import OptionError, ShapeError

__all__ = ["PADDING_MODES", "Padding"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


class Padding:
    """Pad (N, C, H, W) batches by ``pads = (left, right, top, bottom)`` in one of ``PADDING_MODES``.

    Examples
    --------
    >>> import torch
    >>> pad = Padding((1, 1, 1, 1), "circular", (3, 3))
    >>> pad(torch.ones(1, 1, 3, 3)).shape
    torch.Size([1, 1, 5, 5])
    """

    def __init__(self, pads: tuple[int, int, int, int], mode: str, input_size: tuple[int, int]) -> None:
        if mode not in PADDING_MODES:
            raise OptionError(f"Padding: expected a mode in {PADDING_MODES}, got {mode!r}")
        if len(pads) != 4:
            raise ShapeError(f"Padding: expected pads (left, right, top, bottom), got {pads!r}")
        left, right, top, bottom = pads
        h, w = input_size
        if min(pads) < 0:
            raise ShapeError(f"Padding: expected non-negative padding, got {pads}")
        if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
            raise ShapeError(
                f"Padding: reflect padding {pads} (left, right, top, bottom) needs every pad smaller than the "
                f"input size {input_size}; use a larger input or another padding mode"
            )
        if mode == "circular" and (max(top, bottom) > h or max(left, right) > w):
            raise ShapeError(f"Padding: circular padding {pads} needs every pad at most the input size {input_size}")
        self.pads = pads
        self.mode = mode
        self.input_size = (h, w)
        self.output_size = (h + top + bottom, w + left + right)
        self._index: dict[torch.device, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"Padding(pads={self.pads}, mode={self.mode!r}, input_size={self.input_size})"

    @property
    def is_identity(self) -> bool:
        return not any(self.pads)

    def index(self, device: torch.device) -> torch.Tensor:
        """Flat source index of every padded pixel (non-zero modes only), cached per device."""
        if device not in self._index:
            h, w = self.input_size
            grid = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
            self._index[device] = F.pad(grid, self.pads, mode=self.mode).round().long().flatten().to(device)
        return self._index[device]

    def _check(self, x: object, size: tuple[int, int], what: str) -> torch.Tensor:
        x = require_tensor(x, f"Padding.{what}")
        if x.ndim != 4 or tuple(x.shape[-2:]) != size:
            raise ShapeError(
                f"Padding.{what}: expected shape (N, C, {size[0]}, {size[1]}), got {tuple(x.shape)}; "
                "build the padding for this input size"
            )
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x, self.input_size, "__call__")
        if self.is_identity:
            return x
        if self.mode == "zeros":
            return F.pad(x, self.pads)
        n, c = x.shape[:2]
        return x.flatten(2)[..., self.index(x.device)].reshape(n, c, *self.output_size)

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        """Scatter-add the padded image back onto the input grid (a crop for zero padding)."""
        u = self._check(u, self.output_size, "adjoint")
        if self.is_identity:
            return u
        left, right, top, bottom = self.pads
        if self.mode == "zeros":
            hp, wp = self.output_size
            return u[..., top : hp - bottom, left : wp - right]
        n, c = u.shape[:2]
        h, w = self.input_size
        out = u.new_zeros(n, c, h * w)
        out.index_add_(2, self.index(u.device), u.flatten(2))
        return out.reshape(n, c, h, w)
