r"""Evaluate inversions over a dataset: one row per image, layer and method, a summary, resumable.

:func:`evaluate` streams the images of a folder or a glob through a :class:`torch.utils.data.DataLoader`,
reconstructs each from every layer with every method (:func:`~invertnet.reconstruct.reconstruct`) and
returns one :class:`EvaluationRow` per (image, layer, method). With ``out``, every finished row is appended
to a CSV file as one complete line (``fsync`` after each): an interrupt loses only the rows in flight, a
re-run skips the rows already there, and a line cut short by a crash is dropped. The file records the
settings of its rows (model and a hash of its weights, size, dtype, options); a run with other settings
is refused, saying what differs.

Under ``torchrun`` (an initialised :mod:`torch.distributed` process group, see :func:`process_group`), the
images still to do are dealt to the ranks (image ``k`` of them to rank ``k % world``); after every
reconstruction the ranks exchange their rows (``all_gather_object``) and rank 0 appends them, so the file
is the one a single process writes, up to row order and the ``seconds`` column.

:func:`summarize` gives, per layer and method, the mean of each metric with its 95% Student-t interval:

.. math::

    \bar v \pm t_{0.975,\, n-1} \, \frac{s}{\sqrt n}, \qquad s^2 = \frac{1}{n-1} \sum_i (v_i - \bar v)^2,

undefined (NaN) for :math:`n = 1`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import hashlib
import io
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from scipy.special import stdtrit
from torch import nn
from torch.utils.data import DataLoader, Dataset

from invertnet.errors import ImageReadError, OptionError, ResultsFileError
from invertnet.graph import check_layer
from invertnet.io import IMAGE_SUFFIXES, atomic_write, load_image
from invertnet.joint import JointOptions
from invertnet.pinv import SolveOptions
from invertnet.reconstruct import RECONSTRUCTION_METHODS, RELU_MODES, Reconstruction, reconstruct
from invertnet.trace import require_module

__all__ = [
    "EvaluationRow",
    "ImageFiles",
    "Process",
    "SummaryRow",
    "evaluate",
    "format_summary",
    "image_files",
    "model_fingerprint",
    "process_group",
    "read_rows",
    "summarize",
    "write_summary",
]


@dataclass(frozen=True)
class EvaluationRow:
    """One reconstruction of one image from one layer with one method, and the settings it was made with.

    Attributes
    ----------
    image : str
        The image file, as listed from ``images`` (the key of the row, with ``layer`` and ``method``).
    layer, method : str
    psnr, ssim, relative_error, feature_residual : float
        As in :class:`~invertnet.reconstruct.Reconstruction` (``data_range`` 1).
    exact, closed_form : bool
        As in :class:`~invertnet.reconstruct.Reconstruction`.
    route : str
        The routes of the steps from ``layer`` down to the input, joined by ``">"``; ``"joint"`` for the
        joint inversion.
    seconds : float
        Wall-clock time of the reconstruction (forward pass included, image loading not). The first row of a
        layer in each process also pays one-time costs (lazy imports, the cached window factorisation of
        :mod:`invertnet.windows`): 2 s against 0.03 s for ConvPool-CNN-C's conv1 at 32 px.
    model : str
        The name the model was given (``--model``), for reading; ``model_sha256`` identifies it.
    model_sha256 : str
        :func:`model_fingerprint` of the model (its structure and every tensor of its state).
    size : int or None
        The side images were resized to (None: their own size).
    dtype, maxpool, relu, solve, joint : str
        The model's dtype, the unpooling mode, how clipping activations were read, and the ``repr`` of the
        options (empty: the defaults).
    """

    image: str
    layer: str
    method: str
    psnr: float
    ssim: float
    relative_error: float
    feature_residual: float
    exact: bool
    closed_form: bool
    route: str
    seconds: float
    model: str
    model_sha256: str
    size: int | None
    dtype: str
    maxpool: str
    relu: str
    solve: str
    joint: str

    @property
    def key(self) -> tuple[str, str, str]:
        """``(image, layer, method)``: what a resumed run skips."""
        return (self.image, self.layer, self.method)


#: The columns of a results file, in order.
COLUMNS = tuple(f.name for f in dataclasses.fields(EvaluationRow))
#: The columns every row of one file shares (``model`` is a label: the hash identifies the model).
SETTINGS = ("model_sha256", "size", "dtype", "maxpool", "relu", "solve", "joint")


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"


def _size(text: str) -> int | None:
    return int(text) if text else None


_PARSE: dict[str, Callable[[str], Any]] = {"float": float, "bool": _bool, "str": str, "int | None": _size}


def _cells(row: EvaluationRow) -> list[str]:
    """The row as CSV cells: floats by ``repr`` (they read back bit for bit), None as an empty cell."""
    values = dataclasses.astuple(row)
    return [repr(v) if isinstance(v, float) else "" if v is None else str(v) for v in values]


def _line(row: EvaluationRow) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(_cells(row))
    return buffer.getvalue()


def _parse(cells: list[str], where: str) -> EvaluationRow:
    if len(cells) != len(COLUMNS):
        raise ResultsFileError(
            f"{where}: expected {len(COLUMNS)} fields, got {len(cells)}; the file was edited or is damaged: fix "
            "the line or start over (overwrite=True, --force)"
        )
    values = {}
    for field, cell in zip(dataclasses.fields(EvaluationRow), cells, strict=True):
        try:
            values[field.name] = _PARSE[str(field.type)](cell)
        except ValueError as err:
            raise ResultsFileError(
                f"{where}: column {field.name!r}: {err}; the file was edited or is damaged: fix the line or start "
                "over (overwrite=True, --force)"
            ) from None
    return EvaluationRow(**values)


def _read(path: Path) -> tuple[list[EvaluationRow], int, bool]:
    """Rows of a results file, the byte length of its complete lines, and whether it has a header.

    A last line without its newline (a write cut short) is left out of both.
    """
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    lines = data[:complete].decode("utf-8").splitlines()
    if not lines:
        return [], complete, False
    header = next(csv.reader([lines[0]]))
    if tuple(header) != COLUMNS:
        raise ResultsFileError(
            f"{str(path)!r}: expected the columns of an evaluation ({', '.join(COLUMNS)}), got {', '.join(header)}; "
            "choose another file, or start over (overwrite=True, --force)"
        )
    rows = [_parse(cells, f"{str(path)!r}, line {n}") for n, cells in enumerate(csv.reader(lines[1:]), start=2)]
    return rows, complete, True


def read_rows(path: str | os.PathLike[str]) -> list[EvaluationRow]:
    """The rows of a results file written by :func:`evaluate` (a last line cut short is left out).

    Raises
    ------
    ResultsFileError
        Other columns than :class:`EvaluationRow`'s, or a complete line that does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"expected a results file of invertnet evaluate, got {str(path)!r}, which is not a file")
    return _read(path)[0]


def image_files(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files ``images`` names, sorted: a folder (its image files), a glob, one file, or a list.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.png", "notes.txt"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in image_files(folder)]
    ['a.png', 'b.png']
    """
    if not isinstance(images, (str, os.PathLike)):
        return [Path(p) for p in images]
    text = os.fspath(images)
    folder = Path(text)
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ImageReadError(
                f"expected image files ({', '.join(IMAGE_SUFFIXES)}) in folder {text!r}, found none; give another "
                "folder or a glob such as 'photos/**/*.JPEG'"
            )
        return found
    if folder.is_file():
        return [folder]
    if not glob.has_magic(text):
        raise ImageReadError(
            f"expected a folder of images, an image file or a glob pattern, got {text!r}, which does not exist"
        )
    matched = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    if not matched:
        raise ImageReadError(f"expected the pattern {text!r} to match image files, it matches none; check the pattern")
    return matched


class ImageFiles(Dataset[tuple[int, torch.Tensor]]):
    """Images loaded with :func:`~invertnet.io.load_image` (centre crop and resize to ``size``), by index.

    Item ``i`` is ``(indices[i], image)``, ``image`` of shape ``(1, 3, size, size)``, float64 in [0, 1].
    """

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], size: int | None) -> None:
        self.paths, self.indices, self.size = list(paths), list(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        index = self.indices[i]
        return index, load_image(self.paths[index], self.size)[0]


def model_fingerprint(model: nn.Module) -> str:
    """First 16 hex digits of a SHA-256 of the model's ``repr`` and of every tensor of its state dict.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
    """
    digest = hashlib.sha256(repr(require_module(model)).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _dtype(model: nn.Module) -> str:
    """The dtype computations run in (the model's; float64, :func:`load_image`'s, for a model without one)."""
    param = next(model.parameters(), None)
    return str(param.dtype if param is not None else torch.float64).removeprefix("torch.")


class Process(NamedTuple):
    """The place of this process in a distributed run: rank, number of processes, and its device."""

    rank: int
    world: int
    device: torch.device


@contextlib.contextmanager
def process_group(device: torch.device | str = "cpu", threads: int | None = None) -> Iterator[Process]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE`` set), for the block; else a no-op.

    The backend is gloo on CPU and nccl on CUDA, where each rank takes ``cuda:LOCAL_RANK`` when ``device``
    names no index. Each rank sets torch's threads to ``threads``, or to its share of the CPUs
    (``max(1, cpus // world)``). A group already initialised is used as it is and left open.
    """
    device = torch.device(device)
    if not dist.is_available() or dist.is_initialized() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if dist.is_available() and dist.is_initialized():
            yield Process(dist.get_rank(), dist.get_world_size(), device)
        else:
            yield Process(0, 1, device)
        return
    world = int(os.environ["WORLD_SIZE"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads or max(1, cpus // world))
    if device.type == "cuda":
        if str(device) == "cuda":  # no index: one device per rank of this node
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Process(dist.get_rank(), world, device)
        dist.barrier()  # no rank tears the group down while another is still in a collective
    finally:
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _exchange(payload: Any, world: int) -> list[Any]:
    """Every rank's ``payload``, on every rank (one process: just this one)."""
    if world == 1:
        return [payload]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, payload)
    return gathered


def _broadcast(payload: Any, world: int) -> Any:
    """Rank 0's ``payload``, on every rank."""
    if world == 1:
        return payload
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _raise_first(errors: Sequence[BaseException | None]) -> None:
    for error in errors:
        if error is not None:
            raise error


def _prepare(out: Path, settings: dict[str, Any], overwrite: bool) -> list[EvaluationRow]:
    """Rows already in ``out`` (checked against ``settings``); the file ends with a complete line after this."""
    try:
        rows, complete, has_header = _read(out) if out.is_file() else ([], 0, False)
    except ResultsFileError:
        if not overwrite:
            raise
        rows, complete, has_header = [], 0, False
    for row in rows:
        differ = [
            f"{k}: {getattr(row, k)!r} in the file, {v!r} now" for k, v in settings.items() if getattr(row, k) != v
        ]
        if differ and not overwrite:
            raise ResultsFileError(
                f"{str(out)!r} holds rows of other settings ({'; '.join(differ)}); resume with the same settings, "
                "start over (overwrite=True, --force), or choose another file"
            )
        if differ:
            rows, has_header = [], False
            break
    if not has_header:
        with atomic_write(out) as tmp:
            tmp.write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
    elif complete < out.stat().st_size:
        os.truncate(out, complete)  # a line cut short by a crash
    return rows


def _append(fd: int, data: bytes) -> None:
    """Append complete lines and flush them to the disk (a signal waits for Python's next bytecode)."""
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _route(result: Reconstruction) -> str:
    return "joint" if result.method == "joint" else ">".join(step.route for step in result.steps)


def evaluate(
    model: nn.Module,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    layers: Sequence[str],
    methods: Sequence[str],
    *,
    size: int | None = None,
    maxpool: str = "switches",
    relu: str = "active_set",
    options: SolveOptions | None = None,
    joint: JointOptions | None = None,
    model_name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[EvaluationRow]:
    """Reconstruct every image from every layer with every method; one row each.

    Parameters
    ----------
    model : nn.Module
        As for :func:`~invertnet.reconstruct.reconstruct` (its dtype and device are used), the same on every
        rank of a distributed run (checked by :func:`model_fingerprint`).
    images : path, glob or sequence of paths
        See :func:`image_files`.
    layers, methods : sequence of str
        Layer names and methods of :data:`~invertnet.reconstruct.RECONSTRUCTION_METHODS`, each once; checked
        before any work.
    size : int, optional
        Centre-crop and resize every image to ``size x size`` (:func:`~invertnet.io.load_image`).
    maxpool, relu, options, joint
        Passed to every :func:`~invertnet.reconstruct.reconstruct` call (``joint`` to the ``"joint"`` ones).
    model_name : str, optional
        The ``model`` column (default: the model's class name).
    out : path, optional
        Results file (CSV, one row a line). Rows already in it are skipped; rows of other settings are
        refused unless ``overwrite``, which starts the file over.
    num_workers : int, default 0
        Processes of the :class:`~torch.utils.data.DataLoader` that load and resize images ahead.
    progress : callable, optional
        Called with a line for every finished row.

    Returns
    -------
    list of EvaluationRow
        One per (image, layer, method), the ones read from ``out`` included, image-major in the order of
        ``images``, ``layers`` and ``methods`` (on every rank of a distributed run).

    Raises
    ------
    ImageReadError
        ``images`` names no image file (or one that cannot be read).
    OptionError, LayerNotFoundError
        An unknown, repeated or missing method or layer.
    ResultsFileError
        ``out`` holds rows of other settings, other columns, or a damaged line.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from invertnet import CReLU
    >>> from invertnet.io import save_image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(2):
    ...     save_image(torch.rand(3, 12, 12), folder / f"{i}.png")
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU()).double()
    >>> rows = evaluate(net, folder, ["1"], ["patch"], out=folder / "results.csv")
    >>> [(pathlib.Path(r.image).name, r.route, r.exact, r.psnr > 100) for r in rows]
    [('0.png', 'invert_crelu>patch', True, True), ('1.png', 'invert_crelu>patch', True, True)]
    >>> len(read_rows(folder / "results.csv")), len(evaluate(net, folder, ["1"], ["patch"], out=folder / "results.csv"))
    (2, 2)
    """
    model = require_module(model)
    layers, methods = list(layers), list(methods)
    for what, names in (("layers", layers), ("methods", methods)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if not names or twice:
            raise OptionError(f"evaluate: expected {what}, each once, got {names}")
    unknown = [m for m in methods if m not in RECONSTRUCTION_METHODS]
    if unknown:
        raise OptionError(f"evaluate: expected methods among {list(RECONSTRUCTION_METHODS)}, got {unknown}")
    if relu not in RELU_MODES:
        raise OptionError(f"evaluate: expected relu in {RELU_MODES}, got {relu!r}")
    for layer in layers:
        check_layer(model, layer)
    rank, world = _world()
    settings: dict[str, Any] = {
        "model_sha256": model_fingerprint(model),
        "size": size,
        "dtype": _dtype(model),
        "maxpool": maxpool,
        "relu": relu,
        "solve": repr(options) if options is not None else "",
        "joint": repr(joint) if joint is not None else "",
    }
    hashes = _exchange(settings["model_sha256"], world)
    if len(set(hashes)) > 1:
        raise OptionError(
            f"evaluate: expected the same model on every rank, got weights hashes {hashes}; seed its initialisation "
            "or load weights"
        )

    # Rank 0 lists the images and reads the file; every rank gets the plan (or the error) from it.
    plan: tuple[list[Path], list[EvaluationRow]] | None = None
    error: BaseException | None = None
    if rank == 0:
        try:
            paths = image_files(images)
            plan = (paths, _prepare(Path(out), settings, overwrite) if out is not None else [])
        except Exception as err:  # every rank raises it, not only rank 0
            error = err
    plan, error = _broadcast((plan, error), world)
    _raise_first([error])
    if plan is None:  # only with an error, raised above
        raise RuntimeError("evaluate: rank 0 sent no plan")
    paths, done_rows = plan
    done = {row.key for row in done_rows}
    names = [str(p) for p in paths]
    todo = [(i, layer, m) for i, name in enumerate(names) for layer in layers for m in methods]
    todo = [(i, layer, m) for i, layer, m in todo if (names[i], layer, m) not in done]
    per_image = Counter(i for i, _, _ in todo)
    pending = list(per_image)  # images with rows to do, in order: image k of them goes to rank k % world
    mine = pending[rank::world]
    cells = [cell for cell in todo if cell[0] in set(mine)]
    rounds = max(sum(per_image[i] for i in pending[r::world]) for r in range(world))

    label = model_name or type(model).__name__
    loader = DataLoader(ImageFiles(paths, mine, size), batch_size=None, num_workers=num_workers)
    loaded = iter(loader)
    current: tuple[int, torch.Tensor] | None = None
    new: list[EvaluationRow] = []
    fd = os.open(out, os.O_WRONLY | os.O_APPEND) if out is not None and rank == 0 else None
    try:
        for r in range(rounds):
            row, error = None, None
            if r < len(cells):
                index, layer, method = cells[r]
                try:
                    if current is None or current[0] != index:
                        current = next(loaded)
                    start = time.perf_counter()
                    result = reconstruct(
                        model,
                        current[1],
                        layer,
                        method,
                        maxpool=maxpool,
                        relu=relu,
                        options=options,
                        joint=joint if method == "joint" else None,
                    )
                    seconds = time.perf_counter() - start
                    row = EvaluationRow(
                        names[index],
                        layer,
                        method,
                        float(result.psnr[0]),
                        float(result.ssim[0]),
                        float(result.relative_error[0]),
                        float(result.feature_residual[0]),
                        result.exact,
                        result.closed_form,
                        _route(result),
                        seconds,
                        label,
                        **settings,
                    )
                except Exception as err:  # every rank raises it once the others' rows are written
                    if world == 1:
                        raise
                    error = err
                if progress is not None and row is not None:
                    where = f"rank {rank}: " if world > 1 else ""
                    progress(f"{where}{row.image} {layer} {method}: PSNR {row.psnr:.2f} dB in {row.seconds:.1f} s")
            exchanged = _exchange((row, error), world)
            arrived = [row for row, _ in exchanged if row is not None]
            if fd is not None and arrived:
                _append(fd, "".join(_line(row) for row in arrived).encode("utf-8"))
            new += arrived
            _raise_first([error for _, error in exchanged])
    finally:
        if fd is not None:
            os.close(fd)
    order = {key: n for n, key in enumerate((name, layer, m) for name in names for layer in layers for m in methods)}
    rows = {row.key: row for row in [*done_rows, *new] if row.key in order}
    return sorted(rows.values(), key=lambda row: order[row.key])


@dataclass(frozen=True)
class SummaryRow:
    """Per layer and method: the number of rows, each metric's mean and the half-width of its 95% interval.

    ``exact`` is the share of exact rows, ``seconds`` the mean time. A half-width is NaN for one row.
    """

    layer: str
    method: str
    n: int
    psnr: float
    psnr_ci: float
    ssim: float
    ssim_ci: float
    relative_error: float
    relative_error_ci: float
    feature_residual: float
    feature_residual_ci: float
    exact: float
    seconds: float


def _mean_ci(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval (NaN for fewer than two values)."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan
    t = float(stdtrit(array.size - 1, (1 + confidence) / 2))  # Student's t quantile (scipy.stats.t.ppf)
    return mean, t * float(array.std(ddof=1)) / math.sqrt(array.size)


def summarize(rows: Sequence[EvaluationRow], confidence: float = 0.95) -> list[SummaryRow]:
    """Per (layer, method), in the order they first appear: means with their ``confidence`` t-intervals.

    Examples
    --------
    >>> row = EvaluationRow("a.png", "conv1", "auto", 30.0, 0.9, 0.1, 0.0, True, False, "lsqr", 1.0,
    ...                     "m", "0", 32, "float64", "switches", "active_set", "", "")
    >>> s = summarize([row, dataclasses.replace(row, image="b.png", psnr=32.0, exact=False)])[0]
    >>> s.n, s.psnr, round(s.psnr_ci, 3), s.exact
    (2, 31.0, 12.706, 0.5)
    """
    if not 0 < confidence < 1:
        raise OptionError(f"summarize: expected a confidence in (0, 1), got {confidence}; e.g. 0.95")
    groups: dict[tuple[str, str], list[EvaluationRow]] = {}
    for row in rows:
        groups.setdefault((row.layer, row.method), []).append(row)
    layers = list(dict.fromkeys(layer for layer, _ in groups))
    methods = list(dict.fromkeys(method for _, method in groups))
    summary = []
    for layer in layers:
        for method in methods:
            group = groups.get((layer, method))
            if not group:
                continue
            metrics: dict[str, float] = {}
            for name in ("psnr", "ssim", "relative_error", "feature_residual"):
                metrics[name], metrics[f"{name}_ci"] = _mean_ci([getattr(r, name) for r in group], confidence)
            exact = sum(r.exact for r in group) / len(group)
            seconds = sum(r.seconds for r in group) / len(group)
            summary.append(SummaryRow(layer, method, len(group), exact=exact, seconds=seconds, **metrics))
    return summary


def format_summary(summary: Sequence[SummaryRow]) -> str:
    """The summary as text: layer, method, n, PSNR mean ± half-width, SSIM, exact share, seconds per image."""
    lines = [f"{'layer':<12} {'method':<7} {'n':>5} {'PSNR dB (95% CI)':>19} {'SSIM':>7} {'exact':>6} {'s/image':>8}"]
    lines += [
        f"{s.layer:<12} {s.method:<7} {s.n:>5} {f'{s.psnr:.2f} ± {s.psnr_ci:.2f}':>19} {s.ssim:>7.4f} "
        f"{s.exact:>6.0%} {s.seconds:>8.2f}"
        for s in summary
    ]
    return "\n".join(lines)


def write_summary(summary: Sequence[SummaryRow], path: str | os.PathLike[str]) -> None:
    """Write the summary as CSV (one row per layer and method), atomically."""
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(f.name for f in dataclasses.fields(SummaryRow))
        writer.writerows([repr(v) if isinstance(v, float) else v for v in dataclasses.astuple(s)] for s in summary)
