"""The analyses: ``information``, ``models``, ``pairing``, ``layers`` and ``spectrum``."""

from __future__ import annotations

import math
from pathlib import Path

import click
import torch

from invertnet.analysis.information import crelu_twin, format_information, layer_information
from invertnet.analysis.injectivity import format_spectrum, injectivity_report
from invertnet.analysis.pairing import expected_random_mu, pairing_by_layer
from invertnet.capture.graph import check_layer, check_weights, graph_layers
from invertnet.cli.common import (
    SEEDS,
    Output,
    bits_option,
    cap_size,
    claim_outputs,
    figure_layers,
    image_side,
    input_files,
    layers_option,
    max_pixels_option,
    model_option,
    parse_device,
    parse_names,
    prepared_model,
    progress_printer,
    seed_option,
    size_option,
    weights_option,
)
from invertnet.io.files import load_state_dict
from invertnet.io.images import MAX_IMAGE_SIZE, load_image
from invertnet.pinv.proofs import BANDED_MAX_FLOPS
from invertnet.plotting.figures import (
    information_figure,
    pairing_figure,
    save_figure,
    spectrum_figure,
)
from invertnet.zoo.models import MODELS, count_parameters
from invertnet.zoo.specs import describe_spec, load_model


@click.command("information")
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_name",
    default="all-cnn-b-relu",
    show_default=True,
    metavar="SPEC",
    help="A ReLU network: a built-in model, 'package.module:callable', 'path/to/file.py:callable' or "
    "'torchvision:NAME'.",
)
@weights_option
@seed_option
@layers_option
@click.option("--twin/--no-twin", default=True, show_default=True, help="Compare with the CReLU twin (half filters).")
@size_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Figure [default: IMAGE-STEM_information.png]."
)
@bits_option
@max_pixels_option
@click.option("--force", is_flag=True, help="Overwrite an existing figure (never an input).")
def information_command(
    image: Path,
    model_name: str,
    weights: Path | None,
    seed: int,
    layer_list: str | None,
    twin: bool,
    size: int | None,
    device: str,
    out: Path | None,
    bits: int | None,
    max_pixels: int | None,
    force: bool,
) -> None:
    """What each ReLU layer keeps of IMAGE: active share, certificate, PSNR by reading.

    Per layer: the share of outputs that are equations, whether they determine the layer's input (certificate),
    and the PSNR of the reconstruction through the active set, as the identity (the paper's baseline) and by the
    CReLU twin of the network. Computed in float64.
    """
    layers = (
        parse_names(layer_list, "--layers")
        if layer_list is not None
        else list(figure_layers(model_name, "information"))
    )
    out = out or Path(f"{image.stem}_information.png")
    claim_outputs([Output("--out", out, "figure")], force, input_files(image, weights, model_name))
    model = prepared_model(model_name, weights, seed, parse_device(device), torch.float64)
    for name in layers:
        check_layer(model, name)
    picture, note = load_image(image, image_side(model_name, size), bits=bits, max_pixels=max_pixels)
    if note:
        click.echo(f"input: {note}")
    rows = layer_information(
        model, picture, layers, twin=crelu_twin(model) if twin else None, progress=progress_printer()
    )
    click.echo(format_information(rows))
    click.echo(f"certificate ({rows[0].layer}): {rows[0].certificate}")
    save_figure(information_figure(rows, f"{model_name}, {picture.shape[-1]} px"), out)
    click.echo(f"wrote {out}")


@click.command("models")
def models_command() -> None:
    """List the built-in models with their parameter counts (ours and the paper's)."""
    click.echo(f"{'name':<28} {'parameters':>12} {'paper':>7} {'input':>6}  description")
    for name, spec in MODELS.items():
        paper = f"{spec.paper_parameters / 1e6:.2f}M" if spec.paper_parameters else "--"
        count = count_parameters(spec.build(0))
        click.echo(f"{name:<28} {count:>12,} {paper:>7} {spec.input_size:>6}  {spec.description}")


@click.command("pairing")
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@click.option(
    "--model",
    "model_name",
    default=None,
    metavar="SPEC",
    help="Instead of CHECKPOINT: a model spec as for reconstruct (with --weights), whose conv weights are read.",
)
@weights_option
@click.option("--layers", "layer_list", default=None, help="Comma-separated weight names [default: every conv weight].")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Figure [default: CHECKPOINT-STEM_pairing.png]."
)
@click.option("--seed", type=SEEDS, default=0, show_default=True, help="Seed of the random reference filters.")
@click.option("--force", is_flag=True, help="Overwrite an existing figure.")
def pairing_command(
    checkpoint: Path | None,
    model_name: str | None,
    weights: Path | None,
    layer_list: str | None,
    out: Path | None,
    seed: int,
    force: bool,
) -> None:
    """Pairing of opposite-phase filters in every conv weight of CHECKPOINT (the paper's Figs. 2-3).

    CHECKPOINT is a state dict (.pt, loaded with weights_only=True) or a .safetensors file; every
    4-D floating-point tensor counts as a conv weight. Prints, per layer, the mean cosine with the
    pairing filter against the exact mean for random filters, and draws the histograms.
    """
    if (checkpoint is None) == (model_name is None):
        raise click.UsageError("give exactly one of CHECKPOINT and --model SPEC")
    if checkpoint is None and weights is None and model_name in MODELS:
        click.echo(f"note: --model {model_name} without --weights has Gaussian filters (seed 0)")
    stem = checkpoint.stem if checkpoint is not None else str(model_name).replace(":", "_").replace("/", "_")
    out = out or Path(f"{Path(stem).stem}_pairing.png")
    sources = [("CHECKPOINT", checkpoint)] if checkpoint is not None else []
    claim_outputs([Output("--out", out, "figure")], force, [*sources, *input_files(None, weights, model_name)])
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
    else:
        state = {k: v for k, v in load_model(str(model_name), weights).state_dict().items() if v.is_floating_point()}
    layers = parse_names(layer_list, "--layers") if layer_list is not None else None
    pairings = pairing_by_layer(state, layers)
    for name, reason in pairings.skipped.items():
        click.echo(f"skipped {name}: {reason}")
    click.echo(f"{'weight':<32} {'filters':>7} {'dim':>6} {'mean mu':>8} {'random':>8} {'mu < -0.9':>9}")
    for name, result in pairings.items():
        n, dim = result.shape[0], math.prod(result.shape[1:])
        paired = float((result.mu < -0.9).double().mean())
        click.echo(
            f"{name:<32} {n:>7} {dim:>6} {float(result.mu.mean()):>8.3f} {expected_random_mu(dim, n):>8.3f} "
            f"{paired:>9.1%}"
        )
    save_figure(pairing_figure(pairings, seed=seed), out)
    click.echo(f"wrote {out}")


@click.command("layers")
@model_option
@weights_option
@seed_option
@size_option
@click.option("--channels", type=click.IntRange(min=1), default=3, show_default=True, help="Input channels.")
def layers_command(model_name: str, weights: Path | None, seed: int, size: int | None, channels: int) -> None:
    """List the nodes of a model's forward pass, with their output shapes (names for --layer).

    A node is a module call (its qualified name; '@2' for a module's second call) or a functional call
    (its node name, e.g. add_1): --layer accepts the node name, a module's name, or a container's.
    """
    side = image_side(model_name, size)
    model = prepared_model(model_name, weights, seed, torch.device("cpu"), torch.float32)
    click.echo(f"{describe_spec(model_name)}; input {channels}x{side}x{side}")
    click.echo(f"  {'node (for --layer)':<36} {'module or call':<36} {'kind':<20} output")
    for name, label, kind, shape in graph_layers(model, torch.zeros(1, channels, side, side)):
        click.echo(f"  {name:<36} {label:<36} {kind:<20} {'x'.join(map(str, shape))}")


@click.command("spectrum")
@model_option
@weights_option
@seed_option
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    callback=cap_size,
    help=f"Square input size, 8 to {MAX_IMAGE_SIZE} [default: 64 for All-CNN-B (224 takes minutes), 32 for "
    "ConvPool-CNN-C].",
)
@click.option("--layer", default=None, help="Report the layers up to this one [default: all].")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Save the singular values per layer.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@click.option(
    "--proof-flops",
    type=click.FloatRange(min=0),
    default=BANDED_MAX_FLOPS,
    show_default=True,
    help="Budget of the banded verified Cholesky proof for a large layer no local certificate decides "
    "(All-CNN-B conv7 at 224 px: 5.4e12 flops, minutes on one core), and to tighten a local bound more than 10x "
    "below the estimate; 0 skips it.",
)
def spectrum_command(
    model_name: str,
    weights: Path | None,
    seed: int,
    size: int | None,
    layer: str | None,
    plot: Path | None,
    force: bool,
    proof_flops: float,
) -> None:
    """Print, per convolution and pooling layer, whether it can be inverted and how stably."""
    if plot is not None:
        claim_outputs([Output("--plot", plot, "figure")], force, input_files(None, weights, model_name))
    side = image_side(model_name, size, cap=64)
    model = prepared_model(model_name, weights, seed, torch.device("cpu"), torch.float64)
    if layer is not None:
        check_layer(model, layer)
    check_weights(model)
    report = injectivity_report(model, (side, side), layer, progress=progress_printer(), proof_flops=proof_flops)
    click.echo(format_spectrum(report, f"{model_name} at {side}x{side}"))
    if plot is not None:
        save_figure(spectrum_figure(report), plot)
        click.echo(f"wrote {plot}")
