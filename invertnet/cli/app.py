"""The ``invertnet`` command line: parse, call the library, print, write files.

Every error from bad input (and from a user's model code: its import, its factory, its forward) ends as
one line on stderr and exit code 2, with no traceback; outputs are checked before any work is done
(extension, directory, permission to write), never overwritten without ``--force``, never the same file
as another output, an input or an output's lock file (with or without ``--force``), and written
atomically; SIGTERM exits cleanly with code 143 and leaves no temporary file. ``evaluate`` exits with
code 3 when it skipped images it could not read (it lists them). A result is printed ``(exact)`` only
when it says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import click
import torch

from invertnet.analysis.information import crelu_twin, format_information, layer_information
from invertnet.analysis.injectivity import injectivity_report
from invertnet.analysis.pairing import expected_random_mu, pairing_by_layer
from invertnet.capture.graph import check_layer, check_weights, graph_layers
from invertnet.errors import InvertnetError
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
from invertnet.evaluation.results import lock_path
from invertnet.io.files import check_image_path, check_suffix, load_state_dict, save_image
from invertnet.io.images import MAX_IMAGE_SIZE, load_image
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.plotting.figures import (
    FIGURE_SUFFIXES,
    check_figure_path,
    comparison_figure,
    evaluation_figure,
    information_figure,
    layer_row_figure,
    pairing_figure,
    reconstruction_figure,
    save_figure,
    spectrum_figure,
)
from invertnet.reconstruction.api import (
    MAXPOOL_MODES,
    RECONSTRUCTION_METHODS,
    RELU_MODES,
    Reconstruction,
    invert_jointly,
    reconstruct,
)
from invertnet.reconstruction.completion import CompletionOptions
from invertnet.reconstruction.joint import LBFGS_ROUND, JointOptions
from invertnet.zoo.models import MODELS, count_parameters
from invertnet.zoo.specs import check_spec, describe_spec, load_model

__all__ = ["main"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: ``--method joint``: caps of its two phases, and the default TV weight (images are in [0, 1]).
JOINT_EVALUATIONS, JOINT_STEPS, JOINT_TV = 500, 5, 0.01


def _joint_options(tv: float) -> JointOptions:
    """What the CLI passes to a joint inversion: the caps, the prior, and the [0, 1] box of its images."""
    return JointOptions(lbfgs_evaluations=JOINT_EVALUATIONS, max_steps=JOINT_STEPS, tv=tv, box=(0.0, 1.0))


def _progress() -> Callable[[str], None] | None:
    """Per-layer lines on stderr when it is a terminal; nothing otherwise (logs and pipes stay clean)."""
    if not sys.stderr.isatty():
        return None
    return lambda line: click.echo(f"  {line}", err=True)


class _OneLineErrors(click.Group):
    """A group whose errors print as one line on stderr with exit code 2 (also under click's test runner)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("invertnet: aborted", err=True)
            sys.exit(1)
        except click.exceptions.NoArgsIsHelpError as err:  # bare 'invertnet': the help, as click prints it
            click.echo(err.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as err:
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            hint = _hint(err)
            _fail(f"{err.format_message().rstrip('.')}{hint}" if hint else f"{err.format_message()}{where}")
        except click.ClickException as err:
            _fail(err.format_message())
        except (InvertnetError, OSError) as err:
            _fail(str(err))
        except MemoryError as err:
            _fail(f"out of memory: {err}; use a smaller --size")
        except RuntimeError as err:
            # last resort: a model's forward (or torch) refusing this input, e.g. a kernel larger than the image
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            _fail(f"the model failed on this input: {first}; check --size (and --model, --weights)")
        sys.exit(code if isinstance(code, int) else 0)


def _hint(err: click.UsageError) -> str:
    """The fix for usage errors whose click message alone misleads."""
    command = err.ctx.info_name if err.ctx is not None else "the command"
    if isinstance(err, click.NoSuchOption) and err.option_name == "--threads":
        return (
            f"; --threads is an option of invertnet itself, not of {command}: put it before the command, e.g. "
            f"'invertnet --threads 1 {command} ...'"
        )
    if "unexpected extra argument" in err.format_message():
        return (
            f"; {command} takes one input (an unquoted glob such as photos/*.png expands to many files): quote "
            "it, or use 'invertnet evaluate' for many images"
        )
    return ""


def _fail(message: str) -> NoReturn:
    click.echo(f"invertnet: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise click.BadParameter(
            f"expected a torch device such as cpu or cuda:0, got {name!r}", param_hint="--device"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise click.BadParameter(
            f"expected cpu or cuda[:N], got {name!r}; invertnet runs on CPU and CUDA devices", param_hint="--device"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            "CUDA was asked for, but torch sees no CUDA device; use --device cpu", param_hint="--device"
        )
    return device


def _model(spec: str, weights: Path | None, seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return load_model(spec, weights, seed).to(device=device, dtype=dtype).eval()


#: Input side of models from outside the zoo when --size is not given.
DEFAULT_SIZE = 224


def _side(spec: str, size: int | None, cap: int | None = None) -> int:
    """--size, else the zoo model's input size (at most ``cap``), else DEFAULT_SIZE."""
    if size is not None:
        return size
    zoo = MODELS.get(spec)
    side = zoo.input_size if zoo is not None else DEFAULT_SIZE
    return min(side, cap) if cap is not None else side


def _figure_layers(spec: str, option: str) -> tuple[str, ...]:
    check_spec(spec)
    zoo = MODELS.get(spec)
    if zoo is None:
        raise click.UsageError(
            f"{option} needs a built-in model's figure layers, got --model {spec!r}; name the layers of your own "
            "model (see 'invertnet layers --model ...')"
        )
    return zoo.figure_layers


class _Output(NamedTuple):
    """An output the command will write: the option that names it, the path, and what kind of file it is.

    ``kind`` is ``"image"`` (an extension of :data:`invertnet.io.files.IMAGE_SUFFIXES`), ``"figure"`` (any extension
    matplotlib writes) or ``"table"`` (``.csv``); ``resumed`` outputs may exist without --force (evaluate's --out).
    """

    option: str
    path: Path
    kind: str
    resumed: bool = False


def _same_file(a: Path, b: Path) -> bool:
    """One file by resolved path (symlinks followed), or by inode for two existing names (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _spec_file(spec: str | None) -> list[tuple[str, Path]]:
    """The .py file a --model spec reads (an input too), if it names one."""
    if spec is None or ":" not in spec:
        return []
    module = spec.rpartition(":")[0]
    return [("--model", Path(module))] if module.endswith(".py") or "/" in module or os.sep in module else []


def _claim(outputs: Sequence[_Output], force: bool, inputs: Sequence[tuple[str, Path]] = ()) -> None:
    """Refuse outputs that cannot be written or exist (without --force), before any work is done.

    No output may be the same file as another output, an input (the image, the weights, the model's file,
    evaluate's images) or a sidecar of an output (the lock file of a results file), compared by resolved path
    through symlinks, with or without --force. Each directory is probed by creating and removing a temporary
    file: ``os.access`` says yes to root even where writing fails.
    """
    claimed: list[tuple[str, Path]] = []  # what each file is, and the file
    for output in outputs:
        for what, other in claimed:
            if _same_file(output.path, other):
                raise click.ClickException(
                    f"{output.option} {str(output.path)!r} is the same file as {what}; give each output its own file"
                )
        claimed.append((f"{output.option} {str(output.path)!r}", output.path))
        if output.kind == "table" and output.resumed:
            claimed.append((f"the lock file of {output.option} {str(output.path)!r}", lock_path(output.path)))
    for output in outputs:
        for option, source in inputs:
            if source.exists() and _same_file(output.path, source):
                what = {"IMAGE": "the input", "IMAGES": "one of the input images"}.get(
                    option, f"an input ({option} {str(source)!r})"
                )
                raise click.ClickException(
                    f"cannot write {str(output.path)!r}: it is {what}, and writing would destroy it (--force never "
                    f"overwrites an input); choose another {output.option}"
                )
    probed: set[Path] = set()
    for output in outputs:
        path = output.path
        if path.is_dir():
            raise click.ClickException(
                f"cannot write {str(path)!r}: it is a directory; give a file name with {output.option}"
            )
        if output.kind == "table":
            check_suffix(path, (".csv",), "a table file name")
        else:
            (check_figure_path if output.kind == "figure" else check_image_path)(path)
        if path.exists() and not force and not output.resumed:
            raise click.ClickException(
                f"{str(path)!r} exists; pass --force to overwrite it or choose another {output.option}"
            )
        if not path.parent.is_dir():
            raise click.ClickException(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
        if path.parent not in probed:
            _probe_writable(path)
            probed.add(path.parent)


def _inputs(image: Path | None, weights: Path | None, spec: str | None) -> list[tuple[str, Path]]:
    """The files a command reads: an output may be none of them."""
    named = [("IMAGE", image), ("--weights", weights)]
    return [(option, path) for option, path in named if path is not None] + _spec_file(spec)


def _probe_writable(path: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".invertnet-probe.", dir=path.parent)
    except OSError as err:
        raise click.ClickException(
            f"cannot write {str(path)!r}: directory {str(path.parent)!r} is not writable ({err.strerror or err}); "
            "choose another --out"
        ) from None
    os.close(fd)
    os.unlink(name)


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


model_option = click.option(
    "--model",
    "model_name",
    default="all-cnn-b-crelu",
    show_default=True,
    metavar="SPEC",
    help="A built-in model (see 'invertnet models'), 'package.module:callable' or 'path/to/file.py:callable' "
    "(a function returning an nn.Module), or 'torchvision:NAME' when torchvision is installed.",
)
weights_option = click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="State dict loaded strictly into the model (.pt via weights_only=True, or .safetensors); default: the "
    "model's own initialisation (Gaussian filters from --seed for built-in models).",
)
#: The seeds the CLI takes (torch also takes negative ones; one spelling per seed is enough here).
SEEDS = click.IntRange(0, 2**63 - 1)
seed_option = click.option("--seed", type=SEEDS, default=0, show_default=True, help="Seed of the Gaussian filters.")


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"expected a finite number, got {value}", ctx=ctx, param=param)
    return value


tv_option = click.option(
    "--tv",
    type=click.FloatRange(min=0),
    callback=_finite,
    default=JOINT_TV,
    show_default=True,
    help="Weight of the total-variation prior: of the default's completion (--method auto) and of the joint "
    "inversion's L-BFGS phase (0: none).",
)


def _cap_size(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Refuse sides above MAX_IMAGE_SIZE with the reason, before numpy tries to allocate them."""
    if value is not None and value > MAX_IMAGE_SIZE:
        gib = 3 * 8 * value**2 / 2**30
        raise click.BadParameter(
            f"expected at most {MAX_IMAGE_SIZE} pixels a side, got {value}: the {value}x{value} image alone would "
            f"take {gib:.0f} GiB in float64, and every layer's features more; use a smaller --size",
            ctx=ctx,
            param=param,
        )
    return value


layers_option = click.option(
    "--layers", "layer_list", default=None, help="Comma-separated layers [default: the model's conv1..conv4]."
)


def methods_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--methods``, a comma-separated list of reconstruction methods (checked by :func:`_methods`)."""
    return click.option(
        "--methods",
        "method_list",
        default=default,
        show_default=True,
        help=f"Comma-separated, among {', '.join(RECONSTRUCTION_METHODS)}.",
    )


relu_option = click.option(
    "--relu",
    type=click.Choice(RELU_MODES),
    default="active_set",
    show_default=True,
    help="ReLU, ReLU6, Hardtanh: solve their equations and inequalities with the layer below, or read them as "
    "the identity (the paper's baseline).",
)
size_option = click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    callback=_cap_size,
    help=f"Square input size, 8 to {MAX_IMAGE_SIZE} [default: the model's, 224 or 32].",
)


#: Exit status of ``evaluate`` when it skipped images it could not read (it lists them); errors exit with 2.
SKIPPED_EXIT = 3

bits_option = click.option(
    "--bits",
    type=click.IntRange(1, 32),
    default=None,
    help="Bit depth of integer pixels (divided by 2**bits - 1), for TIFFs whose values leave the scale open "
    "[default: by the file].",
)
max_pixels_option = click.option(
    "--max-pixels",
    type=click.IntRange(min=0),
    default=None,
    help="Refuse images with more pixels than this, from the header, before decoding (0: no limit) "
    "[default: Pillow's MAX_IMAGE_PIXELS, 89,478,485].",
)

maxpool_option = click.option(
    "--maxpool",
    type=click.Choice(MAXPOOL_MODES),
    default="switches",
    show_default=True,
    help="Unpool max-pooling with the forward pass's switches, or guess without them.",
)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    ctx.meta["invertnet.threads"] = value  # evaluate's ranks take a share of the CPUs when not given
    if value is not None:
        torch.set_num_threads(value)
        with contextlib.suppress(RuntimeError):  # settable once per process, before any inter-op work
            torch.set_num_interop_threads(value)
    return value


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="invertnet")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    callback=_set_threads,
    expose_value=False,
    is_eager=True,
    help="Threads torch may use [default: torch's, one per core]. Use fewer on a machine shared with busy "
    "processes: on 2 cores next to another busy process, 2 threads ran one layer 9x slower than 1.",
)
def cli() -> None:
    """Invert convolutional networks: recover what each layer keeps of its input."""


@cli.command("reconstruct")
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
        _figure_layers(model_name, "--all-layers")
        out = out or Path(f"{image.stem}_layers.png")
        outputs = [out]
    else:
        out = out or Path(f"{image.stem}_{layer}.png")
        figure_suffix = out.suffix if out.suffix.lower() in FIGURE_SUFFIXES else ".png"  # e.g. .bmp: no figure
        outputs = [out, out.with_name(f"{out.stem}_figure{figure_suffix}")]
    kinds = ["figure"] if all_layers else ["image", "figure"]
    names = ["--out"] * len(outputs)  # the figure beside the image is named after --out
    _claim(
        [_Output(name, path, kind) for name, path, kind in zip(names, outputs, kinds, strict=True)],
        force,
        _inputs(image, weights, model_name),
    )
    model = _model(model_name, weights, seed, _device(device), DTYPES[dtype])
    layers = _figure_layers(model_name, "--all-layers") if layer is None else (layer,)
    for name in layers:
        check_layer(model, name)
    picture, note = load_image(image, _side(model_name, size), bits=bits, max_pixels=max_pixels)
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
                    _joint_options(tv),
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
                model, picture, name, method, maxpool=maxpool, relu=relu, completion=completion, progress=_progress()
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


def _names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise click.BadParameter(f"expected a comma-separated list, got {text!r}", param_hint=option)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise click.BadParameter(f"expected each name once, got {', '.join(twice)} more than once", param_hint=option)
    return names


def _methods(text: str) -> list[str]:
    methods = _names(text, "--methods")
    unknown = [m for m in methods if m not in RECONSTRUCTION_METHODS]
    if unknown:
        raise click.BadParameter(
            f"expected methods among {', '.join(RECONSTRUCTION_METHODS)}, got {', '.join(unknown)}",
            param_hint="--methods",
        )
    return methods


@cli.command("compare")
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
    layers = _names(layer_list, "--layers") if layer_list is not None else list(_figure_layers(model_name, "compare"))
    methods = _methods(method_list)
    out = out or Path(f"{image.stem}_compare.png")
    _claim([_Output("--out", out, "figure")], force, _inputs(image, weights, model_name))
    model = _model(model_name, weights, seed, _device(device), DTYPES[dtype])
    for name in layers:
        check_layer(model, name)
    picture, note = load_image(image, _side(model_name, size), bits=bits, max_pixels=max_pixels)
    if note:
        click.echo(f"input: {note}")
    rows = compare_methods(
        model,
        picture,
        layers,
        methods,
        joint=_joint_options(tv),
        completion=CompletionOptions(weight=tv),
        progress=_progress(),
    )
    click.echo(format_comparison(rows))
    save_figure(comparison_figure(rows, picture), out)
    click.echo(f"wrote {out}")


@cli.command("evaluate")
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
    layers = _names(layer_list, "--layers") if layer_list is not None else list(_figure_layers(model_name, "evaluate"))
    methods = _methods(method_list)
    listed = image_files(list(images))
    outputs = [_Output("--out", out, "table", resumed=True)]  # evaluate refuses an --out of other settings
    outputs += [_Output("--summary", summary, "table")] if summary is not None else []
    outputs += [_Output("--figure", figure, "figure")] if figure is not None else []
    _claim(outputs, force, [*(("IMAGES", p) for p in listed), *_inputs(None, weights, model_name)])
    with process_group(_device(device), ctx.find_root().meta.get("invertnet.threads")) as process:
        model = _model(model_name, weights, seed, process.device, DTYPES[dtype])
        rows = evaluate(
            model,
            listed,
            layers,
            methods,
            size=_side(model_name, size),
            maxpool=maxpool,
            relu=relu,
            joint=_joint_options(tv) if "joint" in methods else None,
            completion=CompletionOptions(weight=tv) if "auto" in methods else None,
            model_name=model_name,
            out=out,
            overwrite=force,
            bits=bits,
            max_pixels=max_pixels,
            bad_images=bad_images,
            progress=_progress(),
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


@cli.command("information")
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
        _names(layer_list, "--layers") if layer_list is not None else list(_figure_layers(model_name, "information"))
    )
    out = out or Path(f"{image.stem}_information.png")
    _claim([_Output("--out", out, "figure")], force, _inputs(image, weights, model_name))
    model = _model(model_name, weights, seed, _device(device), torch.float64)
    for name in layers:
        check_layer(model, name)
    picture, note = load_image(image, _side(model_name, size), bits=bits, max_pixels=max_pixels)
    if note:
        click.echo(f"input: {note}")
    rows = layer_information(model, picture, layers, twin=crelu_twin(model) if twin else None, progress=_progress())
    click.echo(format_information(rows))
    click.echo(f"certificate ({rows[0].layer}): {rows[0].certificate}")
    save_figure(information_figure(rows, f"{model_name}, {picture.shape[-1]} px"), out)
    click.echo(f"wrote {out}")


@cli.command("models")
def models_command() -> None:
    """List the built-in models with their parameter counts (ours and the paper's)."""
    click.echo(f"{'name':<28} {'parameters':>12} {'paper':>7} {'input':>6}  description")
    for name, spec in MODELS.items():
        paper = f"{spec.paper_parameters / 1e6:.2f}M" if spec.paper_parameters else "--"
        count = count_parameters(spec.build(0))
        click.echo(f"{name:<28} {count:>12,} {paper:>7} {spec.input_size:>6}  {spec.description}")


@cli.command("pairing")
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
    _claim([_Output("--out", out, "figure")], force, [*sources, *_inputs(None, weights, model_name)])
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
    else:
        state = {k: v for k, v in load_model(str(model_name), weights).state_dict().items() if v.is_floating_point()}
    layers = _names(layer_list, "--layers") if layer_list is not None else None
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


@cli.command("layers")
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
    side = _side(model_name, size)
    model = _model(model_name, weights, seed, torch.device("cpu"), torch.float32)
    click.echo(f"{describe_spec(model_name)}; input {channels}x{side}x{side}")
    click.echo(f"  {'node (for --layer)':<36} {'module or call':<36} {'kind':<20} output")
    for name, label, kind, shape in graph_layers(model, torch.zeros(1, channels, side, side)):
        click.echo(f"  {name:<36} {label:<36} {kind:<20} {'x'.join(map(str, shape))}")


@cli.command("spectrum")
@model_option
@weights_option
@seed_option
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    callback=_cap_size,
    help=f"Square input size, 8 to {MAX_IMAGE_SIZE} [default: 64 for All-CNN-B (224 takes minutes), 32 for "
    "ConvPool-CNN-C].",
)
@click.option("--layer", default=None, help="Report the layers up to this one [default: all].")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Save the singular values per layer.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
def spectrum_command(
    model_name: str,
    weights: Path | None,
    seed: int,
    size: int | None,
    layer: str | None,
    plot: Path | None,
    force: bool,
) -> None:
    """Print, per convolution and pooling layer, whether it can be inverted and how stably."""
    if plot is not None:
        _claim([_Output("--plot", plot, "figure")], force, _inputs(None, weights, model_name))
    side = _side(model_name, size, cap=64)
    model = _model(model_name, weights, seed, torch.device("cpu"), torch.float64)
    if layer is not None:
        check_layer(model, layer)
    check_weights(model)
    report = injectivity_report(model, (side, side), layer, progress=_progress())
    click.echo(
        f"{model_name} at {side}x{side} (unknowns: C/2 behind a CReLU input; sigma_min: the estimate (exact for "
        "dft and dense, a Lanczos value is an upper bound); proven >=: the proof's lower bound; gap = their ratio)"
    )
    click.echo(
        f"{'layer':<14} {'in':>9} {'out':>9} {'unknowns':>9} {'sigma_min':>11} {'proven >=':>10} {'gap':>6} "
        f"{'sigma_max':>10} {'cond':>9}  {'sigma by':<14} {'proof':<11}  verdict"
    )
    for r in report:
        flag = "" if r.converged else " (sigma_min not converged)"
        gap = f"{r.gap:.3g}" if r.sigma_min_lower > 0 else "-"
        proven = f"{r.sigma_min_lower:.4g}" if r.proof and r.proof != "singular" else "-"
        click.echo(
            f"{r.name:<14} {r.in_dim:>9} {r.out_dim:>9} {r.unknowns:>9} {r.sigma_min:>11.6g} {proven:>10} "
            f"{gap:>6} {r.sigma_max:>10.4g} {r.condition:>9.3g}  {r.sigma_method:<14} {r.proof or '-':<11}  "
            f"{r.verdict}{flag}"
        )
    if plot is not None:
        save_figure(spectrum_figure(report), plot)
        click.echo(f"wrote {plot}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM as an exception: ``finally`` blocks run, so no temporary output survives."""
    click.echo(f"invertnet: terminated by signal {signum}", err=True)
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` (the console script and ``python -m invertnet`` do this)."""
    signal.signal(signal.SIGTERM, _terminate)


def main() -> None:
    """Entry point of the ``invertnet`` console script."""
    install_signal_handlers()
    cli()
