"""Side by side: every inversion method from every layer, with quality, misfit and time.

:func:`compare_methods` runs :func:`~invertnet.reconstruction.api.reconstruct` for each (layer, method)
pair on one image, one capture per layer (:class:`~invertnet.evaluation.cells.CellRunner`, as
:func:`~invertnet.evaluation.evaluate.evaluate` does), and returns the table as data (:class:`ComparisonRow`);
:func:`format_comparison` prints it, and :func:`invertnet.plotting.figures.comparison_figure` draws it (rows = methods,
columns = layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from invertnet._checks import require_4d
from invertnet.capture.graph import check_layer
from invertnet.errors import OptionError, ShapeError
from invertnet.evaluation.cells import CellRunner
from invertnet.pinv import SolveOptions
from invertnet.reconstruction.api import RECONSTRUCTION_METHODS
from invertnet.reconstruction.completion import CompletionOptions
from invertnet.reconstruction.joint import JointOptions

__all__ = ["ComparisonRow", "compare_methods", "format_comparison"]


@dataclass(frozen=True)
class ComparisonRow:
    """One (layer, method) cell: the metrics of :class:`~invertnet.reconstruction.api.Reconstruction` and the time.

    ``seconds`` is the wall-clock time of the :func:`~invertnet.reconstruction.api.reconstruct` call and of the
    capture it runs on (one per layer, shared by the methods, counted in each); ``image`` is the reconstruction, ``(1,
    C, H, W)``.
    """

    layer: str
    method: str
    psnr: float
    ssim: float
    relative_error: float
    feature_residual: float
    seconds: float
    image: torch.Tensor


def compare_methods(
    model: nn.Module,
    image: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    *,
    data_range: float = 1.0,
    maxpool: str = "switches",
    options: SolveOptions | None = None,
    joint: JointOptions | None = None,
    completion: CompletionOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ComparisonRow]:
    """Reconstruct ``image`` from each layer with each method; one row per pair, layer-major.

    Parameters
    ----------
    model : nn.Module
        As for :func:`~invertnet.reconstruction.api.reconstruct` (its dtype and device are used).
    image : torch.Tensor
        One image, ``(1, C, H, W)``.
    layers, methods : sequence of str
        Layer names and methods of :data:`~invertnet.reconstruction.api.RECONSTRUCTION_METHODS`; both are
        checked before any work is done.
    data_range : float, default 1.0
        For PSNR and SSIM.
    maxpool, options, joint, completion
        Passed to every :func:`~invertnet.reconstruction.api.reconstruct` call (``joint`` to the ``"joint"`` ones,
        ``completion`` to the ``"auto"`` ones).
    progress : callable, optional
        Called with a line when each (layer, method) starts and ends.

    Returns
    -------
    list of ComparisonRow

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU, compare_methods
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU()).double()
    >>> rows = compare_methods(net, torch.rand(1, 3, 12, 12, dtype=torch.float64), ["1"], ["patch", "lsqr"])
    >>> [(row.method, row.relative_error < 1e-8) for row in rows]
    [('patch', True), ('lsqr', True)]
    """
    image = require_4d(image, "image")
    if image.shape[0] != 1:
        raise ShapeError(
            f"compare_methods: expected one image (1, C, H, W), got a batch of {image.shape[0]}; "
            "compare one image at a time"
        )
    unknown = [m for m in methods if m not in RECONSTRUCTION_METHODS]
    if unknown or not methods:
        raise OptionError(
            f"compare_methods: expected methods among {list(RECONSTRUCTION_METHODS)}, got {list(methods)}"
        )
    if not layers:
        raise OptionError("compare_methods: expected at least one layer, got none; name layers such as 'conv1'")
    for layer in layers:
        check_layer(model, layer)
    runner = CellRunner(
        model, maxpool=maxpool, data_range=data_range, options=options, joint=joint, completion=completion
    )
    rows = []
    for layer in layers:
        for method in methods:
            if progress is not None:
                progress(f"{layer} {method}: started")
            result, seconds = runner.run(image, layer, method)
            if progress is not None:
                progress(f"{layer} {method}: PSNR {float(result.psnr[0]):.2f} dB in {seconds:.1f} s")
            rows.append(
                ComparisonRow(
                    layer,
                    method,
                    float(result.psnr[0]),
                    float(result.ssim[0]),
                    float(result.relative_error[0]),
                    float(result.feature_residual[0]),
                    seconds,
                    result.image.detach(),
                )
            )
    return rows


def format_comparison(rows: Sequence[ComparisonRow]) -> str:
    """The table as text: layer, method, PSNR, SSIM, relative error, feature residual, seconds."""
    lines = [f"{'layer':<10} {'method':<7} {'PSNR dB':>8} {'SSIM':>7} {'rel. err.':>10} {'feat. res.':>10} {'s':>8}"]
    lines += [
        f"{r.layer:<10} {r.method:<7} {r.psnr:>8.2f} {r.ssim:>7.4f} {r.relative_error:>10.3g} "
        f"{r.feature_residual:>10.3g} {r.seconds:>8.2f}"
        for r in rows
    ]
    return "\n".join(lines)
