"""What the commands share: option decorators, output claiming, model and image preparation, one-line errors."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import click
import torch

from invertnet.errors import InvertnetError
from invertnet.evaluation.results import lock_path
from invertnet.io.files import check_image_path, check_suffix
from invertnet.io.images import MAX_IMAGE_SIZE
from invertnet.plotting.figures import (
    check_figure_path,
)
from invertnet.reconstruction.api import (
    MAXPOOL_MODES,
    RECONSTRUCTION_METHODS,
    RELU_MODES,
)
from invertnet.reconstruction.joint import JointOptions
from invertnet.zoo.models import MODELS
from invertnet.zoo.specs import check_spec, load_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}


#: ``--method joint``: caps of its two phases, and the default TV weight (images are in [0, 1]).
JOINT_EVALUATIONS, JOINT_STEPS, JOINT_TV = 500, 5, 0.01


def joint_options(tv: float) -> JointOptions:
    """What the CLI passes to a joint inversion: the caps, the prior, and the [0, 1] box of its images."""
    return JointOptions(lbfgs_evaluations=JOINT_EVALUATIONS, max_steps=JOINT_STEPS, tv=tv, box=(0.0, 1.0))


def progress_printer() -> Callable[[str], None] | None:
    """Per-layer lines on stderr when it is a terminal; nothing otherwise (logs and pipes stay clean)."""
    if not sys.stderr.isatty():
        return None
    return lambda line: click.echo(f"  {line}", err=True)


class OneLineErrors(click.Group):
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


def parse_device(name: str) -> torch.device:
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


def prepared_model(
    spec: str, weights: Path | None, seed: int, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    return load_model(spec, weights, seed).to(device=device, dtype=dtype).eval()


#: Input side of models from outside the zoo when --size is not given.
DEFAULT_SIZE = 224


def image_side(spec: str, size: int | None, cap: int | None = None) -> int:
    """--size, else the zoo model's input size (at most ``cap``), else DEFAULT_SIZE."""
    if size is not None:
        return size
    zoo = MODELS.get(spec)
    side = zoo.input_size if zoo is not None else DEFAULT_SIZE
    return min(side, cap) if cap is not None else side


def figure_layers(spec: str, option: str) -> tuple[str, ...]:
    check_spec(spec)
    zoo = MODELS.get(spec)
    if zoo is None:
        raise click.UsageError(
            f"{option} needs a built-in model's figure layers, got --model {spec!r}; name the layers of your own "
            "model (see 'invertnet layers --model ...')"
        )
    return zoo.figure_layers


class Output(NamedTuple):
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


def claim_outputs(outputs: Sequence[Output], force: bool, inputs: Sequence[tuple[str, Path]] = ()) -> None:
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


def input_files(image: Path | None, weights: Path | None, spec: str | None) -> list[tuple[str, Path]]:
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


def cap_size(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
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
    """``--methods``, a comma-separated list of reconstruction methods (checked by :func:`parse_methods`)."""
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
    callback=cap_size,
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


def parse_names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise click.BadParameter(f"expected a comma-separated list, got {text!r}", param_hint=option)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise click.BadParameter(f"expected each name once, got {', '.join(twice)} more than once", param_hint=option)
    return names


def parse_methods(text: str) -> list[str]:
    methods = parse_names(text, "--methods")
    unknown = [m for m in methods if m not in RECONSTRUCTION_METHODS]
    if unknown:
        raise click.BadParameter(
            f"expected methods among {', '.join(RECONSTRUCTION_METHODS)}, got {', '.join(unknown)}",
            param_hint="--methods",
        )
    return methods
