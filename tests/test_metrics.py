"""Metrics against scikit-image (skimage.metrics, the version installed), colour and greyscale, both SSIM settings."""

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invertnet import ShapeError, metrics, psnr, relative_error, ssim
from invertnet.errors import OptionError


def _pairs():
    rng = np.random.default_rng(0)
    colour = data.astronaut()[100:196, 150:270] / 255.0  # 96 x 120 x 3
    grey = data.camera()[200:280, 100:190] / 255.0  # 80 x 90
    out = []
    for image in (colour, grey):
        noisy = np.clip(image + 0.08 * rng.standard_normal(image.shape), 0, 1)
        out.append((image, noisy))
    return out


def _torch(image: np.ndarray) -> torch.Tensor:
    image = image[..., None] if image.ndim == 2 else image
    return torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0)


@pytest.mark.parametrize("index", [0, 1], ids=["colour", "grey"])
@pytest.mark.parametrize("setting", ["wang", "skimage-default"])
@pytest.mark.parametrize("strip_elements", [2**16, 1], ids=["one-strip", "8-row-strips"])
def test_ssim_agrees_with_skimage(index, setting, strip_elements, monkeypatch):
    # 2**16: the whole image in one strip; 1: strips of 16 output rows (STRIP_MIN_ROWS), the last one shorter (86
    # and 70 rows); the calibration gets that size as its only candidate
    monkeypatch.setattr(metrics, "STRIP_ELEMENTS", strip_elements)
    monkeypatch.setattr(metrics, "STRIP_CANDIDATES", (strip_elements,))
    monkeypatch.setattr(metrics, "_STRIP_PLANS", {})
    a, b = _pairs()[index]
    channel_axis = 2 if a.ndim == 3 else None
    if setting == "wang":
        expected = structural_similarity(
            a,
            b,
            data_range=1.0,
            channel_axis=channel_axis,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        actual = ssim(_torch(a), _torch(b), data_range=1.0)
    else:
        expected = structural_similarity(a, b, data_range=1.0, channel_axis=channel_axis)
        actual = ssim(_torch(a), _torch(b), 1.0, window="uniform", win_size=7, sample_covariance=True)
    assert actual.shape == (1,)
    assert abs(float(actual) - expected) < 1e-13  # measured up to 1.3e-15 over the 8 cases


@pytest.mark.parametrize("index", [0, 1], ids=["colour", "grey"])
def test_psnr_agrees_with_skimage(index):
    a, b = _pairs()[index]
    # measured 0 (bit-equal); 1e-13 dB is about 40 ulp of a value near 20
    assert abs(float(psnr(_torch(a), _torch(b), 1.0)) - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-13


def test_psnr_hand_value():
    # MSE = 0.01 with R = 1: 10 log10(1 / 0.01) = 20 dB exactly
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    assert float(psnr(x, x + 0.1, 1.0)) == pytest.approx(20.0, abs=1e-13)  # measured 0


def test_batched_one_value_per_image():
    pairs = _pairs()
    a = torch.cat([_torch(pairs[0][0]), _torch(pairs[0][1])])
    b = torch.cat([_torch(pairs[0][1]), _torch(pairs[0][1])])
    values = ssim(a, b, 1.0)
    assert values.shape == (2,)
    assert float(values[1]) == pytest.approx(1.0, abs=1e-14)  # SSIM(y, y) = 1 by hand; measured exactly 1
    assert float(values[0]) == pytest.approx(float(ssim(a[:1], b[:1], 1.0)), abs=1e-14)  # measured bit-equal


def test_relative_error_matches_numpy():
    a, b = _pairs()[0]
    expected = np.linalg.norm(b - a) / np.linalg.norm(a)
    assert float(relative_error(_torch(b), _torch(a))) == pytest.approx(expected, rel=2e-13)  # measured 1.6e-15


def test_bad_input():
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"expected a positive data_range \(1.0 for images in \[0, 1\]"):
        psnr(x, x, data_range=0)
    with pytest.raises(
        ShapeError, match=r"expected x and y of the same shape, got \(1, 1, 16, 16\) and \(1, 1, 8, 8\)"
    ):
        ssim(x, torch.zeros(1, 1, 8, 8), 1.0)
    with pytest.raises(ShapeError, match=r"expected images of at least 11x11 for this window, got \(8, 8\)"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"expected window 'gaussian' .* or 'uniform' .*, got 'box'"):
        ssim(x, x, 1.0, window="box")
    with pytest.raises(ShapeError, match=r"got \(16, 16\); reshape it to \(N, C, H, W\)"):
        psnr(torch.zeros(16, 16), torch.zeros(16, 16), 1.0)


# --- bad options are InvertnetError (OptionError), never a bare ValueError --------------------


@pytest.mark.parametrize("data_range", [0, -1.0, float("nan"), float("inf"), "1", True, None, torch.ones(2)])
@pytest.mark.parametrize("metric", [psnr, ssim])
def test_bad_data_range_is_an_option_error(metric, data_range):
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(OptionError, match=r"expected a positive data_range .*a finite number, got"):
        metric(x, x, data_range=data_range)


def test_data_range_as_a_scalar_tensor_or_numpy_number_is_accepted():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    y = x.flip(-1)
    reference = psnr(x, y, 1.0)
    assert torch.equal(psnr(x, y, torch.tensor(1.0)), reference)
    assert torch.equal(psnr(x, y, np.float32(1.0)), reference)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sigma": 0.0}, r"expected a positive finite sigma for the Gaussian window \(1\.5: Wang's\), got 0\.0"),
        ({"sigma": -1.0}, r"expected a positive finite sigma"),
        ({"window": "uniform", "win_size": 4}, r"expected an odd positive int win_size \(7: scikit-image's\), got 4"),
        ({"window": "uniform", "win_size": 7.0}, r"expected an odd positive int win_size"),
        ({"win_size": 7}, r"a Gaussian window of sigma 1\.5 has size 11, got win_size=7"),
        ({"window": "box"}, r"expected window 'gaussian'"),
    ],
)
def test_bad_ssim_options_are_option_errors(options, match):
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(OptionError, match=match):
        ssim(x, x, 1.0, **options)


def test_sample_covariance_of_a_one_pixel_window_is_refused():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(OptionError, match=r"sample_covariance needs a window of more than one pixel, got win_size=1"):
        ssim(x, x, 1.0, window="uniform", win_size=1, sample_covariance=True)


def test_ssim_calibration_picks_a_candidate_and_changes_nothing(monkeypatch):
    """The block size is timed on this machine once per shape; any block size gives the same SSIM."""
    from invertnet import metrics

    monkeypatch.setattr(metrics, "_STRIP_PLANS", {})
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 160, 150, generator=generator, dtype=torch.float64)
    y = (x + 0.1 * torch.rand(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    calibrated = ssim(x, y, 1.0)
    (chosen,) = metrics._STRIP_PLANS.values()
    assert chosen in metrics.STRIP_CANDIDATES
    for elements in metrics.STRIP_CANDIDATES:
        monkeypatch.setattr(metrics, "_STRIP_PLANS", {(3, 160, 150, 11, torch.float64): elements})
        assert float((ssim(x, y, 1.0) - calibrated).abs()) <= 1e-15
