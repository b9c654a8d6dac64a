"""The figure scripts in examples/, each run small: they write their PNG and return the data they drew."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from skimage import io as skio

from invertnet import CReLU
from invertnet.pairing import expected_random_mu

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
    # ConvPool-CNN-C conv1 with CReLU: 96 filters for 27 patch entries, exact. Measured 312 dB; 100x that error
    # would be 40 dB less
    assert psnr["conv1"] > 270


def test_spectra(tmp_path):
    verdicts = _load("spectra").main(tmp_path, small=True)
    _png(tmp_path / "spectra.png")
    assert verdicts["conv1.conv"].startswith("injective")


def test_pairing_histograms(tmp_path):
    means = _load("pairing_histograms").main(tmp_path, small=True)
    _png(tmp_path / "pairing.png")
    assert len(means) == 3
    for measured, random in means.values():
        # Gaussian filters sit on the random reference; statistical (one seeded draw): measured up to 0.0037
        assert measured == pytest.approx(random, abs=0.01)


def test_rademacher_table(tmp_path):
    result = _load("rademacher_table").main(tmp_path, small=True)
    _png(tmp_path / "rademacher_table.png")
    assert [row[0] for row in result["rows"]] == ["conv1", "conv2"]
    for _, _, _, _, crelu, relu in result["rows"]:
        assert relu == pytest.approx(2**0.5 * crelu, rel=1e-14)  # measured exact
    assert result["check"]["worst"] < 4  # the provable constant


def test_train_pairing(tmp_path):
    module = _load("train_pairing")
    result = module.main(tmp_path, small=True)
    _png(tmp_path / "train_pairing.png")
    assert set(result) == {"ReLU", "CReLU"}
    x = module.patches(2_000)
    for name, activation in (("ReLU", torch.nn.ReLU()), ("CReLU", CReLU())):
        r = result[name]
        # training lowered the error of the same untrained autoencoder (measured 0.065 and 0.15 after 50 steps)
        with torch.no_grad():
            untrained = float((module.autoencoder(activation, seed=0)(x) - x).pow(2).mean())
        assert r["error"] < 0.5 * untrained
        assert r["random_mean_mu"] == expected_random_mu(module.KERNEL**2, module.FILTERS)
        assert r["paired"] * module.FILTERS == round(r["paired"] * module.FILTERS)  # a count of filters


def test_trained_mobilenet(tmp_path):
    rows = _load("trained_mobilenet").main(tmp_path, small=True)
    _png(tmp_path / "mobilenet_v2_trained_vs_random.png")
    assert [(r.method, r.layer) for r in rows] == [
        ("trained auto", "features.1"),
        ("trained joint", "features.1"),
        ("random auto", "features.1"),
        ("random joint", "features.1"),
    ]
    assert all(r.feature_residual == r.feature_residual for r in rows)  # measured, never NaN
    # joint matches the features better than the ReLU6 walk on the trained weights (README, 64 px: 3e-4 vs 0.38)
    by = {(r.method, r.layer): r for r in rows}
    assert by[("trained joint", "features.1")].feature_residual < by[("trained auto", "features.1")].feature_residual
