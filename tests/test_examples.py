"""The figure scripts in examples/, each run small: they write their PNG and return the data they drew."""

import importlib.util
import sys
from pathlib import Path

import pytest
from skimage import io as skio

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def _png(path):
    assert skio.imread(path).ndim == 3


def test_reconstruction_row(tmp_path):
    psnr = _load("reconstruction_row").main(tmp_path, small=True)
    _png(tmp_path / "reconstruction_row.png")
    assert list(psnr) == ["conv1", "conv2", "conv3", "conv4"]
    assert psnr["conv1"] > 100  # ConvPool-CNN-C conv1 with CReLU: 96 filters for 27 patch entries, exact


def test_spectra(tmp_path):
    verdicts = _load("spectra").main(tmp_path, small=True)
    _png(tmp_path / "spectra.png")
    assert verdicts["conv1.conv"].startswith("injective")


def test_pairing_histograms(tmp_path):
    means = _load("pairing_histograms").main(tmp_path, small=True)
    _png(tmp_path / "pairing.png")
    assert len(means) == 3
    for measured, random in means.values():
        assert measured == pytest.approx(random, abs=0.03)  # Gaussian filters sit on the random reference


def test_rademacher_table(tmp_path):
    result = _load("rademacher_table").main(tmp_path, small=True)
    _png(tmp_path / "rademacher_table.png")
    assert [row[0] for row in result["rows"]] == ["conv1", "conv2"]
    for _, _, _, _, crelu, relu in result["rows"]:
        assert relu == pytest.approx(2**0.5 * crelu)
    assert result["check"]["worst"] < 4  # the provable constant


def test_train_pairing(tmp_path):
    result = _load("train_pairing").main(tmp_path, small=True)
    _png(tmp_path / "train_pairing.png")
    assert set(result) == {"ReLU", "CReLU"}
    for r in result.values():
        assert 0 <= r["paired"] <= 1
        assert -1 <= r["mean_mu"] <= 0
