r"""A 2-D convolution as a linear operator.

For a bias-free convolution with weight :math:`W` of shape ``(C_out, C_in/g, kh, kw)``,

.. math::

    A = P \, S,

where :math:`S` (im2col) pads the input and extracts every receptive field as a column of
length ``C_in * kh * kw`` (channel-major, as :func:`torch.nn.functional.unfold`), and
:math:`P = \mathrm{blockdiag}(P_1, \dots, P_g)` applies each group's patch matrix
:math:`P_k` (``C_out/g x C_in/g*kh*kw``, the group's filters as rows) to every column.

- forward: :math:`A x` (``F.conv2d``; the bias is *not* added: subtract it from responses first);
- adjoint: :math:`A^T y` (``F.conv_transpose2d`` with the ``output_padding`` that restores the
  input size, then the adjoint of the padding), verified by :func:`~invertnet.operators.dottest`;
- :math:`S` and :math:`S^T` (``patches`` / ``patches_adjoint``): :math:`S` is a selection, so
  :math:`S^T S = \mathrm{diag}(c)` with :math:`c` the number of receptive fields covering each
  input pixel (``coverage``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from invertnet._checks import pair
from invertnet.errors import ArgumentTypeError, OptionError, ShapeError
from invertnet.operators.base import DENSE_MAX_ENTRIES, LinearOperator, check_dense_size
from invertnet.operators.padding import PADDING_MODES, Padding

__all__ = ["ConvOperator", "GramRows"]


class ConvOperator(LinearOperator):
    """The linear part of a 2-D convolution on inputs of a fixed size.

    Parameters
    ----------
    weight : torch.Tensor
        Filters, shape ``(C_out, C_in // groups, kh, kw)``. The operator computes in the dtype
        and on the device of its input; the weight is cast to them.
    input_size : (int, int)
        Height and width of the input.
    stride, dilation : int or (int, int)
    padding : int, (int, int) or (left, right, top, bottom)
        As in ``nn.Conv2d`` (an int or a pair pads symmetrically); a 4-tuple is in
        :func:`torch.nn.functional.pad` order.
    groups : int
    padding_mode : {"zeros", "circular", "reflect", "replicate"}

    Examples
    --------
    >>> import torch
    >>> from invertnet.operators import ConvOperator
    >>> conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    >>> op = ConvOperator.from_conv(conv, (32, 32))
    >>> op.out_shape
    (8, 16, 16)
    """

    def __init__(
        self,
        weight: torch.Tensor,
        input_size: tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ShapeError(f"ConvOperator: expected a weight of shape (C_out, C_in/groups, kh, kw), got {got}")
        if padding_mode not in PADDING_MODES:
            raise OptionError(f"ConvOperator: expected padding_mode in {PADDING_MODES}, got {padding_mode!r}")
        if isinstance(cast(object, padding), str):  # nn.Conv2d's "same"/"valid": only from_conv resolves them
            raise OptionError(
                f"ConvOperator: expected padding as numbers, got {padding!r}; for an nn.Conv2d with padding="
                f"{padding!r} use ConvOperator.from_conv(conv, input_size), which reads the resolved padding"
            )
        c_out, c_in_group, kh, kw = weight.shape
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise OptionError(f"ConvOperator: expected groups >= 1, got {groups!r}")
        if c_out % groups:
            raise ShapeError(f"ConvOperator: {c_out} filters do not split into groups={groups}")
        h, w = pair(input_size, "input_size")
        self.weight = weight.detach()
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        for name, value in (("stride", self.stride), ("dilation", self.dilation)):
            if min(value) < 1:
                raise OptionError(f"ConvOperator: expected {name} >= 1 along both axes, got {value}")
        self.groups = groups
        self.kernel_size = (kh, kw)
        pads: tuple[int, int, int, int]
        if isinstance(padding, int) or len(padding) <= 2:
            ph, pw = pair(padding, "padding")
            pads = (pw, pw, ph, ph)
        elif len(padding) == 4:
            left, right, top, bottom = (int(p) for p in padding)
            pads = (left, right, top, bottom)
        else:
            raise ShapeError(
                f"ConvOperator: expected padding as an int, (h, w) or (left, right, top, bottom), got {padding}"
            )
        self.pad = Padding(pads, padding_mode, (h, w))
        hp, wp = self.pad.output_size
        ho = (hp - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (wp - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            raise ShapeError(
                f"ConvOperator: input {h}x{w} (padded {hp}x{wp}) is smaller than the dilated kernel "
                f"{self.dilation[0] * (kh - 1) + 1}x{self.dilation[1] * (kw - 1) + 1}; use a larger input"
            )
        self.input_size = (h, w)
        self.in_shape = (c_in_group * groups, h, w)
        self.out_shape = (c_out, ho, wo)
        # zero padding with equal sides runs inside conv2d / conv_transpose2d; other cases pad explicitly
        left, right, top, bottom = pads
        self._native_padding = (top, left) if padding_mode == "zeros" and left == right and top == bottom else None
        target = (h, w) if self._native_padding is not None else (hp, wp)
        native = self._native_padding or (0, 0)
        self._output_padding = tuple(
            target[i]
            - (
                (self.out_shape[1 + i] - 1) * self.stride[i]
                - 2 * native[i]
                + self.dilation[i] * (self.kernel_size[i] - 1)
                + 1
            )
            for i in range(2)
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, input_size: tuple[int, int]) -> ConvOperator:
        """The operator of an ``nn.Conv2d`` (its bias is left out) on inputs of ``input_size``."""
        if not isinstance(conv, nn.Conv2d):
            raise ArgumentTypeError(
                f"ConvOperator.from_conv: expected an nn.Conv2d, got {type(conv).__name__}; "
                "only 2-D convolutions are supported"
            )
        return cls(
            conv.weight,
            input_size,
            stride=pair(conv.stride, "stride"),
            padding=tuple(conv._reversed_padding_repeated_twice),
            dilation=pair(conv.dilation, "dilation"),
            groups=conv.groups,
            padding_mode=conv.padding_mode,
        )

    @classmethod
    def from_pool(
        cls, pool: nn.MaxPool2d | nn.AvgPool2d, channels: int, input_size: tuple[int, int], like: torch.Tensor
    ) -> ConvOperator:
        """A pooling layer's windows as a depthwise convolution with weights ``1 / (kh kw)`` and zero padding.

        For ``AvgPool2d`` (plain average, ``count_include_pad=True``) this *is* the layer; for
        ``MaxPool2d`` it is the averaging over the same windows.
        """
        if not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
            raise ArgumentTypeError(
                f"ConvOperator.from_pool: expected an nn.MaxPool2d or nn.AvgPool2d, got {type(pool).__name__}; "
                "for a convolution use ConvOperator.from_conv(conv, input_size)"
            )
        kh, kw = pair(pool.kernel_size, "kernel_size")
        weight = torch.full((channels, 1, kh, kw), 1.0 / (kh * kw), dtype=like.dtype, device=like.device)
        stride = pair(pool.stride or pool.kernel_size, "stride")
        dilation = pair(pool.dilation, "dilation") if isinstance(pool, nn.MaxPool2d) else (1, 1)
        return cls(weight, input_size, stride, pair(pool.padding, "padding"), dilation, channels)

    def __repr__(self) -> str:
        return (
            f"ConvOperator(in_shape={self.in_shape}, out_shape={self.out_shape}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, pads={self.pad.pads}, dilation={self.dilation}, groups={self.groups}, "
            f"padding_mode={self.pad.mode!r})"
        )

    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        return self.weight.to(device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x, self.in_shape, "forward")
        if self._native_padding is not None:
            return F.conv2d(x, self._weight(x), None, self.stride, self._native_padding, self.dilation, self.groups)
        return F.conv2d(self.pad(x), self._weight(x), None, self.stride, 0, self.dilation, self.groups)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, self.out_shape, "adjoint")
        u = F.conv_transpose2d(
            y,
            self._weight(y),
            None,
            self.stride,
            self._native_padding or 0,
            self._output_padding,
            self.groups,
            self.dilation,
        )
        return u if self._native_padding is not None else self.pad.adjoint(u)

    # --- the factorisation A = P S --------------------------------------------------------
    @property
    def patch_size(self) -> int:
        """Entries of one receptive field of one group, ``C_in/g * kh * kw``."""
        return self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]

    def patch_matrices(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The groups' patch matrices :math:`P_k`, shape ``(groups, C_out/g, C_in/g*kh*kw)``."""
        w = self.weight if like is None else self._weight(like)
        return w.reshape(self.groups, w.shape[0] // self.groups, self.patch_size)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`S x`: every receptive field as a column, shape ``(N, C_in*kh*kw, L)``."""
        x = self._check(x, self.in_shape, "patches")
        return F.unfold(self.pad(x), self.kernel_size, self.dilation, 0, self.stride)

    def patches_adjoint(self, p: torch.Tensor) -> torch.Tensor:
        """:math:`S^T p`: add every column back where it was taken from (col2im, then the padding's adjoint)."""
        return self.pad.adjoint(F.fold(p, self.pad.output_size, self.kernel_size, self.dilation, 0, self.stride))

    def placed_matrix(
        self,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        max_entries: int = DENSE_MAX_ENTRIES,
    ) -> torch.Tensor:
        r"""The matrix of the operator, ``(out_dim, in_dim)``, placed from the patch matrices (:math:`P S` by entries).

        Row :math:`(o, l)` (output channel, output position) holds the patch row :math:`P_o` at the input
        pixels receptive field :math:`l` reads: :math:`S` of an image of pixel numbers gives them, through
        any padding (a zero-padded entry reads nothing; a reflected or wrapped one reads its source, and
        entries that read the same pixel add up). The same matrix as :meth:`to_dense` without one
        convolution per column: a scatter of ``out_dim * kh * kw * C_in / g`` entries.

        Examples
        --------
        >>> import torch
        >>> op = ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (6, 5), padding=1, padding_mode="reflect")
        >>> bool(torch.allclose(op.placed_matrix(), op.to_dense()))
        True
        """
        m, n = self.out_dim, self.in_dim
        check_dense_size(m, n, dtype, max_entries, "placed_matrix")
        numbers = torch.arange(1, n + 1, dtype=torch.float64, device=device).reshape(1, *self.in_shape)
        sources = self.patches(numbers)[0].round().long()  # (C_in*kh*kw, L): pixel number, 0 for a zero pad
        patches = self.patch_matrices(torch.zeros((), dtype=dtype, device=device))  # (groups, C_out/g, entries)
        groups, per_group, entries = patches.shape
        length = sources.shape[1]
        sources = sources.reshape(groups, entries, length).transpose(1, 2)
        shape = (groups, per_group, length, entries)
        matrix = torch.zeros(groups, per_group, length, n + 1, dtype=dtype, device=device)  # column 0: zero pads
        matrix.scatter_add_(3, sources.unsqueeze(1).expand(shape), patches.unsqueeze(2).expand(shape))
        return matrix[..., 1:].reshape(m, n)

    def gram_matrix(
        self,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        max_entries: int = DENSE_MAX_ENTRIES,
        channels_last: bool = False,
    ) -> torch.Tensor:
        r"""The Gram matrix :math:`A^T A`, ``(in_dim, in_dim)``, from the filters' products (zero padding only).

        With :math:`K_{(a, b), (a', b')} = W_{ab}^T W_{a'b'}` the products of the filter taps (per group) and
        :math:`R_{a a'}(r, r')` the number of output rows :math:`i` whose taps :math:`a, a'` read pixel rows
        :math:`r, r'` (:math:`r = i s_h - p_h + a d_h`), :math:`C_{b b'}(s, s')` the same for columns,

        .. math::

            (A^T A)_{(r, s), (r', s')} = \sum_{a, a'} R_{a a'}(r, r') \sum_{b, b'} C_{b b'}(s, s')
            K_{(a, b), (a', b')},

        summed one axis at a time: :math:`O(k_w^2 w)` then :math:`O(k_h^2 h)` block additions of
        :math:`k_h^2 (w C)^2` and :math:`(w C)^2` entries, instead of one addition of all of :math:`K` per
        output position.

        Parameters
        ----------
        dtype, device
        max_entries : int
            Refuse above this many entries, for the matrix or the intermediate of the column sums.
        channels_last : bool, default False
            Order the unknowns ``(H, W, C)``: :math:`P A^T A P^T` for that permutation :math:`P`, with the same
            eigenvalues, and without a strided copy of the whole matrix (the summation's natural layout).

        Raises
        ------
        OptionError
            For padding other than zeros (a reflected or wrapped tap reads a pixel twice); use
            ``placed_matrix`` and its product.
        TooLargeError
            Above ``max_entries`` entries.

        Examples
        --------
        >>> import torch
        >>> op = ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (6, 5), stride=2, padding=1)
        >>> a = op.placed_matrix()
        >>> bool(torch.allclose(op.gram_matrix(), a.T @ a))
        True
        """
        n = self.in_dim
        c, h, w = self.in_shape
        check_dense_size(n, n, dtype, max_entries, "gram_matrix")
        rows = self.gram_rows(dtype, device, max_entries)
        gram = rows.column_sums.new_zeros(h, w * c, h, w * c)
        for (r, r2), terms in rows.pairs.items():
            gram[r, :, r2, :] = rows.combine(terms)
        if channels_last:
            return gram.reshape(n, n)
        return gram.reshape(h, w, c, h, w, c).permute(2, 0, 1, 5, 3, 4).reshape(n, n)

    def gram_rows(
        self,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        max_entries: int = DENSE_MAX_ENTRIES,
    ) -> GramRows:
        r"""The Gram matrix :math:`A^T A` by blocks of image rows, unknowns ``(H, W, C)`` (zero padding only).

        Block :math:`(r, r')` (``(W C, W C)``) is :math:`\sum_{a, a'} R_{a a'}(r, r') \, \mathrm{CS}_{a a'}` with
        :math:`\mathrm{CS}` the column sums of :meth:`gram_matrix`; it is zero when :math:`|r - r'|` exceeds the
        filters' reach :math:`d_h (k_h - 1)`, so :math:`A^T A` is block banded and a banded factorisation needs
        only :math:`O(k_h)` blocks at a time (:func:`~invertnet.pinv.proofs.banded.banded_proof`).

        Raises
        ------
        OptionError
            For padding other than zeros.
        TooLargeError
            When the column sums (``kh^2 (W C)^2`` entries) exceed ``max_entries``.

        Examples
        --------
        >>> import torch
        >>> op = ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (6, 5), padding=1)
        >>> rows = op.gram_rows()
        >>> rows.reach, rows.block(3, 1).shape
        (2, torch.Size([10, 10]))
        """
        if self.pad.mode != "zeros":
            raise OptionError(
                f"gram_matrix: expected zero padding, got padding_mode={self.pad.mode!r}; "
                "use placed_matrix() and its product A^T A"
            )
        c, h, w = self.in_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        left, _, top, _ = self.pad.pads
        check_dense_size(kh * kh, (w * c) ** 2, dtype, max_entries, "gram_matrix's column sums")
        per_group = c // self.groups
        # K as (b, b', a, a', c, c'); the channel blocks of different groups are 0
        products = torch.zeros(kh, kw, c, kh, kw, c, dtype=dtype, device=device)
        for g, patch in enumerate(self.patch_matrices(torch.zeros((), dtype=dtype, device=device))):
            taps = patch.reshape(-1, per_group, kh, kw).permute(2, 3, 1, 0).reshape(kh * kw * per_group, -1)
            group = slice(g * per_group, (g + 1) * per_group)
            block = (taps @ taps.T).reshape(kh, kw, per_group, kh, kw, per_group)
            products[:, :, group, :, :, group] = block
        products = products.permute(1, 4, 0, 3, 2, 5).contiguous()
        cols = _tap_pairs(w, kw, sw, dw, left, self.out_shape[2])
        column_sums = products.new_zeros(kh, kh, w, c, w, c)  # sum over b, b' for every column pair (s, s')
        for (b, b2, s, s2), count in cols.items():
            column_sums[:, :, s, :, s2, :] += count * products[b, b2]
        pairs: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for (a, a2, r, r2), count in _tap_pairs(h, kh, sh, dh, top, self.out_shape[1]).items():
            pairs.setdefault((r, r2), []).append((a, a2, count))
        return GramRows(column_sums.reshape(kh, kh, w * c, w * c), pairs, h)

    def coverage(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """How many receptive fields read each input pixel, shape ``(H, W)`` (the diagonal of :math:`S^T S`)."""
        one = ConvOperator(
            torch.ones(1, 1, *self.kernel_size, dtype=dtype, device=device),
            self.input_size,
            self.stride,
            self.pad.pads,
            self.dilation,
            1,
            self.pad.mode,
        )
        ones = torch.ones(
            1,
            self.kernel_size[0] * self.kernel_size[1],
            one.out_shape[1] * one.out_shape[2],
            dtype=dtype,
            device=device,
        )
        return one.patches_adjoint(ones)[0, 0]

    def apply_patch_matrices(self, p: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """Apply one ``(m, k)`` matrix per group to the columns ``p``: ``(N, g*k, L) -> (N, g*m, L)``."""
        n, _, length = p.shape
        g, m, k = matrices.shape
        return torch.matmul(matrices.unsqueeze(0), p.reshape(n, g, k, length)).reshape(n, g * m, length)


@dataclass(frozen=True)
class GramRows:
    r""":math:`A^T A` of a zero-padded convolution by blocks of image rows (:meth:`ConvOperator.gram_rows`).

    Attributes
    ----------
    column_sums : torch.Tensor
        ``(kh, kh, W C, W C)``: for taps :math:`(a, a')`, the block two image rows share through them.
    pairs : dict
        ``(r, r') -> [(a, a', count), ...]``: how many outputs read rows :math:`r, r'` with taps :math:`a, a'`.
    height : int
        Image rows :math:`H`: the number of blocks a side.
    """

    column_sums: torch.Tensor
    pairs: dict[tuple[int, int], list[tuple[int, int, int]]]
    height: int

    @property
    def reach(self) -> int:
        """The largest :math:`|r - r'|` of a nonzero block: the block bandwidth."""
        return max((abs(r - r2) for r, r2 in self.pairs), default=0)

    @property
    def size(self) -> int:
        """Unknowns per image row, :math:`W C`."""
        return int(self.column_sums.shape[-1])

    def combine(self, terms: list[tuple[int, int, int]]) -> torch.Tensor:
        """The sum of ``count * column_sums[a, a']`` over ``terms``."""
        (a, a2, count), *rest = terms
        out = count * self.column_sums[a, a2]
        for a, a2, count in rest:
            out += count * self.column_sums[a, a2]
        return out

    def block(self, r: int, r2: int) -> torch.Tensor:
        """Block :math:`(r, r')` of :math:`A^T A`, ``(W C, W C)`` (zeros outside the band)."""
        terms = self.pairs.get((r, r2))
        if terms is None:
            return self.column_sums.new_zeros(self.size, self.size)
        return self.combine(terms)


def _tap_pairs(size: int, taps: int, stride: int, dilation: int, pad: int, outputs: int) -> dict[tuple[int, ...], int]:
    """Along one axis: how many outputs read pixels ``(r, r')`` with taps ``(a, a')``, keyed ``(a, a', r, r')``.

    Output ``i``'s tap ``a`` reads pixel ``i * stride - pad + a * dilation``; taps in the padding are left out.
    """
    counts: dict[tuple[int, ...], int] = {}
    for i in range(outputs):
        read = [(a, i * stride - pad + a * dilation) for a in range(taps)]
        inside = [(a, r) for a, r in read if 0 <= r < size]
        for (a, r), (a2, r2) in itertools.product(inside, inside):
            counts[a, a2, r, r2] = counts.get((a, a2, r, r2), 0) + 1
    return counts
