"""Figures for papers (matplotlib, no global pyplot state).

- :func:`reconstruction_figure`: input | reconstruction | error map, metrics in the titles.
- :func:`layer_row_figure`: the paper's Fig. 5 row: the input, then the reconstruction from each
  layer, with PSNR / SSIM / relative error under each panel.
- :func:`spectrum_figure`: singular values of every layer of an injectivity report.
- :func:`save_figure`: write a figure atomically (PNG, PDF or SVG by the suffix).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from invertnet.io import atomic_write
from invertnet.reconstruct import Reconstruction
from invertnet.spectrum import LayerSpectrum

__all__ = ["layer_row_figure", "reconstruction_figure", "save_figure", "spectrum_figure"]


def _display(image: torch.Tensor) -> np.ndarray:
    """First image of a batch as an (H, W, 3) or (H, W) array, clipped to [0, 1] for display."""
    array = image[0].detach().cpu().double().clamp(0, 1).numpy().transpose(1, 2, 0)
    return array[..., 0] if array.shape[-1] == 1 else array


def _metrics_line(result: Reconstruction) -> str:
    return (
        f"PSNR {float(result.psnr[0]):.2f} dB\nSSIM {float(result.ssim[0]):.3f}\n"
        f"rel. err. {float(result.relative_error[0]):.3g}"
    )


def reconstruction_figure(result: Reconstruction) -> Figure:
    """Input, reconstruction and per-pixel absolute error (mean over channels) of the first image."""
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    error = (result.image[0] - result.input[0]).abs().mean(dim=0).detach().cpu().numpy()
    axes[0].imshow(_display(result.input), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input")
    axes[1].imshow(_display(result.image), cmap="gray", vmin=0, vmax=1)
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
        ax.set_title(result.layer)
        ax.set_xlabel(_metrics_line(result), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 150) -> None:
    """Save ``fig`` to ``path`` without ever leaving a half-written file."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def spectrum_figure(report: Sequence[LayerSpectrum]) -> Figure:
    r"""Singular values per layer, normalised by each layer's largest, against the normalised index.

    Exact spectra (circular padding) are solid; circulant approximations of other layers are dashed,
    with the exact (Lanczos) :math:`\sigma_{\min}` marked as a dot.
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
            "-" if spectrum.exact else "--",
            label=f"{spectrum.name} ({spectrum.verdict.split(' (')[0]})",
        )
        if not spectrum.exact and spectrum.sigma_min > 0:
            ax.plot(1.0, spectrum.sigma_min / spectrum.sigma_max, "o", color=line.get_color())
    ax.set_xlabel("singular value index / count")
    ax.set_ylabel(r"$\sigma_i / \sigma_{\max}$")
    ax.set_title(
        "singular values per layer (dashed: circulant approximation; dot: exact $\\sigma_{\\min}$)", fontsize=9
    )
    ax.legend(fontsize=7)
    return fig
