"""``invertnet compare`` (every method from every layer of one image) and ``invertnet evaluate`` (folders)."""

from __future__ import annotations

from pathlib import Path

import click

from invertnet.capture.graph import check_layer
from invertnet.cli.common import (
    DTYPES,
    SKIPPED_EXIT,
    Output,
    bits_option,
    claim_outputs,
    figure_layers,
    image_side,
    input_files,
    joint_options,
    layers_option,
    max_pixels_option,
    maxpool_option,
    methods_option,
    model_option,
    parse_device,
    parse_methods,
    parse_names,
    prepared_model,
    progress_printer,
    relu_option,
    seed_option,
    size_option,
    tv_option,
    weights_option,
)
from invertnet.evaluation.compare import compare_methods, format_comparison
from invertnet.evaluation.evaluate import (
    BAD_IMAGES,
    evaluate,
    format_summary,
    image_files,
    process_group,
    summarize,
    write_summary,
)
from invertnet.io.images import load_image
from invertnet.plotting.figures import (
    comparison_figure,
    evaluation_figure,
    save_figure,
)
from invertnet.reconstruction.completion import CompletionOptions


@click.command("compare")
@click.argument("image", type=click.Path(path_type=Path))
@model_option
@weights_option
@seed_option
@layers_option
@methods_option("patch,lsqr,joint")
@size_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float64", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Figure [default: IMAGE-STEM_compare.png].")
@tv_option
@bits_option
@max_pixels_option
@click.option("--force", is_flag=True, help="Overwrite an existing figure (never an input).")
def compare_command(
    image: Path,
    model_name: str,
    weights: Path | None,
    seed: int,
    layer_list: str | None,
    method_list: str,
    size: int | None,
    device: str,
    dtype: str,
    out: Path | None,
    tv: float,
    bits: int | None,
    max_pixels: int | None,
    force: bool,
) -> None:
    """Compare inversion methods on IMAGE from several layers: one table, one figure.

    Prints layer, method, PSNR, SSIM, relative error, relative feature residual and seconds;
    the figure has one row per method and one column per layer.
    """
    layers = (
        parse_names(layer_list, "--layers") if layer_list is not None else list(figure_layers(model_name, "compare"))
    )
    methods = parse_methods(method_list)
    out = out or Path(f"{image.stem}_compare.png")
    claim_outputs([Output("--out", out, "figure")], force, input_files(image, weights, model_name))
    model = prepared_model(model_name, weights, seed, parse_device(device), DTYPES[dtype])
    for name in layers:
        check_layer(model, name)
    picture, note = load_image(image, image_side(model_name, size), bits=bits, max_pixels=max_pixels)
    if note:
        click.echo(f"input: {note}")
    rows = compare_methods(
        model,
        picture,
        layers,
        methods,
        joint=joint_options(tv),
        completion=CompletionOptions(weight=tv),
        progress=progress_printer(),
    )
    click.echo(format_comparison(rows))
    save_figure(comparison_figure(rows, picture), out)
    click.echo(f"wrote {out}")


@click.command("evaluate")
@click.argument("images", nargs=-1, required=True)
@model_option
@weights_option
@seed_option
@layers_option
@methods_option("auto")
@size_option
@maxpool_option
@relu_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ... (cuda: one per rank).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float64", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Results CSV, one row per image, layer and method; an existing one with the same settings is resumed "
    "(locked while a run writes it: OUT.lock).",
)
@click.option("--summary", type=click.Path(path_type=Path), default=None, help="Summary CSV (layer x method).")
@click.option("--figure", type=click.Path(path_type=Path), default=None, help="PSNR against depth per method.")
@tv_option
@bits_option
@max_pixels_option
@click.option(
    "--bad-images",
    type=click.Choice(BAD_IMAGES),
    default="skip",
    show_default=True,
    help=f"An image that cannot be read: list it and go on (the exit status is then {SKIPPED_EXIT}), or stop there.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite --summary and --figure, and an --out of other settings or one that cannot be read (same "
    "settings: always resumed). Never an input.",
)
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    images: tuple[str, ...],
    model_name: str,
    weights: Path | None,
    seed: int,
    layer_list: str | None,
    method_list: str,
    size: int | None,
    maxpool: str,
    relu: str,
    device: str,
    dtype: str,
    out: Path,
    summary: Path | None,
    figure: Path | None,
    tv: float,
    bits: int | None,
    max_pixels: int | None,
    bad_images: str,
    force: bool,
) -> None:
    """Reconstruct every image of IMAGES (folders, files or quoted globs) from each layer with each method.

    Appends one row per image, layer and method to --out as it goes (PSNR, SSIM, relative error,
    feature residual, exact, route, seconds): a re-run skips the rows already there, and recomputes the
    images whose content changed. Prints the mean of each layer and method with its 95% interval, and the
    images it could not read (exit status 3 when there are some). Under 'torchrun --nproc_per_node=N -m
    invertnet evaluate ...' the images are shared among the N processes and rank 0 writes the one file.
    """
    layers = (
        parse_names(layer_list, "--layers") if layer_list is not None else list(figure_layers(model_name, "evaluate"))
    )
    methods = parse_methods(method_list)
    listed = image_files(list(images))
    outputs = [Output("--out", out, "table", resumed=True)]  # evaluate refuses an --out of other settings
    outputs += [Output("--summary", summary, "table")] if summary is not None else []
    outputs += [Output("--figure", figure, "figure")] if figure is not None else []
    claim_outputs(outputs, force, [*(("IMAGES", p) for p in listed), *input_files(None, weights, model_name)])
    with process_group(parse_device(device), ctx.find_root().meta.get("invertnet.threads")) as process:
        model = prepared_model(model_name, weights, seed, process.device, DTYPES[dtype])
        rows = evaluate(
            model,
            listed,
            layers,
            methods,
            size=image_side(model_name, size),
            maxpool=maxpool,
            relu=relu,
            joint=joint_options(tv) if "joint" in methods else None,
            completion=CompletionOptions(weight=tv) if "auto" in methods else None,
            model_name=model_name,
            out=out,
            overwrite=force,
            bits=bits,
            max_pixels=max_pixels,
            bad_images=bad_images,
            progress=progress_printer(),
        )
    if process.rank != 0:
        return
    if rows.stale:
        changed = sorted({row.image for row in rows.stale})
        click.echo(
            f"dropped {len(rows.stale)} rows of {len(changed)} images whose content changed since (computed again): "
            f"{', '.join(changed)}"
        )
    if rows.duplicates:
        click.echo(f"dropped {rows.duplicates} duplicate rows from {out} (the first of each kept)")
    table = summarize(rows)
    if table:
        click.echo(format_summary(table))
    else:
        unwritten = " ".join(str(p) for p in (summary, figure) if p is not None)
        click.echo(f"no rows to summarize{f': {unwritten} not written' if unwritten else ''}")
    ranks = f", {process.world} processes" if process.world > 1 else ""
    click.echo(f"wrote {out} ({len(rows)} rows{ranks})")
    if summary is not None and table:
        write_summary(table, summary)
        click.echo(f"wrote {summary}")
    if figure is not None and table:
        save_figure(evaluation_figure(table), figure)
        click.echo(f"wrote {figure}")
    for skipped in rows.skipped:
        click.echo(f"skipped {skipped.image}: {skipped.reason}")
    if rows.skipped:
        total = len(rows.skipped) + len({row.image for row in rows})
        click.echo(f"skipped {len(rows.skipped)} of {total} images (exit status {SKIPPED_EXIT})")
        ctx.exit(SKIPPED_EXIT)
