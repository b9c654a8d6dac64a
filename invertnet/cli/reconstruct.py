"""``invertnet reconstruct``: one image from one layer (or the paper's figure row), its file and figure."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click
import torch

from invertnet.capture.graph import check_layer
from invertnet.cli.common import (
    DTYPES,
    JOINT_EVALUATIONS,
    JOINT_STEPS,
    Output,
    bits_option,
    claim_outputs,
    figure_layers,
    image_side,
    input_files,
    joint_options,
    max_pixels_option,
    maxpool_option,
    model_option,
    parse_device,
    prepared_model,
    progress_printer,
    relu_option,
    seed_option,
    size_option,
    tv_option,
    weights_option,
)
from invertnet.io.files import save_image
from invertnet.io.images import load_image
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.plotting.figures import (
    FIGURE_SUFFIXES,
    layer_row_figure,
    reconstruction_figure,
    save_figure,
)
from invertnet.reconstruction.api import (
    RECONSTRUCTION_METHODS,
    Reconstruction,
    invert_jointly,
    reconstruct,
)
from invertnet.reconstruction.completion import CompletionOptions
from invertnet.reconstruction.joint import LBFGS_ROUND


def _metrics(result: Reconstruction) -> str:
    return (
        f"PSNR {float(result.psnr[0]):6.2f} dB   SSIM {float(result.ssim[0]):.4f}   "
        f"relative error {float(result.relative_error[0]):.4g}"
    )


def _clipped(result: Reconstruction) -> Reconstruction | None:
    """The result as the files show it (clipped to [0, data_range]), when clipping changes the estimate."""
    shown = result.image.clamp(0, result.data_range)
    if torch.equal(shown, result.image):
        return None
    small = min(shown.shape[-2:]) < 11  # as reconstruct: SSIM needs an 11x11 window
    return dataclasses.replace(
        result,
        image=shown,
        psnr=psnr(shown, result.input, result.data_range),
        ssim=torch.full_like(result.ssim, float("nan")) if small else ssim(shown, result.input, result.data_range),
        relative_error=relative_error(shown, result.input),
    )


def _losses(result: Reconstruction) -> str:
    """What the result says of itself: 'exact', or which steps lose what, or that nothing proves it exact."""
    if result.exact:
        return "exact"
    lost: dict[str, list[str]] = {}
    for step in result.steps:
        if not step.exact:
            lost.setdefault(step.note, []).append(step.name)
    if result.completion is not None:  # the walk's probe notes below the frontier are no longer the answer
        exact = [step.name for step in result.steps if step.exact]
        proven = f"proven exact from {result.layer} down to the output of {result.frontier}" if exact else ""
        return (
            f"not proven exact: {proven + '; below it ' if proven else ''}a feature-consistent completion with the "
            f"TV prior ({result.stopped[0]})"
        )
    if lost:
        return "lossy: " + "; ".join(f"{', '.join(names)}: {note}" for note, names in lost.items())
    if result.method == "joint":
        return "not proven exact: matching the features does not prove the input unique"
    return "not proven exact"


@click.command("reconstruct")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--layer", default=None, help="Layer to reconstruct from, e.g. conv3 (see 'invertnet layers').")
@click.option(
    "--all-layers",
    is_flag=True,
    help="Reconstruct from each of the model's figure layers (conv1..conv4) and write the paper's figure row.",
)
@model_option
@weights_option
@seed_option
@click.option(
    "--method",
    type=click.Choice(sorted(RECONSTRUCTION_METHODS)),
    default="auto",
    show_default=True,
    help="How convolutions are inverted.",
)
@maxpool_option
@relu_option
@size_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float64", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output PNG [default: IMAGE-STEM_LAYER.png, or IMAGE-STEM_layers.png with --all-layers].",
)
@tv_option
@bits_option
@max_pixels_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs (never an input).")
def reconstruct_command(
    image: Path,
    layer: str | None,
    all_layers: bool,
    model_name: str,
    weights: Path | None,
    seed: int,
    method: str,
    maxpool: str,
    relu: str,
    size: int | None,
    device: str,
    dtype: str,
    out: Path | None,
    tv: float,
    bits: int | None,
    max_pixels: int | None,
    force: bool,
) -> None:
    """Reconstruct IMAGE from the features of one layer (or of conv1..conv4 with --all-layers).

    Writes the reconstruction and a side-by-side figure (input | reconstruction | error map),
    and prints PSNR, SSIM (Wang et al. 2004) and the relative error.
    """
    if all_layers == (layer is not None):
        raise click.UsageError("give exactly one of --layer NAME and --all-layers")
    if all_layers:
        figure_layers(model_name, "--all-layers")
        out = out or Path(f"{image.stem}_layers.png")
        outputs = [out]
    else:
        out = out or Path(f"{image.stem}_{layer}.png")
        figure_suffix = out.suffix if out.suffix.lower() in FIGURE_SUFFIXES else ".png"  # e.g. .bmp: no figure
        outputs = [out, out.with_name(f"{out.stem}_figure{figure_suffix}")]
    kinds = ["figure"] if all_layers else ["image", "figure"]
    names = ["--out"] * len(outputs)  # the figure beside the image is named after --out
    claim_outputs(
        [Output(name, path, kind) for name, path, kind in zip(names, outputs, kinds, strict=True)],
        force,
        input_files(image, weights, model_name),
    )
    model = prepared_model(model_name, weights, seed, parse_device(device), DTYPES[dtype])
    layers = figure_layers(model_name, "--all-layers") if layer is None else (layer,)
    for name in layers:
        check_layer(model, name)
    picture, note = load_image(image, image_side(model_name, size), bits=bits, max_pixels=max_pixels)
    if note:
        click.echo(f"input: {note}")
    results = []
    for name in layers:
        if method == "joint":
            rounds = -(-JOINT_EVALUATIONS // LBFGS_ROUND) + JOINT_STEPS
            with click.progressbar(length=rounds, label=f"{name}: joint inversion", file=sys.stderr) as bar:
                result = invert_jointly(
                    model,
                    picture,
                    name,
                    joint_options(tv),
                    maxpool=maxpool,
                    on_round=lambda step, residual: bar.update(1),
                )
            if result.joint is None:
                raise RuntimeError(f"reconstruct(method='joint') returned no joint record for {name}")
            click.echo(
                f"{name:>8}  joint: {int(result.joint.evaluations[0])} L-BFGS evaluations, "
                f"{int(result.joint.iterations[0])} Gauss-Newton steps, feature residual "
                f"{float(result.feature_residual[0]):.2g}{'; ' + result.note if result.note else ''}"
            )
        else:
            completion = CompletionOptions(weight=tv) if method == "auto" else None
            result = reconstruct(
                model,
                picture,
                name,
                method,
                maxpool=maxpool,
                relu=relu,
                completion=completion,
                progress=progress_printer(),
            )
        click.echo(f"{name:>8}  {_metrics(result)}   ({_losses(result)})")
        clipped = _clipped(result)
        if clipped is not None:
            click.echo(f"{'':>8}  {_metrics(clipped)}   (as written: the estimate clipped to [0, 1])")
        results.append(result)
    if all_layers:
        save_figure(layer_row_figure(results), out)
        click.echo(f"wrote {out}")
    else:
        save_image(results[0].image, outputs[0])
        save_figure(reconstruction_figure(results[0]), outputs[1])
        click.echo(f"wrote {outputs[0]} and {outputs[1]}")
