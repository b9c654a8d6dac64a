"""Image files in: decoded as their owners see them, or refused saying why.

:func:`load_image` reads PNG, JPEG, GIF, BMP, WebP, ... with Pillow and TIFF with tifffile (any dtype, planar
samples, CMYK, extra samples), and returns a ``(1, 3, H, W)`` float64 tensor in [0, 1] with a note that says
every conversion: greyscale replicated, alpha composited over white, CMYK and other colour spaces converted,
a palette looked up, the EXIF orientation applied, the scale of integer pixels (by the range their values use
where the file does not fix it; refused where that is ambiguous, unless ``bits`` says), values clipped, the
centre crop and the resize. The size is checked from the header before decoding, against
``PIL.Image.MAX_IMAGE_PIXELS`` (or ``max_pixels``); an image of several frames or pages is refused.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from skimage import transform

from invertnet.errors import DTypeError, ImageReadError, InvertnetError, NonFiniteError, OptionError, TooLargeError

__all__ = ["MAX_IMAGE_SIZE", "READ_SUFFIXES", "load_image", "pixel_limit"]

#: Extensions of the image files a folder is listed for (:func:`invertnet.evaluation.evaluate.image_files`).
READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")

#: Largest side :func:`load_image` resizes to: a 3 x 4096 x 4096 float64 image is already 384 MiB,
#: and every layer's features and the inversion's buffers are larger still.
MAX_IMAGE_SIZE = 4096


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        why = (
            f"a {size}x{size} RGB image alone takes {3 * 8 * size**2 / 2**30:.0f} GiB in float64"
            if isinstance(size, int) and size > MAX_IMAGE_SIZE
            else "pass a positive side such as 224"
        )
        raise OptionError(
            f"load_image: expected an int size in [1, {MAX_IMAGE_SIZE}] (or None to keep the image's size), "
            f"got {size!r}; {why}"
        )
    return size


#: Readers of the formats Pillow decodes; TIFF goes through tifffile (any dtype, planar, CMYK, extra samples).
_TIFF_SUFFIXES = (".tif", ".tiff")
#: Above this many pixels an image is first shrunk by an integer factor in Pillow (a box filter, in C) before
#: scikit-image's anti-aliased resize: the float64 copy of a 121-megapixel image alone is 2.9 GB.
_REDUCE_ABOVE = MAX_IMAGE_SIZE * MAX_IMAGE_SIZE
_PILLOW_LIMIT = threading.Lock()


def pixel_limit() -> int | None:
    """The largest image :func:`load_image` decodes by default: Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``, read now."""
    return Image.MAX_IMAGE_PIXELS


def _read_error(path: Path, why: str) -> ImageReadError:
    return ImageReadError(f"expected an image file, got {str(path)!r}, {why}")


def _check_pixels(path: Path, width: int, height: int, frames: int, limit: int | None) -> None:
    """Refuse several frames, and more pixels than ``limit`` (None or 0: none), from the header."""
    if frames > 1:
        raise _read_error(path, f"which holds {frames} frames or pages; save the one you want as an image of its own")
    if limit and width * height > limit:
        raise TooLargeError(
            f"expected an image of at most {limit:,} pixels, got {str(path)!r}, {width}x{height} = "
            f"{width * height:,} pixels by its header (about {3 * 8 * width * height / 2**30:.1f} GiB as float64 RGB, "
            "before any resizing); raise the limit if you mean it: --max-pixels N, load_image(..., max_pixels=N) or "
            "PIL.Image.MAX_IMAGE_PIXELS (0 or None: no limit)"
        )


@contextlib.contextmanager
def _pillow_unlimited() -> Iterator[None]:
    """Pillow's own bomb check off while the block runs: :func:`_check_pixels` checks the caller's limit by name.

    (Pillow refuses an image over twice its limit inside ``Image.open``, with a message that gives no size.)
    """
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _first_bytes(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(12)
    return repr(head) + ("..." if len(head) == 12 else "")


#: Pillow modes converted before reading, and what they become.
_CONVERT = {"1": "L", "RGBa": "RGBA", "La": "LA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _decode_pillow(path: Path, size: int | None, max_pixels: int | None) -> tuple[np.ndarray, list[str], str]:
    """The pixels Pillow decodes, as greyscale, grey+alpha, RGB or RGBA (uint8, or wider integers, or float32).

    Returns the array, notes on conversions, and the format's name.
    """
    notes: list[str] = []
    limit = pixel_limit() if max_pixels is None else max_pixels
    with _pillow_unlimited(), Image.open(path) as opened:
        image: Image.Image = opened
        kind = image.format or path.suffix.lstrip(".").upper()
        _check_pixels(path, *image.size, int(getattr(image, "n_frames", 1)), limit)
        if image.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None):
            image = ImageOps.exif_transpose(image)
            notes.append("turned upright as its EXIF orientation says")
        mode = image.mode
        if mode in ("P", "PA"):
            image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
            notes.append("palette colours looked up")
        elif mode in _CONVERT:
            image = image.convert(_CONVERT[mode])
            if mode not in ("1", "RGBa", "La"):
                notes.append(f"{mode} converted to RGB" + (" (no colour profile applied)" if mode == "CMYK" else ""))
        elif mode.startswith("I;16") and mode != "I;16":
            image = image.convert("I")  # big-endian and native 16-bit: as 32-bit integers of the same values
        if size is not None and image.width * image.height > _REDUCE_ABOVE:
            factor = min(image.size) // (2 * size)
            if factor > 1:
                notes.append(f"{image.width}x{image.height} shrunk {factor}x (averages of {factor}x{factor} blocks)")
                image = image.reduce(factor)
        array = np.asarray(image)
    if mode.startswith("I;16"):
        array = array.astype(np.uint16, copy=False)
    return array, notes, kind


def _tiff_axes(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    if axes == "YX" or axes == "YXS":
        return array
    if axes == "SYX":
        return np.moveaxis(array, 0, -1)
    raise ImageReadError(
        f"expected a TIFF whose page is a 2-D image (axes YX, YXS or SYX), got {str(path)!r} with axes {axes!r}; "
        "save the image you want as a 2-D TIFF or PNG"
    )


def _decode_tiff(path: Path, size: int | None, max_pixels: int | None) -> tuple[np.ndarray, list[str], str]:
    """The only page of a TIFF through tifffile, any dtype; CMYK converted, planar samples moved last.

    A TIFF that tifffile cannot decode (e.g. JPEG-compressed without ``imagecodecs``) is tried with Pillow.
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            shape = dict(zip(page.axes, page.shape, strict=True))
            _check_pixels(path, shape.get("X", 0), shape.get("Y", 0), len(tif.pages), limit)
            array = _tiff_axes(page.asarray(), page.axes, path)
            photometric = page.photometric
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, OSError) as err:
        if isinstance(err, InvertnetError):
            raise
        try:
            return _decode_pillow(path, size, max_pixels)
        except Exception:  # Pillow cannot either: tifffile's reason is the one to give
            raise ImageReadError(f"expected a TIFF image tifffile can read, got {str(path)!r}: {err}") from None
    notes: list[str] = []
    if photometric == tifffile.PHOTOMETRIC.SEPARATED and array.ndim == 3 and array.shape[-1] >= 4:
        if not np.issubdtype(array.dtype, np.integer):
            raise ImageReadError(f"expected integer CMYK samples, got {array.dtype} ones in {str(path)!r}")
        ink = array[..., :4] / float(np.iinfo(array.dtype).max)
        array = (1 - ink[..., :3]) * (1 - ink[..., 3:4])
        notes.append("CMYK converted to RGB (no colour profile applied)")
    elif photometric == tifffile.PHOTOMETRIC.MINISWHITE and np.issubdtype(array.dtype, np.integer):
        array = np.iinfo(array.dtype).max - array
        notes.append("inverted (the file stores white as 0)")
    return array, notes, "TIFF"


def _scaled(array: np.ndarray, full: int) -> np.ndarray:
    """``array / full`` in float64, rounded as scikit-image's ``img_as_float64`` rounds (times ``1 / full``)."""
    return array.astype(np.float64) * (1.0 / full)


def _integer_scale(array: np.ndarray, kind: str, bits: int | None, path: Path) -> tuple[np.ndarray, str]:
    """Integer pixels to [0, 1]: by ``bits`` when given, 8-bit as 8-bit, 16-bit PNG by its spec, else by the range.

    A file whose dtype does not fix the scale (a 16- or 32-bit TIFF) is read on the smallest scale that holds
    its values when that is clear: values up to 255 are 8-bit; values in the top half of the dtype's range are
    full-scale. Between the two (a 16-bit TIFF with values up to 3000: 12-bit, or a dark 16-bit image?) it is
    refused, naming both readings, unless ``bits`` says.
    """
    dtype = array.dtype
    if dtype == np.bool_:
        return array.astype(np.float64), ""
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise DTypeError(
            f"expected non-negative pixel values, got {str(path)!r}, a {kind} of {dtype} with values down to {low}; "
            "no scale maps them to [0, 1]: convert it to floats in [0, 1] first"
        )
    if bits is not None:
        if high > 2**bits - 1:
            raise OptionError(
                f"expected values of at most {2**bits - 1} for bits={bits}, got {high} in {str(path)!r}; pass the "
                f"file's bit depth (at least {high.bit_length()})"
            )
        return _scaled(array, 2**bits - 1), f"{bits}-bit values as told (divided by {2**bits - 1})"
    width = 8 * dtype.itemsize - (1 if np.issubdtype(dtype, np.signedinteger) else 0)
    if dtype == np.uint8 or (kind == "PNG" and dtype == np.uint16):
        return _scaled(array, 2**width - 1), ""
    if high <= 255:
        note = f"{dtype} {kind} holding 8-bit values (max {high}): divided by 255 (--bits {width} if it is not)"
        return _scaled(array, 255), note
    if high >= 2 ** (width - 1):
        return _scaled(array, 2**width - 1), f"{width}-bit values (max {high}): divided by {2**width - 1}"
    fits = high.bit_length()
    raise DTypeError(
        f"expected pixel values whose scale is clear, got {str(path)!r}, a {dtype} {kind} with values up to {high}: "
        f"{fits}-bit (divided by {2**fits - 1}) or {width}-bit (divided by {2**width - 1})? pass --bits {fits} or "
        f"--bits {width} (load_image(..., bits=N))"
    )


def load_image(
    path: str | os.PathLike[str],
    size: int | None = None,
    *,
    bits: int | None = None,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, str]:
    """Read an image as a ``(1, 3, H, W)`` float64 tensor in [0, 1], and say what was converted.

    Parameters
    ----------
    path : path-like
        PNG, JPEG, GIF, BMP, WebP, ... (Pillow) or TIFF (tifffile).
    size : int, optional
        Centre-crop to a square and resize to ``size x size``; ``None`` keeps the image as it is.
    bits : int, optional
        Bit depth of integer pixel values (divide by ``2**bits - 1``); needed where a file's range leaves it
        open (see Notes).
    max_pixels : int, optional
        Refuse images with more pixels than this, from the header, before decoding (0: no limit). Default:
        Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 million unless changed).

    Returns
    -------
    (torch.Tensor, str)
        The image and a note on conversions (empty when none).

    Raises
    ------
    ImageReadError
        Missing, empty or unreadable file, several frames or pages, or an array that is not a 2-D greyscale,
        grey+alpha, RGB or RGBA image.
    TooLargeError
        More pixels than ``max_pixels`` (the message gives the size and how to raise the limit).
    DTypeError
        Negative integer pixels, or integer pixels whose scale is ambiguous (pass ``bits``).
    NonFiniteError
        A float image with NaN or infinite pixels.
    OptionError
        ``size`` not an int in ``[1, MAX_IMAGE_SIZE]``, or ``bits`` not in [1, 32] or below the values.

    Notes
    -----
    What is converted, and said: greyscale replicated to RGB; alpha (RGBA, grey+alpha, a palette with a
    transparent colour) composited over white; CMYK converted to RGB without a colour profile; a palette
    looked up; the EXIF orientation applied. Integer pixels: 8-bit divided by 255; 16-bit PNG by 65535 (as the
    format says); wider integers in a TIFF by the range their values use (8-bit values stay 8-bit; values in the
    top half of the dtype's range are full scale; anything between is refused unless ``bits`` says), the scale
    said. Float images are expected in [0, 1]; values outside are clipped, and the note says so. A GIF or TIFF
    of several frames is refused.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np, tifffile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "eight_bit_values.tif"
    >>> tifffile.imwrite(path, np.full((4, 4), 200, np.uint16))
    >>> image, note = load_image(path)
    >>> round(float(image.max()) * 255)
    200
    >>> note.split("; ")  # doctest: +NORMALIZE_WHITESPACE
    ['greyscale replicated to 3 channels',
     'uint16 TIFF holding 8-bit values (max 200): divided by 255 (--bits 16 if it is not)']
    """
    if size is not None:
        size = _check_size(size)
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32):
        raise OptionError(f"load_image: expected bits, the bit depth of integer pixels, in [1, 32], got {bits!r}")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0):
        raise OptionError(f"load_image: expected max_pixels a non-negative int (0: no limit), got {max_pixels!r}")
    path = Path(path)
    if not path.is_file():
        raise _read_error(path, "which does not exist or is not a file")
    try:
        if path.stat().st_size == 0:
            raise _read_error(path, "which is empty (0 bytes)")
        if path.suffix.lower() in _TIFF_SUFFIXES:
            array, notes, kind = _decode_tiff(path, size, max_pixels)
        else:
            array, notes, kind = _decode_pillow(path, size, max_pixels)
    except UnidentifiedImageError:
        raise _read_error(
            path,
            f"which Pillow does not recognise as an image (it starts with {_first_bytes(path)}); check that it is the "
            "image you mean",
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # unreadable, or data Pillow cannot decode (truncated, ...)
        if isinstance(err, InvertnetError):
            raise
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ImageReadError(f"expected an image Pillow can read, got {str(path)!r}: {why}") from None
    return _to_tensor(array, notes, kind, path, size, bits)


def _to_tensor(
    array: np.ndarray, notes: list[str], kind: str, path: Path, size: int | None, bits: int | None
) -> tuple[torch.Tensor, str]:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array, notes = array[..., None], [*notes, "greyscale replicated to 3 channels"]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"expected a greyscale, grey+alpha, RGB or RGBA image, got an array of shape {array.shape} from "
            f"{str(path)!r}"
        )
    if array.size == 0:
        raise ImageReadError(
            f"expected an image with pixels, got an empty array of shape {array.shape} from {str(path)!r}"
        )
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise NonFiniteError(
                f"expected finite pixel values, got {int((~np.isfinite(array)).sum())} NaN or infinite pixels in "
                f"{str(path)!r}; fix or drop them before inverting"
            )
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            notes.append(f"values outside [0, 1] (min {low:.3g}, max {high:.3g}) clipped")
        array = np.clip(array.astype(np.float64), 0, 1)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        array, note = _integer_scale(array, kind, bits, path)
        notes += [note] if note else []
    else:
        raise ImageReadError(f"expected integer or float pixels, got {array.dtype} ones in {str(path)!r}")
    if array.shape[-1] in (2, 4):  # alpha: composite over white
        alpha = array[..., -1:]
        array = array[..., :-1] * alpha + (1 - alpha)
        notes.append(("grey+alpha" if array.shape[-1] == 1 else "RGBA") + " composited over white")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
        if "greyscale replicated to 3 channels" not in notes:
            notes.append("greyscale replicated to 3 channels")
    if size is not None:
        h, w = array.shape[:2]
        side = min(h, w)
        if h != w:
            top, left = (h - side) // 2, (w - side) // 2
            array = array[top : top + side, left : left + side]
            notes.append(f"centre-cropped {h}x{w} -> {side}x{side}")
        if side != size:
            array = transform.resize(array, (size, size), anti_aliasing=side > size)
            notes.append(f"resized {side}x{side} -> {size}x{size}")
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0).clamp(0, 1)
    return tensor, "; ".join(notes)
