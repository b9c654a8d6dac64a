"""Image files decoded as their owners see them (or refused saying why), and weights read by their content."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from invertnet.errors import DTypeError, ImageReadError, OptionError, TooLargeError
from invertnet.io.files import load_state_dict
from invertnet.io.images import load_image, pixel_limit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (12, 16, 3)).astype(np.uint8)


def _as_tensor(array):
    """A (H, W, 3) array in [0, 1] as load_image returns it."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)


def test_cmyk_jpeg_is_converted_and_said(tmp_path, rgb):
    # Pillow's CMYK -> RGB is R = 255 - C (K = 0 when Pillow makes the CMYK): the JPEG's round trip is lossy
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    image, note = load_image(tmp_path / "cmyk.jpg")
    assert note == "CMYK converted to RGB (no colour profile applied)"
    assert float((image - _as_tensor(rgb / 255)).abs().mean()) < 0.02  # not white: the colours are the photo's


def test_cmyk_tiff_is_converted_and_said(tmp_path, rgb):
    cmyk = np.dstack([255 - rgb, np.zeros(rgb.shape[:2], np.uint8)])  # K = 0: RGB = 1 - CMY exactly
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    image, note = load_image(tmp_path / "cmyk.tif")
    assert note == "CMYK converted to RGB (no colour profile applied)"
    torch.testing.assert_close(image, _as_tensor(rgb / 255), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_wide_integer_tiff_holding_8_bit_values_is_read_as_8_bit(tmp_path, rgb, dtype):
    tifffile.imwrite(tmp_path / "wide.tif", rgb.astype(dtype), photometric="rgb")
    image, note = load_image(tmp_path / "wide.tif")
    width = 16 if dtype == np.uint16 else 31
    assert (
        note == f"{np.dtype(dtype)} TIFF holding 8-bit values (max 255): divided by 255 (--bits {width} if it is not)"
    )
    assert torch.equal(image, _as_tensor(rgb * (1.0 / 255)))


def test_full_range_16_bit_tiff_says_its_scale(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "full.tif", rgb.astype(np.uint16) * 257)
    image, note = load_image(tmp_path / "full.tif")
    assert note == "16-bit values (max 65535): divided by 65535"
    torch.testing.assert_close(image, _as_tensor(rgb / 255), rtol=0, atol=1e-15)


def test_an_ambiguous_integer_tiff_is_refused_unless_told(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "twelve.tif", rgb.astype(np.uint16) * 10)  # max 2550: 12-bit, or a dark 16-bit?
    with pytest.raises(
        DTypeError,
        match=r"a uint16 TIFF with values up to 2550: 12-bit \(divided by 4095\) or 16-bit \(divided by 65535\)\? "
        r"pass --bits 12 or --bits 16",
    ):
        load_image(tmp_path / "twelve.tif")
    image, note = load_image(tmp_path / "twelve.tif", bits=12)
    assert note == "12-bit values as told (divided by 4095)"
    torch.testing.assert_close(image, _as_tensor(rgb.astype(np.uint16) * 10 / 4095), rtol=0, atol=1e-15)
    with pytest.raises(OptionError, match=r"expected values of at most 255 for bits=8, got 2550 .*at least 12"):
        load_image(tmp_path / "twelve.tif", bits=8)
    with pytest.raises(OptionError, match=r"expected bits, the bit depth of integer pixels, in \[1, 32\], got 0"):
        load_image(tmp_path / "twelve.tif", bits=0)


def test_negative_integer_pixels_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "signed.tif", np.arange(-4, 12, dtype=np.int16).reshape(4, 4))
    with pytest.raises(DTypeError, match=r"expected non-negative pixel values, .*int16 with values down to -4"):
        load_image(tmp_path / "signed.tif")


def test_grey_with_alpha_is_composited_over_white(tmp_path, rgb):
    grey, alpha = rgb[..., 0], np.full(rgb.shape[:2], 51, np.uint8)  # alpha 0.2
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    image, note = load_image(tmp_path / "la.png")
    assert note == "grey+alpha composited over white; greyscale replicated to 3 channels"
    expected = grey / 255 * 0.2 + 0.8
    torch.testing.assert_close(image, _as_tensor(np.repeat(expected[..., None], 3, -1)), rtol=0, atol=1e-15)


def test_a_single_frame_gif_reads_and_an_animated_one_is_refused(tmp_path, rgb):
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "one.gif")
    image, note = load_image(tmp_path / "one.gif")
    assert note == "palette colours looked up"
    assert torch.equal(image, _as_tensor(np.asarray(palette.convert("RGB")) * (1.0 / 255)))
    palette.save(tmp_path / "two.gif", save_all=True, append_images=[Image.fromarray(255 - rgb).quantize(16)])
    with pytest.raises(ImageReadError, match=r"which holds 2 frames or pages; save the one you want"):
        load_image(tmp_path / "two.gif")


def test_text_named_png_says_so_without_an_imageio_hint(tmp_path):
    (tmp_path / "notes.png").write_text("hello, I am text\n")
    with pytest.raises(ImageReadError, match=r"does not recognise as an image \(it starts with b'hello, I am '") as err:
        load_image(tmp_path / "notes.png")
    assert "pip install" not in str(err.value)


def test_the_pixel_limit_is_checked_from_the_header_and_can_be_raised(tmp_path, monkeypatch):
    Image.new("L", (300, 200), 7).save(tmp_path / "wide.png")
    with pytest.raises(
        TooLargeError, match=r"at most 50,000 pixels, got '.*wide\.png', 300x200 = 60,000 pixels by its header"
    ):
        load_image(tmp_path / "wide.png", max_pixels=50_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own setting is the default limit
    assert pixel_limit() == 1000
    with pytest.raises(TooLargeError, match=r"raise the limit if you mean it: --max-pixels N"):
        load_image(tmp_path / "wide.png")
    image, _ = load_image(tmp_path / "wide.png", max_pixels=0)  # 0: no limit
    assert image.shape == (1, 3, 200, 300)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored after the decode


def test_a_huge_image_is_shrunk_in_pillow_before_the_resize(tmp_path):
    Image.new("RGB", (4200, 4100), (255, 0, 0)).save(tmp_path / "huge.png")
    image, note = load_image(tmp_path / "huge.png", size=64, max_pixels=0)
    assert "4200x4100 shrunk 32x (averages of 32x32 blocks)" in note
    assert torch.equal(image[0, 0], torch.ones(64, 64))
    assert float(image[0, 1:].abs().max()) == 0.0


_DECODE_FOREVER = """
import sys
from invertnet.cli.app import install_signal_handlers
from invertnet.io.images import load_image
install_signal_handlers()
print("decoding", flush=True)
while True:
    load_image(sys.argv[1], 64, max_pixels=0)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX SIGTERM")
def test_sigterm_during_a_decode_ends_the_process(tmp_path):
    """The handler runs between Pillow's steps (each a short call into C), not after minutes of NumPy on floats."""
    Image.new("L", (5000, 5000), 9).save(tmp_path / "big.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _DECODE_FOREVER, str(tmp_path / "big.png")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout.readline().strip() == "decoding"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)  # a guard against a hang, not a timing
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip() == f"invertnet: terminated by signal {int(signal.SIGTERM)}"


@pytest.mark.parametrize("name", ["weights.pt", "weights.SAFETENSORS", "weights.bin"])
def test_safetensors_are_read_by_their_content_whatever_the_name(tmp_path, name):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {"conv.weight": torch.randn(4, 3, 3, 3)}
    safetensors_torch.save_file(state, str(tmp_path / name))
    assert torch.equal(load_state_dict(tmp_path / name)["conv.weight"], state["conv.weight"])


def test_a_torch_file_named_safetensors_is_read_by_torch(tmp_path):
    state = {"conv.weight": torch.randn(4, 3, 3, 3)}
    torch.save(state, tmp_path / "weights.safetensors")
    assert torch.equal(load_state_dict(tmp_path / "weights.safetensors")["conv.weight"], state["conv.weight"])
