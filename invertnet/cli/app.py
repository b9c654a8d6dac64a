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
import signal

import click
import torch

from invertnet.cli.analyses import (
    information_command,
    layers_command,
    models_command,
    pairing_command,
    spectrum_command,
)
from invertnet.cli.common import (
    OneLineErrors,
)
from invertnet.cli.datasets import compare_command, evaluate_command
from invertnet.cli.reconstruct import reconstruct_command

__all__ = ["main"]


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    ctx.meta["invertnet.threads"] = value  # evaluate's ranks take a share of the CPUs when not given
    if value is not None:
        torch.set_num_threads(value)
        with contextlib.suppress(RuntimeError):  # settable once per process, before any inter-op work
            torch.set_num_interop_threads(value)
    return value


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(reconstruct_command)
cli.add_command(compare_command)
cli.add_command(evaluate_command)
cli.add_command(information_command)
cli.add_command(models_command)
cli.add_command(pairing_command)
cli.add_command(layers_command)
cli.add_command(spectrum_command)


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
