"""The command line through click's runner, and once as a real process."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import io as skio

import invertnet.cli.analyses as analyses_cli
import invertnet.cli.common as common
import invertnet.cli.datasets as datasets_cli
import invertnet.cli.reconstruct as reconstruct_cli
from invertnet.cli import cli
from invertnet.io.images import load_image
from invertnet.metrics import psnr
from invertnet.zoo.models import build_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FAST = ["--model", "convpool-cnn-c-crelu", "--size", "32"]
#: For tests of what the command does, not of the figures at a size: every layer of ConvPool-CNN-C still inverts at
#: 16 px, and the completions below conv2 cost a quarter of those at 32 px.
TINY = ["--model", "convpool-cnn-c-crelu", "--size", "16"]


def run(args, tmp_path):
    """Invoke the CLI in a fresh empty working directory; return the result and the files it left there."""
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result, sorted(p.name for p in work.iterdir())


def _one_line_error(result, match):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("invertnet: error: ")
    assert match in lines[0]
    assert "Traceback" not in result.output


def test_reconstruct_writes_image_and_figure(tmp_path):
    result, files = run(["reconstruct", "--layer", "conv2", ASSETS / "astronaut.png", *TINY], tmp_path)
    assert result.exit_code == 0, result.output
    assert "conv2" in result.stdout
    assert "PSNR" in result.stdout
    assert "SSIM" in result.stdout
    assert files == ["astronaut_conv2.png", "astronaut_conv2_figure.png"]


def test_all_layers_figure(tmp_path):
    out = tmp_path / "row.png"
    result, _ = run(["reconstruct", "--all-layers", ASSETS / "chelsea.png", *TINY, "--out", out], tmp_path)
    assert result.exit_code == 0, result.output
    layers = [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip().startswith("conv")]
    assert layers == ["conv1", "conv2", "conv3", "conv4"]
    assert skio.imread(out).ndim == 3


def test_greyscale_and_rgba(tmp_path):
    grey = tmp_path / "grey.png"
    skio.imsave(grey, np.full((40, 40), 90, np.uint8), check_contrast=False)
    rgba = tmp_path / "rgba.png"
    skio.imsave(rgba, np.full((40, 40, 4), 200, np.uint8), check_contrast=False)
    result, _ = run(["reconstruct", "--layer", "conv1", grey, *FAST], tmp_path)
    assert result.exit_code == 0
    assert "greyscale replicated to 3 channels" in result.stdout
    result, _ = run(["reconstruct", "--layer", "conv1", rgba, *FAST], tmp_path)
    assert result.exit_code == 0
    assert "RGBA composited over white" in result.stdout


def test_weights_file_is_used(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(build_model("convpool-cnn-c-crelu", seed=7).state_dict(), weights)
    a, _ = run(["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--weights", weights], tmp_path)
    b, _ = run(["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--seed", "7"], tmp_path)
    assert a.exit_code == 0
    assert a.stdout == b.stdout


def test_layers_lists_names_and_shapes(tmp_path):
    result, _ = run(["layers", "--model", "all-cnn-b-crelu"], tmp_path)
    assert result.exit_code == 0
    assert "conv1.conv" in result.stdout
    assert "96x54x54" in result.stdout
    assert "192x54x54" in result.stdout


def test_existing_output_is_kept_without_force(tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    result, _ = run(["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", *FAST, "--out", out], tmp_path)
    _one_line_error(result, "exists; pass --force")
    assert out.read_bytes() == b"precious"
    result, _ = run(
        ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", *FAST, "--out", out, "--force"], tmp_path
    )
    assert result.exit_code == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize(
    ("make_args", "match"),
    [
        (lambda d: ["reconstruct", "--layer", "conv1", d / "missing.png"], "does not exist"),
        (
            lambda d: ["reconstruct", "--layer", "conv1", d / "corrupt.png"],
            "which Pillow does not recognise as an image",
        ),
        (lambda d: ["reconstruct", "--layer", "conv99", ASSETS / "astronaut.png"], "module names: conv1, conv1.conv"),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--weights", d / "corrupt.png"],
            "expected a state dict saved with torch.save",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--weights", d / "other.pt"],
            "expected weights for Sequential with the same names and shapes",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--out", d / "no" / "x.png"],
            "does not exist",
        ),
        (lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--out", d], "it is a directory"),
        (lambda d: ["reconstruct", ASSETS / "astronaut.png"], "give exactly one of --layer NAME and --all-layers"),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--method", "magic"],
            "Invalid value for '--method'",
        ),
        (
            lambda d: (
                ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--device", "cuda:7"]
                if not torch.cuda.is_available()
                else ["reconstruct", "--device", "bogus"]
            ),
            "device",
        ),
        (lambda d: ["reconstruct", "--layr", "conv1"], "No such option '--layr'"),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--method", "joint", "--tv", "-1"],
            "-1.0 is not in the range x>=0",
        ),
        (
            lambda d: ["compare", ASSETS / "astronaut.png", "--methods", "patch,magic"],
            "expected methods among auto, layers, patch, ",
        ),
        (lambda d: ["compare", ASSETS / "astronaut.png", "--methods", " , "], "expected a comma-separated list"),
        (
            lambda d: ["compare", ASSETS / "astronaut.png", "--layers", "conv1,conv99"],
            "module names: conv1, conv1.conv",
        ),
        (lambda d: ["compare", ASSETS / "astronaut.png", "--model", "resnet"], "expected a built-in model"),
        (lambda d: ["compare", d / "missing.png", *FAST, "--layers", "conv1"], "does not exist"),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--method", "fft"],
            "method 'fft' does not apply to this layer: padding is 'zeros', not circular",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv2", ASSETS / "astronaut.png", "--method", "window"],
            "method 'window' does not apply to this layer: it needs a block of outputs that determine",
        ),
    ],
    ids=[
        "missing-image",
        "corrupt-image",
        "unknown-layer",
        "corrupt-weights",
        "mismatched-weights",
        "missing-directory",
        "output-is-directory",
        "no-layer",
        "bad-method",
        "bad-device",
        "typo",
        "negative-tv",
        "compare-unknown-method",
        "compare-empty-methods",
        "compare-unknown-layer",
        "compare-unknown-model",
        "compare-missing-image",
        "fft-on-zero-padding",
        "window-on-a-layer-it-cannot-invert",
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, make_args, match):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    torch.save(build_model("all-cnn-b-crelu").state_dict(), tmp_path / "other.pt")
    args = [str(a) for a in make_args(tmp_path)]
    if "--size" not in args and args[0] == "reconstruct":
        args += ["--model", "convpool-cnn-c-crelu", "--size", "32"]
    before = {p.name for p in tmp_path.iterdir()}
    result, files = run(args, tmp_path)
    _one_line_error(result, match)
    assert files == []  # nothing written in the working directory
    assert {p.name for p in tmp_path.iterdir()} - before == {Path(p).name for p in tmp_path.glob("tmp*")}


def _console_script() -> str | None:
    local = Path(sys.executable).parent / "invertnet"
    return str(local) if local.exists() else shutil.which("invertnet")


def test_real_subprocess(tmp_path):
    script = _console_script()
    if script is None:
        pytest.skip("the invertnet console script is not installed (pip install -e .)")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    ok = subprocess.run(
        [script, "reconstruct", "--layer", "conv3", str(ASSETS / "astronaut.png"), *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "astronaut_conv3.png").exists()
    bad = subprocess.run(
        [script, "reconstruct", "--layer", "conv3", str(tmp_path / "none.png"), *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("invertnet: error: ")
    assert "Traceback" not in bad.stderr


def test_spectrum_table_and_plot(tmp_path):
    plot = tmp_path / "spectrum.png"
    result, _ = run(
        ["spectrum", "--model", "convpool-cnn-c-crelu", "--size", "16", "--layer", "conv2", "--plot", plot], tmp_path
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].split()[0] == "conv1.conv"
    assert lines[2].endswith("injective")  # 96 filters >= 27 patch entries, zero padding: injective
    assert "cholesky" in lines[2]  # 768 unknowns, 96 filters: sigma_min through the Gram matrix's factor
    assert "not injective as a linear map" in lines[3]  # conv2: 192 CReLU channels, 96 filters
    assert "lanczos max" in lines[3]  # sigma_min = 0 by the count: Lanczos for sigma_max only
    assert skio.imread(plot).ndim == 3


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["spectrum", "--layer", "conv99"], "module names: conv1"),
        (["spectrum", "--model", "vgg"], "expected a built-in model"),
        (["spectrum", "--size", "4"], "Invalid value for '--size'"),
        (["spectrum", "--proof-flops", "-1"], "Invalid value for '--proof-flops': -1.0 is not in the range x>=0"),
    ],
)
def test_spectrum_bad_input(tmp_path, args, match):
    result, files = run(args, tmp_path)
    _one_line_error(result, match)
    assert files == []


def test_spectrum_keeps_existing_plot(tmp_path):
    plot = tmp_path / "keep.png"
    plot.write_bytes(b"precious")
    result, _ = run(["spectrum", "--model", "convpool-cnn-c-crelu", "--plot", plot], tmp_path)
    _one_line_error(result, "exists; pass --force")
    assert plot.read_bytes() == b"precious"


def test_joint_method_runs_with_progress(tmp_path):
    result, files = run(
        [
            "reconstruct",
            "--layer",
            "conv1",
            ASSETS / "coffee.png",
            "--model",
            "convpool-cnn-c-crelu",
            "--size",
            "16",
            "--method",
            "joint",
        ],
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "joint:" in result.stdout
    assert "feature residual" in result.stdout
    assert files == ["coffee_conv1.png", "coffee_conv1_figure.png"]


def test_compare_prints_the_table_and_writes_the_grid(tmp_path):
    out = tmp_path / "grid.png"
    args = ["compare", ASSETS / "coffee.png", *FAST, "--layers", "conv1,conv2", "--methods", "patch,lsqr", "--out", out]
    result, _ = run(args, tmp_path)
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.stdout.splitlines() if line.startswith("conv")]
    assert [row[:2] for row in table] == [["conv1", "patch"], ["conv1", "lsqr"], ["conv2", "patch"], ["conv2", "lsqr"]]
    assert min(float(table[0][2]), float(table[1][2])) > 100  # conv1: 96 filters for 27 patch entries, exact
    assert skio.imread(out).ndim == 3
    again, _ = run(args, tmp_path)
    _one_line_error(again, "exists; pass --force")


def test_models_lists_every_model_with_its_count():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert rows["all-cnn-b-crelu"] == "10,144,936"
    assert rows["convpool-cnn-c-crelu-half"] == "685,834"
    assert len(rows) == 21  # 15 of the paper, 6 of torchvision's


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pairing_reads_any_checkpoint(tmp_path, suffix):
    state = build_model("convpool-cnn-c-relu").state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    out = tmp_path / "pairs.png"
    result, _ = run(["pairing", path, "--layers", "conv1.conv.weight,conv8.conv.weight", "--out", out], tmp_path)
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.stdout.splitlines()[1:3]]
    assert [row[:3] for row in table] == [["conv1.conv.weight", "96", "27"], ["conv8.conv.weight", "192", "192"]]
    # Gaussian filters: the measured mean cosine sits at the exact random value
    assert all(abs(float(row[3]) - float(row[4])) < 0.02 for row in table)
    assert skio.imread(out).ndim == 3


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing.pt", "does not exist or is not a file"),
        (lambda d: d, "does not exist or is not a file"),
        (lambda d: d / "garbage.pt", "expected a state dict saved with torch.save"),
        (lambda d: d / "linear.pt", "expected convolution weights (4-D floating-point tensors), found none"),
        (lambda d: d / "garbage.safetensors", "expected a valid .safetensors file"),
        (lambda d: d / "pruned.pt", "filter 1 is zero and has no direction"),
    ],
    ids=["missing", "directory", "not-a-checkpoint", "no-conv-weights", "corrupt-safetensors", "zero-filter"],
)
def test_pairing_bad_checkpoints(tmp_path, make, match):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    torch.save({"conv.weight": torch.stack([torch.ones(1, 3, 3), torch.zeros(1, 3, 3)])}, tmp_path / "pruned.pt")
    result, _ = run(["pairing", make(tmp_path), "--out", tmp_path / "out.png"], tmp_path)
    _one_line_error(result, match)
    assert not (tmp_path / "out.png").exists()


# --- every bad input answered: one line, exit 2, nothing written, no work before the outputs are checked ---


def _cli(args, tmp_path, monkeypatch):
    """Invoke the CLI in ``tmp_path / "work"``; return the result and the files it left there."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result, sorted(p.name for p in work.iterdir())


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command builds a model or reads an input before refusing its outputs."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    for module in (common, reconstruct_cli, datasets_cli, analyses_cli):
        for name in ("prepared_model", "load_model", "load_image", "load_state_dict"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def _checkpoints(d):
    torch.save({"conv.weight": torch.randn(1, 3, 3, 3)}, d / "one.pt")
    torch.save({"a.weight": torch.randn(1, 3, 3, 3), "b.weight": torch.randn(4, 3, 3, 3)}, d / "mixed.pt")
    torch.save({"conv.weight": torch.full((4, 3, 3, 3), float("nan"))}, d / "nan.pt")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["reconstruct", "--layer", "conv1", "in.png", "--out", "noext"], "expected an image file name ending in .png"),
        (["reconstruct", "--layer", "conv1", "in.png", "--out", "x.xyz"], "got 'x.xyz' with '.xyz'; add an extension"),
        (["reconstruct", "--all-layers", "in.png", "--out", "row"], "expected a figure file name ending in"),
        (["compare", "in.png", "--out", "noext"], "expected a figure file name ending in"),
        (["pairing", "w.pt", "--out", "x.foo"], "got 'x.foo' with '.foo'; add an extension, e.g. x.png"),
        (["spectrum", "--plot", "noext"], "got 'noext' with no extension; add an extension, e.g. noext.png"),
    ],
    ids=["reconstruct-noext", "reconstruct-xyz", "all-layers-noext", "compare", "pairing", "spectrum"],
)
def test_output_extensions_are_checked_before_any_work(tmp_path, monkeypatch, no_work, args, match):
    result, files = _cli(args, tmp_path, monkeypatch)
    _one_line_error(result, match)
    assert files == []


@pytest.mark.parametrize(
    "args",
    [
        ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--size", "100000"],
        ["compare", ASSETS / "astronaut.png", "--size", "100000"],
        ["layers", "--size", "100000"],
        ["spectrum", "--size", "100000"],
    ],
    ids=["reconstruct", "compare", "layers", "spectrum"],
)
def test_size_is_capped_with_the_reason(tmp_path, monkeypatch, no_work, args):
    result, files = _cli(args, tmp_path, monkeypatch)
    _one_line_error(result, "expected at most 4096 pixels a side, got 100000: the 100000x100000 image alone would")
    assert "224 GiB" in result.stderr
    assert files == []


@pytest.mark.parametrize(
    "args",
    [["layers", "--size", "8"], ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", "--size", "8"]],
    ids=["layers", "reconstruct"],
)
def test_an_input_smaller_than_the_kernel_is_one_line(tmp_path, monkeypatch, args):
    # All-CNN-B's conv1 is 11x11: its forward fails on 8x8. The library may name the module; the CLI says one line.
    result, files = _cli(args, tmp_path, monkeypatch)
    _one_line_error(result, "")
    assert "11" in result.stderr
    assert "size" in result.stderr.lower()
    assert files == []


def test_pairing_of_single_filters(tmp_path, monkeypatch):
    _checkpoints(tmp_path)
    result, files = _cli(["pairing", tmp_path / "one.pt"], tmp_path, monkeypatch)
    _one_line_error(result, "found only conv.weight (1 filter: pairing needs at least 2)")
    assert files == []
    result, files = _cli(["pairing", tmp_path / "mixed.pt", "--layers", "a.weight,b.weight"], tmp_path, monkeypatch)
    _one_line_error(result, "expected at least 2 filters of at least 2 entries in 'a.weight'")
    assert files == []
    result, files = _cli(["pairing", tmp_path / "mixed.pt"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "skipped a.weight: 1 filter: pairing needs at least 2" in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[2:3]] == ["b.weight"]
    assert files == ["mixed_pairing.png"]


@pytest.mark.parametrize(
    ("make_args", "match"),
    [
        (lambda d: ["pairing", d / "nan.pt"], "'conv.weight': pairing: expected finite weights"),
        (
            lambda d: [
                "reconstruct",
                "--layer",
                "conv1",
                ASSETS / "astronaut.png",
                *FAST,
                "--weights",
                d / "nanmodel.pt",
            ],
            "expected finite weights, got 2592 of 2592 entries of 'conv1.conv.weight' NaN or infinite",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv1", d / "empty.png", *FAST],
            "which is empty (0 bytes)",
        ),
        (
            lambda d: [
                "reconstruct",
                "--layer",
                "conv1",
                ASSETS / "astronaut.png",
                *FAST,
                "--weights",
                d / "module.pt",
            ],
            "holds pickled objects other than tensors (a whole model?); save model.state_dict() instead",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", *FAST, "--device", "meta"],
            "expected cpu or cuda[:N], got 'meta'",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", *FAST, "--seed", "-1"],
            "Invalid value for '--seed': -1 is not in the range 0<=x<=",
        ),
        (
            lambda d: ["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png", *FAST, "--seed", str(2**70)],
            "Invalid value for '--seed'",
        ),
        (
            lambda d: ["compare", ASSETS / "astronaut.png", *FAST, "--layers", "conv1,conv2,conv1"],
            "expected each name once, got conv1 more than once",
        ),
        (
            lambda d: ["compare", ASSETS / "astronaut.png", *FAST, "--methods", "patch,patch"],
            "expected each name once, got patch more than once",
        ),
        (lambda d: ["--threads", "0", "models"], "Invalid value for '--threads': 0 is not in the range x>=1"),
    ],
    ids=[
        "pairing-nan",
        "reconstruct-nan-weights",
        "empty-image",
        "pickled-module",
        "meta-device",
        "negative-seed",
        "huge-seed",
        "duplicate-layers",
        "duplicate-methods",
        "zero-threads",
    ],
)
def test_more_bad_input_is_one_line(tmp_path, monkeypatch, make_args, match):
    _checkpoints(tmp_path)
    sd = build_model("convpool-cnn-c-crelu").state_dict()
    sd["conv1.conv.weight"][:] = float("nan")
    torch.save(sd, tmp_path / "nanmodel.pt")
    (tmp_path / "empty.png").write_bytes(b"")
    torch.save(torch.nn.Conv2d(3, 4, 3), tmp_path / "module.pt")
    result, files = _cli(make_args(tmp_path), tmp_path, monkeypatch)
    _one_line_error(result, match)
    assert files == []


def test_unwritable_directory_is_found_before_the_work(tmp_path, monkeypatch, no_work):
    # We run as root, where chmod does not stop writes and os.access says yes: make the probe's
    # temporary file fail instead, as it would in a read-only directory.
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("invertnet.cli.common.tempfile.mkstemp", read_only)
    result, files = _cli(["reconstruct", "--layer", "conv1", ASSETS / "astronaut.png"], tmp_path, monkeypatch)
    _one_line_error(result, "directory '.' is not writable (Permission denied); choose another --out")
    assert files == []


def test_output_under_a_regular_file_is_refused(tmp_path, monkeypatch, no_work):
    (tmp_path / "file").write_text("x")
    args = ["spectrum", "--plot", tmp_path / "file" / "plot.png"]
    result, _ = _cli(args, tmp_path, monkeypatch)
    _one_line_error(result, "does not exist")


def test_threads_option_sets_torch_threads(tmp_path, monkeypatch):
    interop = []
    monkeypatch.setattr(torch, "set_num_interop_threads", interop.append)
    before = torch.get_num_threads()
    try:
        result, _ = _cli(["--threads", "2", "layers", "--model", "convpool-cnn-c-crelu"], tmp_path, monkeypatch)
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2
        assert interop == [2]
    finally:
        torch.set_num_threads(before)
    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    assert "--threads" in help_text
    assert "9x slower" in help_text


_SLOW_WRITER = """
import sys, time
from invertnet.cli.app import install_signal_handlers
from invertnet.io.files import atomic_write
if sys.argv[2] == "handler":
    install_signal_handlers()
with atomic_write(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="needs POSIX SIGTERM")
def test_sigterm_leaves_no_temporary_file(tmp_path):
    """A real process killed by SIGTERM inside atomic_write: with the CLI's handler nothing survives."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    outcomes = {}
    for mode in ("handler", "default"):
        out_dir = tmp_path / mode
        out_dir.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", _SLOW_WRITER, str(out_dir / "out.png"), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert process.stdout.readline().strip() == "writing"
            assert [p.name.startswith(".out.") for p in out_dir.iterdir()] == [True]  # the temporary exists
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        outcomes[mode] = (process.returncode, sorted(p.name for p in out_dir.iterdir()), stderr)
    code, files, stderr = outcomes["handler"]
    assert code == 128 + signal.SIGTERM
    assert files == []  # neither out.png nor a hidden .out.*.png temporary
    assert stderr.strip() == f"invertnet: terminated by signal {int(signal.SIGTERM)}"
    code, files, _ = outcomes["default"]  # why the handler is needed: the default action skips every finally
    assert code == -signal.SIGTERM
    assert len(files) == 1
    assert files[0].startswith(".out.")


def test_force_never_overwrites_the_input(tmp_path, monkeypatch, no_work):
    shutil.copy(ASSETS / "coffee.png", tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    args = ["reconstruct", "--layer", "conv1", tmp_path / "in.png", "--out", tmp_path / "in.png", "--force"]
    result, _ = _cli(args, tmp_path, monkeypatch)
    _one_line_error(result, "it is the input, and writing would destroy it (--force never overwrites an input); choose")
    assert (tmp_path / "in.png").read_bytes() == before


def test_an_image_format_matplotlib_cannot_write_gets_a_png_figure(tmp_path, monkeypatch):
    result, files = _cli(
        ["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--out", "x.bmp"], tmp_path, monkeypatch
    )
    assert result.exit_code == 0, result.output
    assert files == ["x.bmp", "x_figure.png"]


@pytest.mark.parametrize("tv", ["nan", "inf"])
def test_tv_must_be_finite(tmp_path, monkeypatch, no_work, tv):
    args = ["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", "--method", "joint", "--tv", tv]
    result, files = _cli(args, tmp_path, monkeypatch)
    _one_line_error(result, f"Invalid value for '--tv': expected a finite number, got {tv}")
    assert files == []


def test_bare_invertnet_prints_the_help(tmp_path, monkeypatch):
    result, files = _cli([], tmp_path, monkeypatch)
    assert result.exit_code == 2
    assert "Commands:" in result.stderr
    assert "reconstruct" in result.stderr
    assert "invertnet: error" not in result.stderr
    assert files == []


USER = str(Path(__file__).resolve().parent / "user_models.py")


def test_your_own_model_by_file_and_callable(tmp_path):
    result, files = run(
        ["reconstruct", "--model", f"{USER}:make_model", "--layer", "body", "--size", "16", ASSETS / "astronaut.png"],
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "(exact)" in result.stdout  # an injective CReLU stem and a contractive residual block
    assert files == ["astronaut_body.png", "astronaut_body_figure.png"]


def test_layers_lists_the_nodes_of_any_model(tmp_path):
    result, _ = run(["layers", "--model", f"{USER}:make_model", "--size", "16"], tmp_path)
    assert result.exit_code == 0, result.output
    nodes = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert nodes == ["x", "stem", "stem_act", "body_conv1", "body_act", "body_conv2", "add", "body_act_1"]
    resnet, _ = run(["layers", "--model", "resnet18", "--size", "32"], tmp_path)
    assert "layer1.0.relu@2" in resnet.stdout  # a module called twice: two nodes


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (f"{USER}:absent", "to define 'absent', got no such attribute"),
        (f"{USER}:NOT_CALLABLE", "expected 'NOT_CALLABLE' to be a callable that returns an nn.Module, got int"),
        (f"{USER}:make_nothing", "expected make_nothing() to return a torch.nn.Module, got int"),
        ("no_such_module_xyz:make", "expected an importable module before the colon, got 'no_such_module_xyz'"),
        ("missing/model.py:make", "expected a Python file before the colon, got 'missing/model.py'"),
        ("resnet", "expected a built-in model"),
    ],
)
def test_bad_model_specs_are_one_line(tmp_path, spec, match):
    result, files = run(["reconstruct", "--model", spec, "--layer", "x1", ASSETS / "astronaut.png"], tmp_path)
    _one_line_error(result, match)
    assert files == []


def test_weights_that_do_not_fit_your_model_are_one_line(tmp_path):
    path = tmp_path / "chain.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)).state_dict(), path)
    result, files = run(
        ["reconstruct", "--model", f"{USER}:make_model", "--weights", path, "--layer", "body", ASSETS / "camera.png"],
        tmp_path,
    )
    _one_line_error(result, "does not fit")
    assert files == []


def test_all_layers_needs_the_zoo_or_named_layers(tmp_path):
    result, _ = run(["reconstruct", "--model", f"{USER}:make_model", "--all-layers", ASSETS / "camera.png"], tmp_path)
    _one_line_error(result, "--all-layers needs a built-in model's figure layers")


# --- labels that say what the result says, and errors that name the right thing ----------------------------------


def test_joint_is_never_labelled_exact(tmp_path):
    args = ["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--method", "joint"]
    result, _ = run(args, tmp_path)
    assert result.exit_code == 0, result.output
    assert "(exact)" not in result.stdout
    assert "(not proven exact: matching the features does not prove the input unique)" in result.stdout


def test_the_default_says_where_the_proofs_end_and_the_completion_begins(tmp_path, monkeypatch):
    """All-CNN-B conv3 at 16 px: its CReLU step is exact, the convolution below it is not (fewer rows than unknowns)."""
    seen = {}
    real = reconstruct_cli.reconstruct

    def spy(*args, **kwargs):
        seen["completion"] = kwargs["completion"]
        return real(*args, **kwargs)

    monkeypatch.setattr(reconstruct_cli, "reconstruct", spy)
    args = ["reconstruct", "--layer", "conv3", "--size", "16", "--tv", "0.05", ASSETS / "coffee.png"]
    result, _ = run(args, tmp_path)
    assert result.exit_code == 0, result.output
    assert seen["completion"].weight == 0.05  # --tv reaches the completion
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("conv3"))
    assert "(not proven exact: proven exact from conv3 down to the output of conv3.conv; below it a " in line
    assert "feature-consistent completion with the TV prior (" in line
    assert "set to 0" not in line  # the walk's estimate below the frontier is not the answer: no notes of it


def test_an_in_place_op_after_a_conv_is_exact_only_because_it_is(tmp_path):
    result, _ = run(["reconstruct", "--model", f"{USER}:make_in_place", "--layer", "act", "--size", "16",
                     ASSETS / "coffee.png"], tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("act"))
    assert line.endswith("(exact)")
    assert float(line.split("PSNR")[1].split("dB")[0]) > 250


def test_the_figures_printed_describe_the_file_written(tmp_path):
    """The issue's case: PSNR of the unclipped estimate printed, the file clipped to [0, 1]."""
    out = tmp_path / "x.png"
    args = ["reconstruct", "--layer", "conv2", ASSETS / "chelsea.png", *FAST, "--method", "lsqr", "--out", out]
    result, _ = run(args, tmp_path)  # the pseudo-inverse: unboxed, it leaves [0, 1]
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    estimate = next(i for i, line in enumerate(lines) if line.strip().startswith("conv2"))
    written = lines[estimate + 1]
    assert written.endswith("(as written: the estimate clipped to [0, 1])")
    picture, _ = load_image(ASSETS / "chelsea.png", 32)
    saved = torch.from_numpy(skio.imread(out).transpose(2, 0, 1) / 255.0).unsqueeze(0)
    # the file is the clipped estimate in 8 bits: its PSNR is the printed one up to the 8-bit rounding
    assert float(written.split("PSNR")[1].split("dB")[0]) == pytest.approx(float(psnr(saved, picture, 1.0)), abs=0.05)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ["reconstruct", "--threads", "1", "--layer", "conv1", "x.png"],
            "No such option '--threads'; --threads is an option of invertnet itself, not of reconstruct: put it "
            "before the command, e.g. 'invertnet --threads 1 reconstruct ...'",
        ),
        (
            ["reconstruct", "--layer", "conv1", "a.png", "b.png", "c.png"],
            "Got unexpected extra arguments (b.png c.png); reconstruct takes one input (an unquoted glob such as "
            "photos/*.png expands to many files): quote it, or use 'invertnet evaluate' for many images",
        ),
        (
            ["reconstruct", "--model", f"{USER}:make_raises", "--layer", "x", ASSETS / "coffee.png"],
            "make_raises() raised ValueError: depth must be positive, got 0",
        ),
        (
            ["reconstruct", "--model", f"{USER}:make_runtime_error", "--layer", "x", ASSETS / "coffee.png"],
            "make_runtime_error() raised RuntimeError: CUDA error: out of memory",
        ),
        (
            ["reconstruct", "--model", f"{USER}:make_with", "--layer", "x", ASSETS / "coffee.png"],
            "expected 'make_with' to be callable without arguments, got one that needs width",
        ),
        (
            ["reconstruct", "--model", f"{USER}:make_exits", "--layer", "x", ASSETS / "coffee.png"],
            "expected make_exits() to return, but it called sys.exit(0)",
        ),
        (
            ["reconstruct", "--model", f"{USER}:make_zero_weights", "--layer", "3", ASSETS / "coffee.png"],
            "got the weight of layer '2' (Conv2d), (24, 24, 3, 3), all zeros: the layer outputs its bias alone",
        ),
        (
            ["reconstruct", "--model", f"{USER}:make_nan_weights", "--layer", "3", ASSETS / "coffee.png"],
            "expected finite weights, got 1 of 324 entries of the weight of layer '0' (Conv2d) NaN or infinite",
        ),
        (
            ["spectrum", "--model", f"{USER}:make_zero_weights", "--size", "16"],
            "got the weight of layer '2' (Conv2d), (24, 24, 3, 3), all zeros",
        ),
        (
            ["spectrum", "--model", f"{USER}:make_nan_weights", "--size", "16"],
            "expected finite weights, got 1 of 324 entries of the weight of layer '0' (Conv2d) NaN or infinite",
        ),
        (
            ["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--max-pixels", "1000"],
            "expected an image of at most 1,000 pixels, got ",
        ),
    ],
    ids=["threads-after", "unquoted-glob", "factory-value", "factory-runtime", "factory-args", "factory-exit",
         "zero-weights", "nan-weights", "spectrum-zero-weights", "spectrum-nan-weights", "pixel-limit"],
)  # fmt: skip
def test_one_line_with_the_right_hint(tmp_path, args, match):
    result, files = run(args, tmp_path)
    _one_line_error(result, match)
    assert "check --size" not in result.stderr  # a factory's failure is not this input's
    assert files == []


def test_a_cmyk_jpeg_reads_and_says_so(tmp_path):
    Image.open(ASSETS / "coffee.png").convert("CMYK").save(tmp_path / "cmyk.jpg")
    result, _ = run(["reconstruct", "--layer", "conv1", tmp_path / "cmyk.jpg", *FAST], tmp_path)
    assert result.exit_code == 0, result.output
    assert "input: CMYK converted to RGB (no colour profile applied)" in result.stdout


def test_safetensors_named_pt_is_loaded_not_diagnosed_as_a_pickle(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = build_model("convpool-cnn-c-crelu", seed=7).state_dict()
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.pt"))
    a, _ = run(
        ["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--weights", tmp_path / "w.pt"], tmp_path
    )
    b, _ = run(["reconstruct", "--layer", "conv1", ASSETS / "coffee.png", *FAST, "--seed", "7"], tmp_path)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout


def test_the_console_script_finds_a_module_in_the_current_directory_and_no_sibling_shadows_a_dependency(tmp_path):
    """'--model m:make' as 'python -m' finds m; a .py model's folder does not shadow safetensors afterwards."""
    script = _console_script()
    if script is None:
        pytest.skip("the invertnet console script is not installed (pip install -e .)")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    work = tmp_path / "project"
    (work / "safetensors").mkdir(parents=True)
    (work / "safetensors" / "__init__.py").write_text("raise ImportError('a sibling folder, not the package')\n")
    (work / "my_nets.py").write_text(
        "import torch\nfrom invertnet import CReLU\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU())\n"
    )
    state = {"0.weight": torch.randn(12, 3, 2, 2), "0.bias": torch.randn(12)}
    safetensors_torch.save_file(state, str(tmp_path / "w.safetensors"))
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    for spec in ("my_nets:make", f"{work / 'my_nets.py'}:make"):
        done = subprocess.run(
            [script, "reconstruct", "--model", spec, "--weights", str(tmp_path / "w.safetensors"), "--layer", "1",
             "--size", "16", str(ASSETS / "coffee.png"), "--out", str(tmp_path / "out.png"), "--force"],
            cwd=work, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "(exact)" in done.stdout


def test_an_output_that_reaches_an_input_through_a_symlink_is_refused(tmp_path, monkeypatch, no_work):
    shutil.copy(ASSETS / "coffee.png", tmp_path / "in.png")
    torch.save({}, tmp_path / "w.pt")
    (tmp_path / "alias.png").symlink_to(tmp_path / "in.png")
    (tmp_path / "weights.png").symlink_to(tmp_path / "w.pt")
    before = (tmp_path / "in.png").read_bytes(), (tmp_path / "w.pt").read_bytes()
    args = ["reconstruct", "--layer", "conv1", tmp_path / "in.png", "--weights", tmp_path / "w.pt", "--force"]
    result, _ = _cli([*args, "--out", tmp_path / "alias.png"], tmp_path, monkeypatch)
    _one_line_error(result, "alias.png': it is the input, and writing would destroy it (--force never overwrites")
    result, _ = _cli([*args, "--out", tmp_path / "weights.png"], tmp_path, monkeypatch)
    _one_line_error(result, "weights.png': it is an input (--weights '")
    assert ((tmp_path / "in.png").read_bytes(), (tmp_path / "w.pt").read_bytes()) == before
