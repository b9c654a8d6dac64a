"""invertnet evaluate: rows, resume, summary, errors, the command line, and a 2-process torchrun."""

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from skimage import io as skio

import invertnet.evaluation.cells as cells
import invertnet.evaluation.evaluate as ev
from invertnet import JointOptions, LayerNotFoundError, OptionError, reconstruct
from invertnet.cli import cli
from invertnet.errors import ImageReadError, ResultsFileError
from invertnet.evaluation.evaluate import EvaluationRow, evaluate, image_files, read_rows, summarize
from invertnet.evaluation.results import COLUMNS
from invertnet.io.files import load_image
from invertnet.zoo.specs import load_model

ROOT = Path(__file__).resolve().parents[1]
CHAIN = f"{ROOT / 'tests' / 'user_models.py'}:make_seeded_chain"
LAYERS, METHODS = ["1", "3"], ["auto", "patch"]


@pytest.fixture
def images(tmp_path):
    """Three 20x24 RGB images (load_image centre-crops them to 20x20) in their own folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("c.png", "a.png", "b.png"):
        skio.imsave(folder / name, rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def model():
    return load_model(CHAIN).double().eval()


def _run(model, images, out=None, **kwargs):
    return evaluate(model, images, kwargs.pop("layers", LAYERS), kwargs.pop("methods", METHODS), out=out, **kwargs)


def _count_calls(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[2:4])
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(cells, "reconstruct", counted)
    return calls


def test_rows_equal_direct_reconstructions(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    rows = _run(model, images, out, size=12)
    assert [(Path(r.image).name, r.layer, r.method) for r in rows] == [
        (name, layer, method) for name in ("a.png", "b.png", "c.png") for layer in LAYERS for method in METHODS
    ]
    for row in rows:
        picture = load_image(row.image, 12)[0]
        direct = reconstruct(model, picture, row.layer, row.method)
        assert row.psnr == pytest.approx(float(direct.psnr[0]), rel=1e-12)
        assert row.ssim == pytest.approx(float(direct.ssim[0]), rel=1e-12)
        assert row.relative_error == pytest.approx(float(direct.relative_error[0]), rel=1e-9, abs=1e-15)
        assert row.feature_residual == pytest.approx(float(direct.feature_residual[0]), rel=1e-9, abs=1e-15)
        assert (row.exact, row.closed_form) == (direct.exact, direct.closed_form)
        completed = ">completion" if direct.completion is not None else ""  # the default completed the walk
        assert row.route == ">".join(step.route for step in direct.steps) + completed
        assert (row.size, row.dtype, row.model, row.seconds > 0) == (12, "float64", "Sequential", True)
    # layer 1 is injective (12 filters of 3x3x3 on a CReLU): exact to rounding; the patch route is closed form
    by_key = {(Path(r.image).name, r.layer, r.method): r for r in rows}
    assert by_key["a.png", "1", "auto"].exact
    assert by_key["a.png", "1", "auto"].relative_error < 1e-12
    assert by_key["a.png", "1", "patch"].route == "invert_crelu>patch"
    assert read_rows(out) == rows  # floats round-trip bit for bit


def test_joint_rows_say_joint(model, images):
    options = JointOptions(lbfgs_evaluations=10, max_steps=2, tv=0.01, box=(0.0, 1.0))
    rows = _run(model, [sorted(images.glob("*.png"))[0]], layers=["3"], methods=["joint"], size=12, joint=options)
    assert [(r.route, r.exact, r.closed_form) for r in rows] == [("joint", False, False)]
    assert rows[0].joint == repr(options)


def test_resume_computes_only_missing_rows(model, images, tmp_path, monkeypatch):
    out = tmp_path / "rows.csv"
    first = _run(model, images, out, size=12, methods=["patch"])
    before = out.read_bytes()
    calls = _count_calls(monkeypatch)
    again = _run(model, images, out, size=12, methods=["patch"])
    assert calls == []
    assert again == first
    assert out.read_bytes() == before
    more = _run(model, images, out, size=12, methods=["patch", "auto"])
    assert sorted(calls) == sorted([(layer, "auto") for layer in LAYERS] * 3)
    assert out.read_bytes().startswith(before)
    assert [r for r in more if r.method == "patch"] == first
    assert len(read_rows(out)) == 12


def test_truncated_last_line_is_dropped_and_redone(model, images, tmp_path, monkeypatch):
    out = tmp_path / "rows.csv"
    rows = _run(model, images, out, size=12, methods=["patch"])
    data = out.read_bytes()
    cut = data[: data.rstrip(b"\n").rfind(b"\n") + 20]  # the last line half written, as by a crash
    out.write_bytes(cut)
    assert read_rows(out) == rows[:-1]
    calls = _count_calls(monkeypatch)
    again = _run(model, images, out, size=12, methods=["patch"])
    assert calls == [(rows[-1].layer, "patch")]
    assert again == [*rows[:-1], dataclasses.replace(rows[-1], seconds=again[-1].seconds)]
    assert out.read_bytes().endswith(b"\n")
    assert read_rows(out) == again


def test_interrupt_keeps_the_finished_rows(model, images, tmp_path, monkeypatch):
    out = tmp_path / "rows.csv"
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[2:4])
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(cells, "reconstruct", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(model, images, out, size=12)
    assert [(r.layer, r.method) for r in read_rows(out)] == calls
    monkeypatch.setattr(cells, "reconstruct", reconstruct)
    assert len(_run(model, images, out, size=12)) == 12
    assert len(read_rows(out)) == 12


def _row(image, psnr, exact=True, layer="conv1", method="auto"):
    return EvaluationRow(
        image, "0", layer, method, psnr, psnr / 100, 1 / psnr, psnr / 1000, exact, False, "lsqr", psnr / 10,
        "m", "0", 32, None, "float64", "switches", "active_set", "", "",
    )  # fmt: skip


def test_summary_interval_is_the_student_t_interval():
    values = [30.0, 31.5, 29.0, 33.25]
    rows = [_row(f"{i}.png", v, exact=i < 3) for i, v in enumerate(values)] + [_row("x.png", 12.0, layer="conv2")]
    first, second = summarize(rows)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (first.layer, first.method, first.n) == ("conv1", "auto", 4)
    assert first.psnr == pytest.approx(np.mean(values), rel=1e-15)
    assert first.psnr_ci == pytest.approx((high - low) / 2, rel=1e-12)
    ssim = [v / 100 for v in values]
    assert first.ssim_ci == pytest.approx(stats.t.ppf(0.975, 3) * np.std(ssim, ddof=1) / 2, rel=1e-12)
    assert first.exact == 0.75
    assert first.seconds == pytest.approx(np.mean(values) / 10, rel=1e-15)
    assert (second.n, second.psnr) == (1, 12.0)
    assert math.isnan(second.psnr_ci)
    with pytest.raises(OptionError, match="confidence in"):
        summarize(rows, confidence=95)


def test_images_folder_glob_and_errors(images, tmp_path):
    assert [p.name for p in image_files(images)] == ["a.png", "b.png", "c.png"]
    assert [p.name for p in image_files(str(images / "[ab].png"))] == ["a.png", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match=r"in folder .*empty.*found none"):
        image_files(tmp_path / "empty")
    with pytest.raises(ImageReadError, match=r"pattern .*\*\.jpg.* matches none"):
        image_files(str(images / "*.jpg"))
    with pytest.raises(
        ImageReadError, match=r"folder of images, an image file or a glob pattern, got .*, which does not exist"
    ):
        image_files(tmp_path / "missing")


def test_unknown_method_or_layer_is_refused_before_any_work(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    with pytest.raises(OptionError, match=r"expected methods among .*got \['best'\]"):
        _run(model, images, out, methods=["auto", "best"])
    with pytest.raises(OptionError, match=r"expected layers, each once, got \['1', '1'\]"):
        _run(model, images, out, layers=["1", "1"])
    with pytest.raises(LayerNotFoundError, match="conv9"):
        _run(model, images, out, layers=["conv9"])
    with pytest.raises(OptionError, match=r"expected relu in \('active_set', 'identity'\), got 'clip'"):
        _run(model, images, out, relu="clip")
    assert not out.exists()


def test_other_settings_are_refused_unless_overwrite(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    _run(model, images, out, size=12, methods=["patch"])
    with pytest.raises(ResultsFileError, match=r"other settings \(size: 12 in the file, 14 now\); .*overwrite=True"):
        _run(model, images, out, size=14, methods=["patch"])
    other = load_model(CHAIN).float().eval()
    with pytest.raises(ResultsFileError, match=r"model_sha256: .*dtype: 'float64' in the file, 'float32' now"):
        _run(other, images, out, size=12, methods=["patch"])
    rows = _run(model, images, out, size=14, methods=["patch"], overwrite=True)
    assert read_rows(out) == rows
    assert {r.size for r in rows} == {14}


def test_foreign_or_damaged_file_is_refused(model, images, tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("name,score\nx,1\n")
    with pytest.raises(ResultsFileError, match=r"expected the columns of an evaluation .* got name, score"):
        _run(model, images, foreign, methods=["patch"])
    assert foreign.read_text() == "name,score\nx,1\n"
    out = tmp_path / "rows.csv"
    _run(model, images, out, size=12, methods=["patch"])
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join([*lines[:2], "a.png,1,patch\n", *lines[2:]]))
    with pytest.raises(ResultsFileError, match="line 3: expected 22 fields, got 3"):
        read_rows(out)
    rows = _run(model, images, foreign, size=12, methods=["patch"], overwrite=True)
    assert len(read_rows(foreign)) == len(rows) == 6


# --- the command line ------------------------------------------------------------------------------------------


def _cli(args, cwd):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, match):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("invertnet: error: ")
    assert match in lines[0], lines[0]


FAST = ["--model", CHAIN, "--layers", "1,3", "--size", "12"]


def test_cli_writes_rows_summary_and_figure(images, tmp_path):
    result = _cli(
        ["evaluate", images, *FAST, "--methods", "patch,auto", "--out", "r.csv", "--summary", "s.csv",
         "--figure", "f.png"],
        tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["layer", "method", "n"]
    assert [line.split()[:3] for line in table[1:5]] == [
        ["1", "patch", "3"], ["1", "auto", "3"], ["3", "patch", "3"], ["3", "auto", "3"],
    ]  # fmt: skip
    rows = read_rows(tmp_path / "r.csv")
    assert len(rows) == 12
    assert {(r.model, r.size, r.dtype) for r in rows} == {(CHAIN, 12, "float64")}
    summary = (tmp_path / "s.csv").read_text().splitlines()
    assert summary[0].startswith("layer,method,n,perfect,undefined,psnr,psnr_ci,")
    assert len(summary) == 5
    assert skio.imread(tmp_path / "f.png").ndim == 3
    # the same command again: every row is there, nothing is recomputed, the summary files need --force
    again = _cli(["evaluate", images, *FAST, "--methods", "patch,auto", "--out", "r.csv"], tmp_path)
    assert again.exit_code == 0, again.output
    assert read_rows(tmp_path / "r.csv") == rows
    refused = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "r.csv", "--summary", "s.csv"], tmp_path)
    _one_line_error(refused, "'s.csv' exists; pass --force")


def test_cli_settings_mismatch_and_force(images, tmp_path):
    first = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path)
    assert first.exit_code == 0, first.output
    other = ["evaluate", images, "--model", CHAIN, "--layers", "1", "--size", "16", "--methods", "patch"]
    refused = _cli([*other, "--out", "r.csv"], tmp_path)
    _one_line_error(refused, "holds rows of other settings (size: 12 in the file, 16 now)")
    assert len(read_rows(tmp_path / "r.csv")) == 6
    forced = _cli([*other, "--out", "r.csv", "--force"], tmp_path)
    assert forced.exit_code == 0, forced.output
    assert [(r.layer, r.size) for r in read_rows(tmp_path / "r.csv")] == [("1", 16)] * 3


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--methods", "auto,best"], "expected methods among"),
        (["--methods", "auto,auto"], "expected each name once"),
        (["--layers", "1,conv9"], "conv9"),
        (["--out", "r.txt"], "ending in .csv, got 'r.txt' with '.txt'; add an extension, e.g. r.csv"),
        (["--figure", "f.xyz"], "expected a figure file name ending in"),
        (["--size", "4"], "4 is not in the range x>=8"),
    ],
)
def test_cli_bad_options_one_line(images, tmp_path, args, match):
    base = ["evaluate", images, "--model", CHAIN, "--layers", "1", "--size", "12", "--out", "r.csv"]
    result = _cli([*base, *args], tmp_path)
    _one_line_error(result, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize(
    ("images_arg", "match"),
    [("empty", "found none"), ("images/*.jpg", "matches none"), ("missing", "which does not exist")],
)
def test_cli_no_images_one_line(images, tmp_path, images_arg, match):
    (tmp_path / "empty").mkdir()
    result = _cli(["evaluate", images_arg, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path)
    _one_line_error(result, match)


# --- two processes under torchrun ------------------------------------------------------------------------------


def test_torchrun_two_processes_match_one(model, images, tmp_path):
    """Two gloo ranks on CPU write the rows one process computes; they also resume a file.

    The file starts with 5 of the 12 rows (kept as they are, seconds included); the ranks share the rest.
    About 15 s: two interpreters importing torch.
    """
    single = _run(model, images, tmp_path / "single.csv", size=12, model_name=CHAIN)
    out = tmp_path / "distributed.csv"
    out.write_bytes(b"".join((tmp_path / "single.csv").read_bytes().splitlines(keepends=True)[:6]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "invertnet", "--threads", "1", "evaluate", images, *FAST, "--methods", "auto,patch"]
    done = subprocess.run(
        [*command, "--out", out], env=env, cwd=tempfile.mkdtemp(dir=tmp_path), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote") == 1  # rank 0 alone prints
    assert "(12 rows, 2 processes)" in done.stdout
    written = read_rows(out)
    assert written[:5] == single[:5]
    # the ranks run 1 thread each, the single process torch's default: LSQR's sums round differently, so the
    # metrics agree to rounding and everything else exactly
    metrics = ("psnr", "ssim", "relative_error", "feature_residual")
    ranked, alone = (sorted(rows, key=lambda r: r.key) for rows in (written, single))
    for a, b in zip(ranked, alone, strict=True):
        assert dataclasses.replace(a, seconds=0.0, **{m: 0.0 for m in metrics}) == dataclasses.replace(
            b, seconds=0.0, **{m: 0.0 for m in metrics}
        )
        for m in ("ssim", "relative_error", "feature_residual"):
            assert getattr(a, m) == pytest.approx(getattr(b, m), rel=1e-6, abs=1e-12)
        # an exact row's PSNR measures rounding (above 200 dB) and differs with it
        assert a.psnr == pytest.approx(b.psnr, rel=1e-6) or min(a.psnr, b.psnr) > 200


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rows_match_cpu_rows(model, images):
    """The evaluation follows the model's device: the same rows on CUDA as on the CPU (float64)."""
    cpu = _run(model, images)
    gpu = _run(load_model(CHAIN).double().eval().cuda(), images)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.key == b.key
        assert a.psnr == pytest.approx(b.psnr, rel=1e-9)
        assert a.route == b.route


# --- nothing lost, nothing counted twice ---------------------------------------------------------------------


def test_resume_keys_rows_by_resolved_path(model, images, tmp_path, monkeypatch):
    """The issue's case: the same folder spelled ../photos recomputed and duplicated every row."""
    out = tmp_path / "rows.csv"
    first = _run(model, images, out, size=12, methods=["patch"])
    assert {Path(r.image) for r in first} == {p.resolve() for p in images.glob("*.png")}
    calls = _count_calls(monkeypatch)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = _run(model, Path("..") / "images", out, size=12, methods=["patch"])
    (tmp_path / "link").symlink_to(images)
    linked = _run(model, tmp_path / "link", out, size=12, methods=["patch"])
    assert calls == []
    assert again == linked == first
    assert len(read_rows(out)) == 6


def test_a_changed_image_is_recomputed_and_its_stale_rows_said_and_dropped(model, images, tmp_path, monkeypatch):
    out = tmp_path / "rows.csv"
    first = _run(model, images, out, size=12, methods=["patch"])
    skio.imsave(images / "b.png", np.full((20, 24, 3), 7, np.uint8), check_contrast=False)  # replaced in place
    calls = _count_calls(monkeypatch)
    again = _run(model, images, out, size=12, methods=["patch"])
    assert sorted(calls) == [("1", "patch"), ("3", "patch")]
    assert [Path(r.image).name for r in again.stale] == ["b.png", "b.png"]
    assert {r.image_sha256 for r in again.stale} == {r.image_sha256 for r in first if r.image.endswith("b.png")}
    rows = read_rows(out)
    assert len(rows) == 6  # the stale rows left the file
    assert {r.image_sha256 for r in rows if r.image.endswith("b.png")} == {ev.content_hash(images / "b.png")}


def test_duplicate_rows_are_dropped_and_counted_once(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    rows = _run(model, images, out, size=12, methods=["patch"])
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join([*lines, *lines[1:]]))  # two runs that both wrote every row
    assert len(read_rows(out)) == 12
    again = _run(model, images, out, size=12, methods=["patch"])
    assert again.duplicates == 6
    assert again == rows
    assert read_rows(out) == rows
    assert summarize(read_rows(out))[0].n == 3


def test_a_second_writer_is_refused_by_name(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    with (
        ev.exclusive_lock(out),
        pytest.raises(
            ResultsFileError, match=r"rows\.csv' is being written by another run \(it holds .*rows\.csv\.lock"
        ),
    ):
        _run(model, images, out, size=12, methods=["patch"])
    assert not out.exists()
    _run(model, images, out, size=12, methods=["patch"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "rows.csv"]  # the lock file is gone


def test_a_second_process_is_refused_while_one_writes(model, images, tmp_path):
    """Two real processes: the first holds the lock (flock) while the second starts."""
    out = tmp_path / "rows.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom invertnet.evaluation.results import exclusive_lock\n"
         "with exclusive_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", out], tmp_path)
        _one_line_error(result, "is being written by another run")
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_a_results_file_that_is_not_utf8_is_refused_by_name_and_force_starts_over(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    out.write_bytes(b"\xff\xfe\x00binary\n")
    with pytest.raises(ResultsFileError, match=r"rows\.csv': expected a results file of invertnet evaluate \(UTF-8 "
                       r"text\), got bytes that are not UTF-8 \(at byte 0\)"):  # fmt: skip
        _run(model, images, out, size=12, methods=["patch"])
    with pytest.raises(ResultsFileError, match="not UTF-8"):
        read_rows(out)
    result = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", out], tmp_path)
    _one_line_error(result, "got bytes that are not UTF-8")
    forced = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", out, "--force"], tmp_path)
    assert forced.exit_code == 0, forced.output
    assert len(read_rows(out)) == 6


def test_a_file_without_image_hashes_says_it_is_older(model, images, tmp_path):
    out = tmp_path / "rows.csv"
    old = [c for c in COLUMNS if c not in ("image_sha256", "bits")]
    out.write_text(",".join(old) + "\n")
    with pytest.raises(ResultsFileError, match=r"\(written by an older invertnet, without image hashes\); choose"):
        _run(model, images, out, size=12, methods=["patch"])


def test_bad_images_are_listed_and_skipped_or_fatal(model, images, tmp_path):
    (images / "text.png").write_text("hello, I am text")
    (images / "d.png").write_bytes((images / "a.png").read_bytes()[:60])  # cut short
    rows = _run(model, images, tmp_path / "rows.csv", size=12, methods=["patch"])
    assert [Path(r.image).name for r in rows][::2] == ["a.png", "b.png", "c.png"]
    assert [(Path(s.image).name, s.reason.split(",")[0]) for s in rows.skipped] == [
        ("d.png", "expected an image Pillow can read"),
        ("text.png", "expected an image file"),
    ]
    assert "does not recognise as an image" in rows.skipped[1].reason
    with pytest.raises(ImageReadError, match=r"d\.png'"):
        _run(model, images, tmp_path / "fatal.csv", size=12, methods=["patch"], bad_images="fail")
    with pytest.raises(OptionError, match=r"expected bad_images in \('skip', 'fail'\), got 'ignore'"):
        _run(model, images, size=12, methods=["patch"], bad_images="ignore")


def test_summaries_are_total():
    """The issue's case: one all-black image turned its layer's summary into inf ± nan."""
    rows = [_row("a.png", 30.0), _row("b.png", 34.0), _row("black.png", math.inf)]
    rows[2] = dataclasses.replace(rows[2], relative_error=math.nan, seconds=1.0)
    summary = summarize(rows)[0]
    assert (summary.n, summary.perfect, summary.undefined) == (3, 1, 1)
    assert summary.psnr == 32.0
    assert summary.relative_error == pytest.approx((1 / 30 + 1 / 34) / 2, rel=1e-15)
    text = ev.format_summary(summarize(rows))
    assert "inf" not in text
    assert "nan" not in text
    assert text.splitlines()[1].split()[:6] == ["conv1", "auto", "3", "1", "32.00", "±"]
    assert text.splitlines()[2] == "rows with an undefined metric (left out of its mean): conv1 auto: 1"
    alone = ev.format_summary(summarize([_row("a.png", 30.0)]))
    assert alone.splitlines()[1].split()[:5] == ["conv1", "auto", "1", "0", "30.00"]  # one row: no interval
    perfect = ev.format_summary(summarize([dataclasses.replace(_row("a.png", math.inf), seconds=1.0)]))
    assert perfect.splitlines()[1].split()[:5] == ["conv1", "auto", "1", "1", "--"]


# --- the command line: outputs never clobber what matters -----------------------------------------------------


def test_cli_summary_onto_the_results_is_refused_even_with_force(images, tmp_path):
    """The issue's case: --out r.csv --summary r.csv --force replaced the rows with the summary."""
    assert _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path).exit_code == 0
    before = (tmp_path / "r.csv").read_bytes()
    for other in ("r.csv", "images/../r.csv", "r.csv.lock"):
        result = _cli(["evaluate", images, *FAST, "--out", "r.csv", "--summary", other, "--force"], tmp_path)
        _one_line_error(result, f"--summary '{other}' is the same file as ")
    (tmp_path / "link.csv").symlink_to(tmp_path / "r.csv")
    result = _cli(["evaluate", images, *FAST, "--out", "r.csv", "--figure", "link.csv", "--force"], tmp_path)
    _one_line_error(result, "--figure 'link.csv' is the same file as --out 'r.csv'; give each output its own file")
    assert (tmp_path / "r.csv").read_bytes() == before


def test_cli_figure_onto_an_input_photo_is_refused_even_with_force(images, tmp_path):
    before = (images / "a.png").read_bytes()
    for figure in (images / "a.png", tmp_path / "images" / ".." / "images" / "a.png"):
        result = _cli(["evaluate", images, *FAST, "--out", "r.csv", "--figure", figure, "--force"], tmp_path)
        _one_line_error(result, "it is one of the input images, and writing would destroy it (--force never")
    assert (images / "a.png").read_bytes() == before
    assert not (tmp_path / "r.csv").exists()


def test_cli_takes_several_images_as_an_unquoted_glob_gives_them(images, tmp_path):
    files = sorted(images.glob("*.png"))
    result = _cli(["evaluate", *files, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path)
    assert result.exit_code == 0, result.output
    assert len(read_rows(tmp_path / "r.csv")) == 6


def test_cli_lists_skipped_images_and_says_so_in_its_exit_status(images, tmp_path):
    (images / "text.png").write_text("hello, I am text")
    result = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path)
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[-2].startswith(f"skipped {images.resolve() / 'text.png'}: expected an image file")
    assert lines[-1] == "skipped 1 of 4 images (exit status 3)"
    assert len(read_rows(tmp_path / "r.csv")) == 6
    fatal = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "f.csv", "--bad-images", "fail"], tmp_path)
    _one_line_error(fatal, "text.png', which Pillow does not recognise as an image")


def test_cli_says_which_rows_it_dropped(images, tmp_path):
    assert _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path).exit_code == 0
    skio.imsave(images / "c.png", np.zeros((20, 24, 3), np.uint8), check_contrast=False)
    result = _cli(["evaluate", images, *FAST, "--methods", "patch", "--out", "r.csv"], tmp_path)
    assert result.exit_code == 0, result.output
    assert f"dropped 2 rows of 1 images whose content changed since (computed again): {images.resolve() / 'c.png'}" in (
        result.stdout
    )
    assert "perfect" in result.stdout.splitlines()[1 if result.stdout.startswith("dropped") else 0]


def test_one_capture_per_image_and_layer(model, images, monkeypatch):
    """evaluate captures each (image, layer) once and runs every method on that capture."""
    captured = []
    real = cells.capture

    def counted(model, image, layer):
        captured.append(layer)
        return real(model, image, layer)

    monkeypatch.setattr(cells, "capture", counted)
    rows = evaluate(model, images, LAYERS, ["patch", "lsqr", "auto"], size=12)
    assert len(rows) == 3 * 2 * 3
    assert captured == LAYERS * 3


def test_a_capture_of_another_layer_model_or_image_is_refused(model):
    """reconstruct(graph=...) reuses a capture only when it is this model's, on this image, up to this layer."""
    from invertnet.capture.graph import capture

    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    graph = capture(model, x, "1")
    assert reconstruct(model, x, "1", "lsqr", graph=graph).exact  # padded 3x3 conv, 12 filters: injective (proven)
    with pytest.raises(
        OptionError, match=r"expected a capture of this model up to '3', got one of this model up to '1'"
    ):
        reconstruct(model, x, "3", graph=graph)
    other = load_model(CHAIN).double().eval()
    with pytest.raises(OptionError, match=r"got one of another model up to '1'; capture it"):
        reconstruct(other, x, "1", graph=graph)
    with pytest.raises(OptionError, match="expected the capture of this image, got one of another image"):
        reconstruct(model, x + 0.1, "1", graph=graph)
