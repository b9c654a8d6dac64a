r"""Figures for papers (matplotlib, no global pyplot state).

- :func:`reconstruction_figure`: input | reconstruction | error map, metrics in the titles.
- :func:`layer_row_figure`: the paper's Fig. 5 row: the input, then the reconstruction from each
  layer, with PSNR / SSIM / relative error under each panel.
- :func:`comparison_figure`: rows = methods, columns = layers, metrics under each panel.
- :func:`pairing_figure`: per layer, the histogram of the pairing cosines :math:`\mu_i` against
  Gaussian random filters of the same shape (the paper's Figs. 2-3).
- :func:`spectrum_figure`: singular values of every layer of an injectivity report.
- :func:`evaluation_figure`: mean PSNR against depth per method, with 95% intervals, over a dataset.
- :func:`save_figure`: write a figure atomically (PNG, PDF, SVG, ... by the suffix);
  :func:`check_figure_path` refuses a suffix matplotlib cannot write, before any work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from invertnet.analysis.information import LayerInformation
from invertnet.analysis.injectivity import LayerSpectrum
from invertnet.analysis.pairing import Pairing, random_mu_cdf, random_pairing
from invertnet.evaluation.compare import ComparisonRow
from invertnet.evaluation.evaluate import SummaryRow
from invertnet.io.files import atomic_write, check_suffix
from invertnet.reconstruction.api import Reconstruction

__all__ = [
    "FIGURE_SUFFIXES",
    "check_figure_path",
    "comparison_figure",
    "evaluation_figure",
    "information_figure",
    "layer_row_figure",
    "pairing_figure",
    "reconstruction_figure",
    "save_figure",
    "spectrum_figure",
]


#: The extensions matplotlib can save a figure as (png, pdf, svg, jpg, tif, eps, ...).
FIGURE_SUFFIXES = tuple(sorted(f".{kind}" for kind in Figure().canvas.get_supported_filetypes()))


def check_figure_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if matplotlib can save a figure under its extension; raise :class:`OutputPathError` otherwise."""
    return check_suffix(path, FIGURE_SUFFIXES, "a figure file name")


def _display(image: torch.Tensor) -> npt.NDArray[np.float64]:
    """First image of a batch as an (H, W, 3) or (H, W) array, clipped to [0, 1] for display."""
    array: npt.NDArray[np.float64] = image[0].detach().cpu().double().clamp(0, 1).numpy().transpose(1, 2, 0)
    return array[..., 0] if array.shape[-1] == 1 else array


def _provenance(result: Reconstruction) -> str:
    """In a few words: exact (proven), completed (and how consistent), or layer by layer."""
    if result.exact:
        return "exact (proven)"
    residual = f"feat. res. {float(result.feature_residual[0]):.1g}"
    if result.completion is not None:
        if result.determined is not None:
            share = float(result.determined.expand_as(result.image[:1]).double().mean())
            return f"{share:.0%} determined, rest completed; {residual}"
        return f"completed; {residual}"
    return residual


def _metrics_line(result: Reconstruction) -> str:
    return (
        f"PSNR {float(result.psnr[0]):.2f} dB\nSSIM {float(result.ssim[0]):.3f}\n"
        f"rel. err. {float(result.relative_error[0]):.3g}\n{_provenance(result)}"
    )


def _outline_undetermined(ax: Axes, result: Reconstruction) -> None:
    """Outline the pixels the features do not determine (filled by the prior), when a proof gives them."""
    if result.determined is None:
        return
    free = ~result.determined.expand_as(result.image[:1])[0].all(dim=0)
    if bool(free.any()):
        ax.contour(free.cpu().numpy().astype(float), levels=[0.5], colors="#00c8ff", linewidths=0.8)


def reconstruction_figure(result: Reconstruction) -> Figure:
    """Input, reconstruction and per-pixel absolute error (mean over channels) of the first image."""
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    error = (result.image[0] - result.input[0]).abs().mean(dim=0).detach().cpu().numpy()
    axes[0].imshow(_display(result.input), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input")
    axes[1].imshow(_display(result.image), cmap="gray", vmin=0, vmax=1)
    _outline_undetermined(axes[1], result)
    axes[1].set_title(f"from {result.layer} ({result.method})")
    shown = axes[2].imshow(error, cmap="magma")
    axes[2].set_title("|error|, mean over channels")
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    axes[1].set_xlabel(_metrics_line(result).replace("\n", "   "))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def layer_row_figure(results: Sequence[Reconstruction]) -> Figure:
    """The input followed by the reconstruction from each layer, metrics under each panel."""
    if not results:
        raise ValueError("layer_row_figure: expected at least one reconstruction, got none")
    fig = Figure(figsize=(2.6 * (len(results) + 1), 3.6), layout="constrained")
    axes = fig.subplots(1, len(results) + 1)
    axes[0].imshow(_display(results[0].input), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input")
    for ax, result in zip(axes[1:], results, strict=True):
        ax.imshow(_display(result.image), cmap="gray", vmin=0, vmax=1)
        _outline_undetermined(ax, result)
        ax.set_title(result.layer)
        ax.set_xlabel(_metrics_line(result), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def comparison_figure(rows: Sequence[ComparisonRow], original: torch.Tensor | None = None) -> Figure:
    """A grid of reconstructions, one row per method and one column per layer, metrics under each.

    ``original``, when given, is shown in an extra first column of the first row.
    """
    if not rows:
        raise ValueError("comparison_figure: expected at least one row of compare_methods, got none")
    layers = list(dict.fromkeys(r.layer for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    extra = original is not None
    fig = Figure(figsize=(2.4 * (len(layers) + extra), 2.9 * len(methods)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(methods), len(layers) + extra, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if original is not None:
        axes[0, 0].imshow(_display(original), cmap="gray", vmin=0, vmax=1)
        axes[0, 0].set_title("input")
        for ax in axes[1:, 0]:
            ax.set_axis_off()
    for r in rows:
        ax = axes[methods.index(r.method), layers.index(r.layer) + extra]
        ax.imshow(_display(r.image), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{r.layer}, {r.method}", fontsize=9)
        ax.set_xlabel(
            f"{r.psnr:.2f} dB, SSIM {r.ssim:.3f}\nfeat. res. {r.feature_residual:.2g}, {r.seconds:.1f} s", fontsize=8
        )
    return fig


def pairing_figure(pairings: Mapping[str, Pairing], labels: Sequence[str] | None = None, seed: int = 0) -> Figure:
    r"""One panel per layer: the histogram of :math:`\mu_i` against random filters.

    Random filters: Gaussian of the same shape, drawn from ``seed`` (a step outline), and their
    exact density (dashed). ``labels`` replace the layer names in the panel titles.
    """
    if not pairings:
        raise ValueError("pairing_figure: expected at least one layer's pairing, got none")
    names = list(pairings)
    titles = list(labels) if labels is not None else names
    fig = Figure(figsize=(3.2 * len(names), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=False, squeeze=False)[0])
    bins = np.linspace(-1, 1, 41)
    grid = np.linspace(-1, 1, 801)
    for ax, name, title in zip(axes, names, titles, strict=True):
        result = pairings[name]
        n, dim = result.shape[0], int(np.prod(result.shape[1:]))
        ax.hist(result.mu.cpu().numpy(), bins=bins, density=True, color="tab:blue", alpha=0.7, label="filters")
        reference = random_pairing(result.shape, seed).mu.numpy()
        ax.hist(reference, bins=bins, density=True, histtype="step", color="black", label="random")
        density = np.gradient(random_mu_cdf(grid, dim, n), grid)
        ax.plot(grid, density, "--", color="gray", linewidth=1, label="random, exact")
        ax.set_title(f"{title} ({n} x {dim})", fontsize=9)
        ax.set_xlabel(r"$\mu_i$ (cosine with the pairing filter)")
        ax.set_xlim(-1, 1)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    return fig


def information_figure(rows: Sequence[LayerInformation], title: str = "") -> Figure:
    """What each ReLU layer keeps: PSNR of the three readings by layer, and the active and determined shares."""
    if not rows:
        raise ValueError("information_figure: expected at least one row of layer_information, got none")
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    depth = np.arange(len(rows))
    names = [r.layer for r in rows]
    for attribute, label, style in (
        ("psnr_active_set", "ReLU, active set", "o-"),
        ("psnr_identity", "ReLU, identity (paper's baseline)", "s--"),
        ("psnr_twin", "CReLU twin (half filters)", "^-"),
    ):
        values = np.array([getattr(r, attribute) for r in rows], dtype=float)
        if np.isfinite(values).any():
            left.plot(depth, values, style, label=label)
    left.set_xticks(depth, names)
    left.set_ylabel("PSNR (dB)")
    left.set_title("reconstruction from each layer", fontsize=10)
    left.legend(fontsize=8)
    width = 0.38
    right.bar(depth - width / 2, [r.active_share for r in rows], width, label="active share (equations)")
    right.bar(depth + width / 2, [r.determined / r.images for r in rows], width, label="images determined")
    right.set_xticks(depth, names)
    right.set_ylim(0, 1)
    right.set_title("what the active set says", fontsize=10)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 150) -> None:
    """Save ``fig`` to ``path`` without ever leaving a half-written file (see :func:`check_figure_path`)."""
    check_figure_path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def spectrum_figure(report: Sequence[LayerSpectrum]) -> Figure:
    r"""Singular values per layer, normalised by each layer's largest, against the normalised index.

    Exact spectra (DFT, dense) are solid; circulant approximations of other layers are dashed, with the
    estimated :math:`\sigma_{\min}` marked as a dot and the proven lower bound as a triangle below it.
    """
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for spectrum in report:
        if spectrum.singular_values is None:
            continue
        values = spectrum.singular_values.double().cpu().numpy()
        values = values / values[0]
        index = np.linspace(0, 1, len(values))
        (line,) = ax.semilogy(
            index,
            np.maximum(values, 1e-17),
            "-" if spectrum.computed_exactly else "--",
            label=f"{spectrum.name} ({spectrum.verdict.split(' (')[0]})",
        )
        if not spectrum.computed_exactly and spectrum.sigma_min > 0:
            ax.plot(1.0, spectrum.sigma_min / spectrum.sigma_max, "o", color=line.get_color())
        if spectrum.sigma_min_lower > 0:
            ax.plot(1.0, spectrum.sigma_min_lower / spectrum.sigma_max, "v", color=line.get_color())
    ax.set_xlabel("singular value index / count")
    ax.set_ylabel(r"$\sigma_i / \sigma_{\max}$")
    ax.set_title(
        "singular values per layer (dashed: circulant approximation; dot: estimated $\\sigma_{\\min}$; "
        "triangle: proven lower bound)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    return fig


def evaluation_figure(summary: Sequence[SummaryRow]) -> Figure:
    """Mean PSNR against depth (the layers in their order), one line per method, with the 95% intervals.

    ``summary`` is :func:`invertnet.evaluation.evaluate.summarize`'s; an interval of one image (NaN) has no bar.
    """
    if not summary:
        raise ValueError("evaluation_figure: expected at least one summary row, got none")
    layers = list(dict.fromkeys(s.layer for s in summary))
    fig = Figure(figsize=(1.2 * len(layers) + 4.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for method in dict.fromkeys(s.method for s in summary):
        rows = [s for s in summary if s.method == method]
        depth = [layers.index(s.layer) for s in rows]
        ax.errorbar(
            depth,
            [s.psnr for s in rows],
            yerr=[0.0 if np.isnan(s.psnr_ci) else s.psnr_ci for s in rows],
            marker="o",
            capsize=4,
            label=method,
        )
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer reconstructed from")
    ax.set_ylabel("PSNR (dB)")
    counts = sorted({s.n for s in summary})
    ax.set_title(f"mean PSNR with 95% t-interval (n = {', '.join(map(str, counts))} images)", fontsize=9)
    ax.legend(title="method", fontsize=8)
    return fig
