"""Images and weights in and out.

- :func:`load_image` (from :mod:`invertnet.io.images`): an image file -> ``(1, 3, S, S)`` float tensor in [0, 1]
  and a note on what was converted.
- :func:`save_image`: a ``(C, H, W)`` or ``(1, C, H, W)`` tensor -> 8-bit PNG, values clipped to
  [0, 1], written atomically.
- :func:`load_weights`: a state dict from ``.pt``/``.pth`` (``torch.load(weights_only=True)``: no
  arbitrary code is unpickled) or ``.safetensors``, loaded strictly into a model.
- :func:`atomic_write`: write to a temporary file beside the target and rename it into place,
  so that no half-written file is ever left behind.
- :func:`check_image_path`: refuse an output name whose extension :func:`save_image` cannot write,
  before any work is done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from skimage import io
from skimage.util import img_as_ubyte
from torch import nn

from invertnet.errors import (
    ArgumentTypeError,
    NonFiniteError,
    OutputPathError,
    ShapeError,
    WeightsError,
)
from invertnet.io.images import MAX_IMAGE_SIZE, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_SIZE",
    "atomic_write",
    "check_image_path",
    "load_image",
    "load_state_dict",
    "load_weights",
    "save_image",
]

#: The extensions :func:`save_image` writes (8-bit, through scikit-image / imageio).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def check_suffix(path: str | os.PathLike[str], suffixes: tuple[str, ...], what: str) -> Path:
    """Return ``path`` if its extension is one of ``suffixes``; raise :class:`OutputPathError` saying which are."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        got = repr(path.suffix) if path.suffix else "no extension"
        raise OutputPathError(
            f"expected {what} ending in {', '.join(suffixes)}, got {str(path)!r} with {got}; "
            f"add an extension, e.g. {path.stem or 'out'}{'.png' if '.png' in suffixes else suffixes[0]}"
        )
    return path


def check_image_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if :func:`save_image` can write its extension; raise :class:`OutputPathError` otherwise."""
    return check_suffix(path, IMAGE_SUFFIXES, "an image file name")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` only on success.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_write(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot write {str(path)!r}: it is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputPathError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    tmp: Path | None = None
    try:
        # signals wait until ``tmp`` is known, so that the ``finally`` below always sees the file it must remove
        with _signals_deferred():
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
            tmp = Path(name)
            os.close(fd)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP (where the platform can) while the block runs; deliver them after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def save_image(image: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write a ``(C, H, W)`` or ``(1, C, H, W)`` tensor in [0, 1] as an 8-bit image (clipped), atomically.

    ``C`` is 1 (grey), 3 (RGB) or 4 (RGBA); the extension is one of :data:`IMAGE_SUFFIXES`.
    """
    check_image_path(path)
    if not isinstance(image, torch.Tensor):
        raise ArgumentTypeError(f"save_image: expected a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ShapeError(
            f"save_image: expected one image of shape (C, H, W) or (1, C, H, W) with C in 1, 3, 4, got "
            f"{tuple(image.shape)}; save the images of a batch one by one"
        )
    if not bool(torch.isfinite(image).all()):
        raise NonFiniteError(f"save_image: expected finite values, got {int((~torch.isfinite(image)).sum())} NaN/Inf")
    array = image.detach().cpu().double().clamp(0, 1).numpy().transpose(1, 2, 0)
    if array.shape[-1] == 1:
        array = array[..., 0]
    with atomic_write(path) as tmp:
        io.imsave(tmp, img_as_ubyte(array), check_contrast=False)


def _head(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(n)
    except OSError as err:
        raise WeightsError(f"expected a readable weights file, got {str(path)!r}: {err.strerror or err}") from None


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON object that fits in the file."""
    head = _head(path, 9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _looks_like_torch(path: Path) -> bool:
    """A file ``torch.save`` wrote: a zip archive (since torch 1.6) or a pickle (protocol 2 and up)."""
    return _head(path, 4) == b"PK\x03\x04" or _head(path, 1) == b"\x80"


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or from a torch file with ``weights_only=True``.

    The format is read from the file's first bytes, not its name (a safetensors file named ``.pt`` reads).

    Raises
    ------
    WeightsError
        Missing file, unreadable content, something that is not a mapping of names to tensors,
        or a file that would need arbitrary code to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"expected a weights file, got {str(path)!r}, which does not exist or is not a file")
    if _looks_like_safetensors(path) or (path.suffix.lower() == ".safetensors" and not _looks_like_torch(path)):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError on corrupt headers
            raise WeightsError(f"expected a valid .safetensors file, got {str(path)!r}: {err}") from None
    try:
        with path.open("rb") as handle:  # a file object: torch 2.13 reads a path ending in .safetensors as safetensors
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; the file is unusable either way
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        first = f"{type(err).__name__}: {first}" if len(first) < 20 else first
        if "Weights only load failed" in first:  # torch's long advice to unpickle anyway: not ours to give
            first = "it holds pickled objects other than tensors (a whole model?); save model.state_dict() instead"
        raise WeightsError(
            f"expected a state dict saved with torch.save (readable with weights_only=True) or a .safetensors file, "
            f"got {str(path)!r}: {first}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"expected a mapping of parameter names to tensors in {str(path)!r}, got {type(state).__name__}; "
            "save model.state_dict(), not the model"
        )
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a state dict file into ``model`` strictly (every name and shape must match); returns ``model``.

    Raises
    ------
    WeightsError
        See :func:`load_state_dict`; also weights that do not fit ``model``.
    NonFiniteError
        A floating-point tensor with NaN or infinite entries (named in the message).
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"load_weights: expected an nn.Module, got {type(model).__name__}")
    state = load_state_dict(path)
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteError(
                f"expected finite weights, got {bad} of {tensor.numel()} entries of {name!r} NaN or infinite in "
                f"{str(path)!r}; the training diverged or the file is damaged"
            )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " ".join(lines[1:3])[:300]
        raise WeightsError(
            f"expected weights for {type(model).__name__} with the same names and shapes, got {str(path)!r} that does "
            f"not fit: {detail}; check --model or the file"
        ) from None
    return model
