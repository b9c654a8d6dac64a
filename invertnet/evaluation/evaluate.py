r"""Evaluate inversions over a dataset: one row per image, layer and method, a summary, resumable.

:func:`evaluate` streams the images of a folder or a glob through a :class:`torch.utils.data.DataLoader`,
reconstructs each from every layer with every method (:func:`~invertnet.reconstruction.api.reconstruct`) and
returns one :class:`~invertnet.evaluation.results.EvaluationRow` per (image, layer, method). With ``out``, every
finished row is appended to a CSV file as one complete line (``fsync`` after each): an interrupt loses only the rows in
flight, a re-run skips the rows already there, and a line cut short by a crash is dropped. Rows are keyed by
the image's resolved path and carry a hash of its content: a re-run recomputes an image that changed (and
drops its old rows, saying so). The file records the settings of its rows (model and a hash of its weights,
size, dtype, options); a run with other settings is refused, saying what differs. One run writes a file at a
time (:func:`~invertnet.evaluation.results.exclusive_lock`). See :mod:`invertnet.evaluation.results` for the file
itself.

An image that cannot be read (corrupt, too large, an ambiguous integer scale, ...) is skipped and listed with
its reason in the result (:attr:`Evaluation.skipped`); ``bad_images="fail"`` makes the first one an error.

Under ``torchrun`` (an initialised :mod:`torch.distributed` process group, see :func:`process_group`), the
images still to do are dealt to the ranks (image ``k`` of them to rank ``k % world``); after every
reconstruction the ranks exchange their rows (``all_gather_object``) and rank 0 appends them, so the file
is the one a single process writes, up to row order and the ``seconds`` column.

:func:`summarize` gives, per layer and method, the mean of each metric with its 95% Student-t interval:

.. math::

    \bar v \pm t_{0.975,\, n-1} \, \frac{s}{\sqrt n}, \qquad s^2 = \frac{1}{n-1} \sum_i (v_i - \bar v)^2,

over the rows where the metric is finite, undefined (NaN) for fewer than two. Rows whose estimate equals the
input (PSNR :math:`+\infty`) are counted apart as ``perfect``; rows with an undefined metric (the relative
error of an all-zero image) as ``undefined``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from scipy.special import stdtrit
from torch import nn
from torch.utils.data import DataLoader, Dataset

from invertnet.capture.chain import require_module
from invertnet.capture.graph import check_layer
from invertnet.errors import ImageReadError, InvertnetError, OptionError
from invertnet.evaluation.cells import CellRunner
from invertnet.evaluation.results import EvaluationRow, append_rows, content_hash, exclusive_lock, prepare, read_rows
from invertnet.io.files import atomic_write
from invertnet.io.images import READ_SUFFIXES, load_image
from invertnet.pinv import SolveOptions
from invertnet.reconstruction.api import RECONSTRUCTION_METHODS, RELU_MODES, Reconstruction
from invertnet.reconstruction.completion import CompletionOptions
from invertnet.reconstruction.joint import JointOptions

__all__ = [
    "BAD_IMAGES",
    "Evaluation",
    "EvaluationRow",
    "ImageFiles",
    "Process",
    "SkippedImage",
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

#: What :func:`evaluate` does with an image it cannot read: list it and go on, or stop with its error.
BAD_IMAGES = ("skip", "fail")


@dataclass(frozen=True)
class SkippedImage:
    """An image :func:`evaluate` could not read: its path and why."""

    image: str
    reason: str


class Evaluation(list[EvaluationRow]):
    """:func:`evaluate`'s rows (it is their list), and what it skipped and dropped on the way.

    Attributes
    ----------
    skipped : list of SkippedImage
        Images that could not be read, with the reason (none with ``bad_images="fail"``: the first is raised).
    stale : list of EvaluationRow
        Rows of the results file whose image changed since they were computed: dropped from the file, and
        computed again.
    duplicates : int
        Rows found twice in the results file (one key twice): dropped, the first kept.
    """

    def __init__(
        self,
        rows: Iterable[EvaluationRow] = (),
        skipped: Sequence[SkippedImage] = (),
        stale: Sequence[EvaluationRow] = (),
        duplicates: int = 0,
    ) -> None:
        super().__init__(rows)
        self.skipped, self.stale, self.duplicates = list(skipped), list(stale), duplicates


def image_files(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files ``images`` names: a folder (its image files, sorted), a glob (sorted), a file, or a list.

    A list is expanded item by item, in its order. A file named twice (also through another spelling or a
    symlink) is listed once.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.png", "notes.txt"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in image_files(folder)]
    ['a.png', 'b.png']
    >>> [p.name for p in image_files([folder / "b.png", folder, folder / ".." / folder.name / "a.png"])]
    ['b.png', 'a.png']
    """
    if isinstance(images, (str, os.PathLike)):
        found = _expand(os.fspath(images))
    else:
        found = [path for item in images for path in _expand(os.fspath(item))]
        if not found:
            raise ImageReadError("expected image files, folders or glob patterns, got an empty list")
    seen: set[Path] = set()
    unique = []
    for path in found:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append(path)
    return unique


def _expand(text: str) -> list[Path]:
    folder = Path(text)
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READ_SUFFIXES)
        if not found:
            raise ImageReadError(
                f"expected image files ({', '.join(READ_SUFFIXES)}) in folder {text!r}, found none; give another "
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


class ImageFiles(Dataset[tuple[int, torch.Tensor, str]]):
    """Images loaded with :func:`~invertnet.io.images.load_image` (centre crop and resize to ``size``), by index.

    Item ``i`` is ``(indices[i], image, reason)``: ``image`` of shape ``(1, 3, size, size)``, float64 in [0, 1],
    and ``reason`` empty; or, for a file that cannot be read, an empty tensor and why (the error's message).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        indices: Sequence[int],
        size: int | None,
        bits: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.paths, self.indices, self.size = list(paths), list(indices), size
        self.bits, self.max_pixels = bits, max_pixels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        index = self.indices[i]
        try:
            image = load_image(self.paths[index], self.size, bits=self.bits, max_pixels=self.max_pixels)[0]
        except (InvertnetError, OSError) as err:  # a bad image is the dataset's, not the run's: said, skipped
            return index, torch.empty(0), str(err)
        return index, image, ""


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


def _route(result: Reconstruction) -> str:
    if result.method == "joint":
        return "joint"
    route = ">".join(step.route for step in result.steps)
    return route + ">completion" if result.completion is not None else route


def _hashes(paths: Sequence[Path]) -> tuple[dict[str, str], list[SkippedImage]]:
    """The content hash of every file by its resolved path, and the files that cannot be read."""
    hashes, unreadable = {}, []
    for path in paths:
        try:
            hashes[str(path.resolve())] = content_hash(path)
        except OSError as err:
            unreadable.append(SkippedImage(str(path.resolve()), f"cannot read {str(path)!r}: {err.strerror or err}"))
    return hashes, unreadable


class _Plan(NamedTuple):
    """What rank 0 found: the images (resolved), their hashes, the rows done, and what was dropped or skipped."""

    paths: list[Path]
    hashes: dict[str, str]
    done: list[EvaluationRow]
    stale: list[EvaluationRow]
    duplicates: int
    unreadable: list[SkippedImage]


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
    completion: CompletionOptions | None = None,
    model_name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    bits: int | None = None,
    max_pixels: int | None = None,
    bad_images: str = "skip",
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Reconstruct every image from every layer with every method; one row each.

    Parameters
    ----------
    model : nn.Module
        As for :func:`~invertnet.reconstruction.api.reconstruct` (its dtype and device are used), the same on every
        rank of a distributed run (checked by :func:`model_fingerprint`).
    images : path, glob or sequence of them
        See :func:`image_files`.
    layers, methods : sequence of str
        Layer names and methods of :data:`~invertnet.reconstruction.api.RECONSTRUCTION_METHODS`, each once; checked
        before any work.
    size : int, optional
        Centre-crop and resize every image to ``size x size`` (:func:`~invertnet.io.images.load_image`).
    maxpool, relu, options, joint, completion
        Passed to every :func:`~invertnet.reconstruction.api.reconstruct` call (``joint`` to the ``"joint"`` ones,
        ``completion`` to the ``"auto"`` ones).
    model_name : str, optional
        The ``model`` column (default: the model's class name).
    out : path, optional
        Results file (CSV, one row a line; :mod:`invertnet.evaluation.results`), locked for the run. Rows already in it
        are skipped (their image's resolved path and content hash match); rows of an image whose content changed are
        dropped and computed again; rows of other settings are refused unless ``overwrite``, which starts the
        file over (as it does a file that is damaged or not UTF-8).
    num_workers : int, default 0
        Processes of the :class:`~torch.utils.data.DataLoader` that load and resize images ahead.
    bits, max_pixels
        Passed to :func:`~invertnet.io.images.load_image` (``bits`` is recorded with the rows' settings).
    bad_images : {"skip", "fail"}
        An image that cannot be read: list it in :attr:`Evaluation.skipped` and go on, or raise its error.
    progress : callable, optional
        Called with a line for every finished row and every skipped image.

    Returns
    -------
    Evaluation
        The list of :class:`~invertnet.evaluation.results.EvaluationRow`, one per (image, layer, method) of the images
        read, the ones read from ``out`` included, image-major in the order of ``images``, ``layers`` and ``methods``
        (on every rank of a distributed run); with the images skipped and the rows dropped.

    Raises
    ------
    ImageReadError
        ``images`` names no image file; with ``bad_images="fail"``, an image that cannot be read (or the error
        :func:`~invertnet.io.images.load_image` raised for it).
    OptionError, LayerNotFoundError
        An unknown, repeated or missing method or layer, or an unknown ``bad_images``.
    ResultsFileError
        ``out`` holds rows of other settings, other columns, a damaged line or bytes that are not UTF-8, or
        another run is writing it.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from invertnet import CReLU
    >>> from invertnet.io.files import save_image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(2):
    ...     save_image(torch.rand(3, 12, 12), folder / f"{i}.png")
    >>> _ = (folder / "2.png").write_text("not an image")
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU()).double()
    >>> rows = evaluate(net, folder, ["1"], ["patch"], out=folder / "results.csv")
    >>> [(pathlib.Path(r.image).name, r.route, r.exact, r.psnr > 100) for r in rows]
    [('0.png', 'invert_crelu>patch', True, True), ('1.png', 'invert_crelu>patch', True, True)]
    >>> [(pathlib.Path(s.image).name, "not recognise as an image" in s.reason) for s in rows.skipped]
    [('2.png', True)]
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
    if bad_images not in BAD_IMAGES:
        raise OptionError(f"evaluate: expected bad_images in {BAD_IMAGES}, got {bad_images!r}")
    for layer in layers:
        check_layer(model, layer)
    rank, world = _world()
    settings: dict[str, Any] = {
        "model_sha256": model_fingerprint(model),
        "size": size,
        "bits": bits,
        "dtype": _dtype(model),
        "maxpool": maxpool,
        "relu": relu,
        "solve": repr(options) if options is not None else "",
        "joint": repr(joint) if joint is not None else "",
        "completion": repr(completion or CompletionOptions()),  # the effective options: None and the default agree
    }
    hashes = _exchange(settings["model_sha256"], world)
    if len(set(hashes)) > 1:
        raise OptionError(
            f"evaluate: expected the same model on every rank, got weights hashes {hashes}; seed its initialisation "
            "or load weights"
        )

    # Rank 0 lists the images, locks and reads the file; every rank gets the plan (or the error) from it.
    with contextlib.ExitStack() as held:
        plan: _Plan | None = None
        error: BaseException | None = None
        if rank == 0:
            try:
                paths = image_files(images)
                files, unreadable = _hashes(paths)
                if unreadable and bad_images == "fail":
                    raise ImageReadError(unreadable[0].reason)
                prepared = None
                if out is not None:
                    held.enter_context(exclusive_lock(out))
                    prepared = prepare(Path(out), settings, files, overwrite)
                plan = _Plan(
                    [p.resolve() for p in paths],
                    files,
                    prepared.rows if prepared else [],
                    prepared.stale if prepared else [],
                    prepared.duplicates if prepared else 0,
                    unreadable,
                )
            except Exception as err:  # every rank raises it, not only rank 0
                error = err
        plan, error = _broadcast((plan, error), world)
        _raise_first([error])
        if plan is None:  # only with an error, raised above
            raise RuntimeError("evaluate: rank 0 sent no plan")
        return _run(
            model,
            layers,
            methods,
            plan,
            settings,
            size,
            bits,
            max_pixels,
            bad_images,
            rank,
            world,
            out if rank == 0 else None,
            model_name,
            num_workers,
            progress,
            dict(maxpool=maxpool, relu=relu, options=options, joint=joint, completion=completion),
        )


def _run(
    model: nn.Module,
    layers: list[str],
    methods: list[str],
    plan: _Plan,
    settings: dict[str, Any],
    size: int | None,
    bits: int | None,
    max_pixels: int | None,
    bad_images: str,
    rank: int,
    world: int,
    out: str | os.PathLike[str] | None,
    model_name: str | None,
    num_workers: int,
    progress: Callable[[str], None] | None,
    how: dict[str, Any],
) -> Evaluation:
    """The rows still to do, dealt to the ranks, computed, exchanged and appended (by rank 0, to ``out``)."""
    names = [str(p) for p in plan.paths]
    skipped = list(plan.unreadable)
    readable = [i for i, name in enumerate(names) if name in plan.hashes]
    done = {row.key for row in plan.done}
    todo = [(i, layer, m) for i in readable for layer in layers for m in methods if (names[i], layer, m) not in done]
    per_image = Counter(i for i, _, _ in todo)
    pending = list(per_image)  # images with rows to do, in order: image k of them goes to rank k % world
    mine = pending[rank::world]
    cells = [cell for cell in todo if cell[0] in set(mine)]
    rounds = max(sum(per_image[i] for i in pending[r::world]) for r in range(world))

    label = model_name or type(model).__name__
    loader = DataLoader(ImageFiles(plan.paths, mine, size, bits, max_pixels), batch_size=None, num_workers=num_workers)
    loaded = iter(loader)
    current: tuple[int, torch.Tensor, str] | None = None
    new: list[EvaluationRow] = []
    fd = os.open(out, os.O_WRONLY | os.O_APPEND) if out is not None else None
    runner = CellRunner(model, **how)
    try:
        for r in range(rounds):
            row, error, skip = None, None, None
            if r < len(cells):
                index, layer, method = cells[r]
                try:
                    if current is None or current[0] != index:
                        current = next(loaded)
                        if current[2]:
                            if bad_images == "fail":
                                raise ImageReadError(current[2])
                            skip = SkippedImage(names[index], current[2])
                    if not current[2]:
                        result, seconds = runner.run(current[1], layer, method)
                        row = EvaluationRow(
                            names[index],
                            plan.hashes[names[index]],
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
                where = f"rank {rank}: " if world > 1 else ""
                if progress is not None and row is not None:
                    progress(f"{where}{row.image} {layer} {method}: PSNR {row.psnr:.2f} dB in {row.seconds:.1f} s")
                if progress is not None and skip is not None:
                    progress(f"{where}skipped {skip.image}: {skip.reason}")
            exchanged = _exchange((row, error, skip), world)
            arrived = [row for row, _, _ in exchanged if row is not None]
            if fd is not None and arrived:
                append_rows(fd, arrived)
            new += arrived
            skipped += [skip for _, _, skip in exchanged if skip is not None]
            _raise_first([error for _, error, _ in exchanged])
    finally:
        if fd is not None:
            os.close(fd)
    order = {key: n for n, key in enumerate((name, layer, m) for name in names for layer in layers for m in methods)}
    rows = {row.key: row for row in [*plan.done, *new] if row.key in order}
    position = {name: n for n, name in enumerate(names)}
    skipped.sort(key=lambda s: position.get(s.image, len(names)))
    return Evaluation(sorted(rows.values(), key=lambda row: order[row.key]), skipped, plan.stale, plan.duplicates)


@dataclass(frozen=True)
class SummaryRow:
    r"""Per layer and method: the number of rows, each metric's mean and the half-width of its 95% interval.

    Means and intervals are over the rows where the metric is finite; a half-width is NaN for fewer than two
    such rows, a mean NaN for none. ``perfect`` counts the rows whose estimate equals the input (PSNR
    :math:`+\infty`: left out of the PSNR mean); ``undefined`` counts the rows with a non-finite SSIM, relative
    error or feature residual (e.g. the relative error of an all-zero image: left out of that metric's mean).
    ``exact`` is the share of exact rows, ``seconds`` the mean time.
    """

    layer: str
    method: str
    n: int
    perfect: int
    undefined: int
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
    """Mean and half-width of the Student-t interval of the finite values (NaN for none, resp. fewer than two)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan
    t = float(stdtrit(array.size - 1, (1 + confidence) / 2))  # Student's t quantile (scipy.stats.t.ppf)
    return mean, t * float(array.std(ddof=1)) / math.sqrt(array.size)


def summarize(rows: Sequence[EvaluationRow], confidence: float = 0.95) -> list[SummaryRow]:
    """Per (layer, method), in the order they first appear: means with their ``confidence`` t-intervals.

    Examples
    --------
    >>> row = EvaluationRow("a.png", "0", "conv1", "auto", 30.0, 0.9, 0.1, 0.0, True, False, "lsqr", 1.0,
    ...                     "m", "0", 32, None, "float64", "switches", "active_set", "", "")
    >>> s = summarize([row, dataclasses.replace(row, image="b.png", psnr=32.0, exact=False)])[0]
    >>> s.n, s.psnr, round(s.psnr_ci, 3), s.exact
    (2, 31.0, 12.706, 0.5)
    >>> black = dataclasses.replace(row, image="black.png", psnr=math.inf, relative_error=math.nan)
    >>> s = summarize([row, black])[0]
    >>> s.n, s.perfect, s.undefined, s.psnr, s.relative_error
    (2, 1, 1, 30.0, 0.1)
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
            perfect = sum(r.psnr == math.inf for r in group)
            undefined = sum(
                not all(math.isfinite(v) for v in (r.ssim, r.relative_error, r.feature_residual)) for r in group
            )
            exact = sum(r.exact for r in group) / len(group)
            seconds = sum(r.seconds for r in group) / len(group)
            summary.append(
                SummaryRow(layer, method, len(group), perfect, undefined, exact=exact, seconds=seconds, **metrics)
            )
    return summary


def _mean_text(mean: float, ci: float, digits: int) -> str:
    """``31.02 ± 0.40``; the mean alone without an interval; ``--`` without a mean."""
    if math.isnan(mean):
        return "--"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if math.isfinite(ci) else "")


def format_summary(summary: Sequence[SummaryRow]) -> str:
    """The summary as text: layer, method, n, PSNR mean ± half-width, SSIM, exact share, seconds per image.

    PSNR is the mean over the rows that are not perfect (the ``perfect`` column counts those: the estimate
    equals the input); a mean of one row has no interval, a mean of none is ``--``.
    """
    lines = [
        f"{'layer':<12} {'method':<7} {'n':>5} {'perfect':>7} {'PSNR dB (95% CI)':>19} {'SSIM':>7} {'exact':>6} "
        f"{'s/image':>8}"
    ]
    lines += [
        f"{s.layer:<12} {s.method:<7} {s.n:>5} {s.perfect:>7} {_mean_text(s.psnr, s.psnr_ci, 2):>19} "
        f"{_mean_text(s.ssim, math.nan, 4):>7} {s.exact:>6.0%} {s.seconds:>8.2f}"
        for s in summary
    ]
    undefined = [f"{s.layer} {s.method}: {s.undefined}" for s in summary if s.undefined]
    if undefined:
        lines.append(f"rows with an undefined metric (left out of its mean): {', '.join(undefined)}")
    return "\n".join(lines)


def write_summary(summary: Sequence[SummaryRow], path: str | os.PathLike[str]) -> None:
    """Write the summary as CSV (one row per layer and method), atomically."""
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(f.name for f in dataclasses.fields(SummaryRow))
        writer.writerows([repr(v) if isinstance(v, float) else v for v in dataclasses.astuple(s)] for s in summary)
