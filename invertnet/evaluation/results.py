"""The results file of :func:`~invertnet.evaluation.evaluate.evaluate`: its rows, its format, its lock, and resuming it.

A results file is CSV: a header of :data:`COLUMNS`, then one :class:`EvaluationRow` a line, floats by ``repr``
(they read back bit for bit). Rows are appended as complete lines and flushed to the disk one by one; a line cut
short by a crash is dropped when the file is next opened.

What keeps a file right:

- one writer at a time: :func:`exclusive_lock` holds ``<file>.lock`` (``fcntl.flock``; ``msvcrt.locking`` on
  Windows) for the whole run, and a second writer is refused naming the file. The lock is released by the
  kernel when the process dies, so a killed run never leaves a stale lock;
- rows are keyed by the image's resolved path (``photos/a.png`` and ``../x/photos/a.png`` are one image) and
  carry a hash of its content: :func:`prepare` drops (and says) the rows of an image whose content changed,
  and duplicate rows, rewriting the file atomically;
- a file of other settings, other columns, a damaged line or bytes that are not UTF-8 is refused naming the
  file, unless the caller asks to start it over.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invertnet.errors import ResultsFileError
from invertnet.io.files import atomic_write

__all__ = [
    "COLUMNS",
    "SETTINGS",
    "EvaluationRow",
    "Prepared",
    "append_rows",
    "content_hash",
    "exclusive_lock",
    "lock_path",
    "prepare",
    "read_rows",
]


@dataclass(frozen=True)
class EvaluationRow:
    """One reconstruction of one image from one layer with one method, and the settings it was made with.

    Attributes
    ----------
    image : str
        The image file, its resolved absolute path (the key of the row, with ``layer`` and ``method``).
    image_sha256 : str
        :func:`content_hash` of the file the row was computed from: a resumed run recomputes the rows of an
        image whose content changed.
    layer, method : str
    psnr, ssim, relative_error, feature_residual : float
        As in :class:`~invertnet.reconstruction.api.Reconstruction` (``data_range`` 1).
    exact, closed_form : bool
        As in :class:`~invertnet.reconstruction.api.Reconstruction`.
    route : str
        The routes of the steps from ``layer`` down to the input, joined by ``">"``; ``"joint"`` for the
        joint inversion.
    seconds : float
        Wall-clock time of the reconstruction (forward pass included, image loading not). The first row of a
        layer in each process also pays one-time costs (lazy imports, the cached window factorisation of
        :mod:`invertnet.pinv.windows`): 2 s against 0.03 s for ConvPool-CNN-C's conv1 at 32 px.
    model : str
        The name the model was given (``--model``), for reading; ``model_sha256`` identifies it.
    model_sha256 : str
        :func:`~invertnet.evaluation.evaluate.model_fingerprint` of the model (its structure and every tensor of its
        state).
    size : int or None
        The side images were resized to (None: their own size).
    bits : int or None
        The bit depth integer pixels were read with (None: as :func:`~invertnet.io.images.load_image` reads the file).
    dtype, maxpool, relu, solve, joint, completion : str
        The model's dtype, the unpooling mode, how clipping activations were read, and the ``repr`` of the
        options (empty: the defaults; ``completion`` the effective options, defaults spelled out).
    """

    image: str
    image_sha256: str
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
    bits: int | None
    dtype: str
    maxpool: str
    relu: str
    solve: str
    joint: str
    completion: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """``(image, layer, method)``: what a resumed run skips (when ``image_sha256`` still matches)."""
        return (self.image, self.layer, self.method)


#: The columns of a results file, in order.
COLUMNS = tuple(f.name for f in dataclasses.fields(EvaluationRow))
#: The columns every row of one file shares (``model`` is a label: the hash identifies the model).
SETTINGS = ("model_sha256", "size", "bits", "dtype", "maxpool", "relu", "solve", "joint", "completion")
_START_OVER = "start over (overwrite=True, --force)"


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


def _lines(rows: list[EvaluationRow]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(_cells(row) for row in rows)
    return buffer.getvalue()


def _parse(cells: list[str], where: str) -> EvaluationRow:
    if len(cells) != len(COLUMNS):
        raise ResultsFileError(
            f"{where}: expected {len(COLUMNS)} fields, got {len(cells)}; the file was edited or is damaged: fix "
            f"the line or {_START_OVER}"
        )
    values = {}
    for field, cell in zip(dataclasses.fields(EvaluationRow), cells, strict=True):
        try:
            values[field.name] = _PARSE[str(field.type)](cell)
        except ValueError as err:
            raise ResultsFileError(
                f"{where}: column {field.name!r}: {err}; the file was edited or is damaged: fix the line or "
                f"{_START_OVER}"
            ) from None
    return EvaluationRow(**values)


def _read(path: Path) -> tuple[list[EvaluationRow], int, bool]:
    """Rows of a results file, the byte length of its complete lines, and whether it has a header.

    A last line without its newline (a write cut short) is left out of both.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ResultsFileError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    complete = data.rfind(b"\n") + 1
    try:
        text = data[:complete].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResultsFileError(
            f"{str(path)!r}: expected a results file of invertnet evaluate (UTF-8 text), got bytes that are not "
            f"UTF-8 (at byte {err.start}); choose another file, or {_START_OVER}"
        ) from None
    lines = text.splitlines()
    if not lines:
        return [], complete, False
    header = next(csv.reader([lines[0]]))
    if tuple(header) != COLUMNS:
        older = " (written by an older invertnet, without image hashes)" if "image_sha256" not in header else ""
        raise ResultsFileError(
            f"{str(path)!r}: expected the columns of an evaluation ({', '.join(COLUMNS)}), got {', '.join(header)}"
            f"{older}; choose another file, or {_START_OVER}"
        )
    rows = [_parse(cells, f"{str(path)!r}, line {n}") for n, cells in enumerate(csv.reader(lines[1:]), start=2)]
    return rows, complete, True


def read_rows(path: str | os.PathLike[str]) -> list[EvaluationRow]:
    """The rows of a results file (a last line cut short is left out).

    Raises
    ------
    ResultsFileError
        Other columns than :class:`EvaluationRow`'s, a complete line that does not parse, or bytes that are
        not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"expected a results file of invertnet evaluate, got {str(path)!r}, which is not a file")
    return _read(path)[0]


def content_hash(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the SHA-256 of a file's bytes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = path.write_bytes(b"abc")
    >>> content_hash(path)
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def lock_path(out: str | os.PathLike[str]) -> Path:
    """The lock file of a results file: ``results.csv`` -> ``results.csv.lock`` (there while a run holds it)."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - not run on the CI's Linux
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the lock of results file ``out`` for the block; a second holder is refused naming the file.

    The lock is ``flock`` on :func:`lock_path` (released by the kernel when the process ends, however it ends);
    the lock file is removed when the block ends.

    Raises
    ------
    ResultsFileError
        Another process holds the lock.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "results.csv"
    >>> with exclusive_lock(out) as lock:
    ...     with exclusive_lock(out):
    ...         pass
    Traceback (most recent call last):
    ...
    invertnet.errors.ResultsFileError: ...results.csv' is being written by another run (it holds ...
    >>> lock.exists()
    False
    """
    lock = lock_path(out)
    for _ in range(10):  # another holder may remove the file between our open and our lock: open it again
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ResultsFileError(f"cannot create the lock file {str(lock)!r}: {err.strerror or err}") from None
        if not _try_lock(fd):
            os.close(fd)
            raise ResultsFileError(
                f"{str(out)!r} is being written by another run (it holds {str(lock)!r}); wait for it to finish, or "
                "choose another file"
            )
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:  # pragma: no cover - ten races in a row
        raise ResultsFileError(f"could not lock {str(out)!r}: {str(lock)!r} kept changing; try again")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a waiting opener sees another inode and opens again
        os.close(fd)


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` found in a results file: the rows kept, and the rows it dropped and why."""

    rows: list[EvaluationRow]
    stale: list[EvaluationRow]
    duplicates: int


def prepare(out: Path, settings: dict[str, Any], hashes: dict[str, str], overwrite: bool) -> Prepared:
    """Rows already in ``out`` (checked against ``settings``); the file ends with a complete line after this.

    ``hashes`` maps the resolved paths of this run's images to their :func:`content_hash`: a row of one of them
    with another hash is stale, and dropped. Duplicate rows (one key twice) keep the first. The file is rewritten
    atomically when rows are dropped; a file that does not exist, or (with ``overwrite``) one that cannot be
    resumed, starts over with the header.
    """
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
                f"{_START_OVER}, or choose another file"
            )
        if differ:
            rows, has_header = [], False
            break
    changed = [row.image in hashes and row.image_sha256 != hashes[row.image] for row in rows]
    stale = [row for row, old in zip(rows, changed, strict=True) if old]
    kept: dict[tuple[str, str, str], EvaluationRow] = {}
    for row, old in zip(rows, changed, strict=True):
        if not old:
            kept.setdefault(row.key, row)
    duplicates = len(rows) - len(stale) - len(kept)
    if not has_header or stale or duplicates:
        with atomic_write(out) as tmp:
            tmp.write_text(",".join(COLUMNS) + "\n" + _lines(list(kept.values())), encoding="utf-8")
    elif complete < out.stat().st_size:
        os.truncate(out, complete)  # a line cut short by a crash
    return Prepared(list(kept.values()), stale, duplicates)


def append_rows(fd: int, rows: list[EvaluationRow]) -> None:
    """Append complete lines and flush them to the disk (a signal waits for Python's next bytecode)."""
    data = _lines(rows).encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)
