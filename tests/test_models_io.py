import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io as skio

from invertnet import CReLU, ImageReadError, WeightsError, reconstruct
from invertnet.errors import ArgumentTypeError, NonFiniteError, OptionError, OutputPathError, ShapeError
from invertnet.io.files import atomic_write, load_image, load_weights, save_image
from invertnet.zoo.models import MODELS, all_cnn_b, build_model, convpool_cnn_c, count_parameters

ASSETS = Path(__file__).resolve().parents[1] / "assets"

#: Our counts, by hand and by the builders; the paper's (Shang et al. 2016) where it gives one.
COUNTS = {
    "all-cnn-b-relu": (9_372_840, 9.37e6),
    "all-cnn-b-avr": (9_372_840, None),
    "all-cnn-b-avr-conv1-7": (9_372_840, None),
    "all-cnn-b-crelu": (10_144_936, 10.14e6),
    "all-cnn-b-crelu-conv1-7": (11_766_952, 11.62e6),
    "all-cnn-b-crelu-half": (4_686_420, 4.68e6),
    "all-cnn-b-crelu-147-half": (8_605_480, 8.60e6),
    "convpool-cnn-c-relu": (1_369_738, 1.4e6),
    "convpool-cnn-c-double": (5_467_402, 5.6e6),
    "convpool-cnn-c-crelu": (2_735_626, 2.8e6),
    "convpool-cnn-c-crelu-half": (685_834, 0.7e6),
    "vgg16-cifar-relu": (14_728_266, None),
    "vgg16-cifar-crelu-conv1": (14_765_130, None),
    "vgg16-cifar-crelu-conv13": (14_912_586, None),
    "vgg16-cifar-crelu-conv135": (15_502_410, None),
}
#: The models whose counts differ from the paper's beyond its rounding (explained in invertnet.zoo.models).
DIFFER = {"all-cnn-b-crelu-conv1-7", "convpool-cnn-c-double", "convpool-cnn-c-crelu"}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts(name):
    ours, paper = COUNTS[name]
    assert count_parameters(build_model(name)) == ours
    assert MODELS[name].paper_parameters == paper
    if paper is not None and name not in DIFFER:
        # within one unit of the paper's last digit (it rounds, and sometimes truncates: 4,686,420 -> 4.68M)
        step = 1e5 if paper < 1e6 or name.startswith("convpool") else 1e4
        assert abs(ours - paper) <= step


def test_hand_count_of_all_cnn_b_relu():
    # conv weights (k*k*C_in*C_out) plus biases, layer by layer (Springenberg et al. 2014, Table 6)
    rows = [(3, 96, 11), (96, 96, 1), (96, 96, 3), (96, 256, 5), (256, 256, 1), (256, 256, 3), (256, 384, 3)]
    rows += [(384, 384, 1), (384, 384, 3), (384, 1024, 3), (1024, 1024, 1), (1024, 1000, 1)]
    assert sum(k * k * a * b + b for a, b, k in rows) == COUNTS["all-cnn-b-relu"][0]


def test_the_papers_conv1_7_count_is_crelu_on_conv1_6():
    # documented in invertnet.zoo.models: 11.62M is what CReLU on conv1-6 gives, not conv1-7
    assert count_parameters(all_cnn_b(crelu_layers=range(1, 7))) == 11_619_496


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_zoo_layers_are_named_conv1_to_convn(name):
    model = build_model(name)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [f"conv{k}.conv" for k in range(1, len(convs) + 1)]


@pytest.mark.parametrize("name", ["vgg16-cifar-crelu-conv135", "convpool-cnn-c-crelu-half", "convpool-cnn-c-double"])
def test_cifar_models_run_and_invert_from_conv1(name):
    model = build_model(name).double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
    result = reconstruct(model, x, "conv1", "lsqr")
    lossless = isinstance(model.conv1.act, CReLU)
    # measured 7.3e-16 through CReLU, 0.55 through ReLU
    assert (float(result.relative_error) <= 1e-13) == lossless


def test_output_shapes():
    model = all_cnn_b()
    with torch.no_grad():
        assert model.conv1(torch.zeros(1, 3, 224, 224)).shape == (1, 192, 54, 54)  # 96 filters, CReLU doubles
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
        assert convpool_cnn_c()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_seeded_filters_are_reproducible():
    a, b, c = all_cnn_b(seed=1), all_cnn_b(seed=1), all_cnn_b(seed=2)
    assert torch.equal(a.conv1.conv.weight, b.conv1.conv.weight)
    assert not torch.equal(a.conv1.conv.weight, c.conv1.conv.weight)
    std = a.conv4.conv.weight.std().item()
    # statistical: the sample std of 1.2M Gaussian draws has relative std 1/sqrt(2n) = 6.4e-4 (measured 7.3e-4 off)
    assert std == pytest.approx((2 / a.conv4.conv.weight[0].numel()) ** 0.5, rel=5e-3)


def test_weights_round_trip_pt_and_safetensors(tmp_path):
    source = build_model("convpool-cnn-c-crelu", seed=3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = load_weights(build_model("convpool-cnn-c-crelu", seed=4), tmp_path / "w.pt")
    assert torch.equal(target.conv5.conv.weight, source.conv5.conv.weight)
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    target = load_weights(build_model("convpool-cnn-c-crelu", seed=4), tmp_path / "w.safetensors")
    assert torch.equal(target.conv9.conv.weight, source.conv9.conv.weight)


class Gadget:
    """Not a tensor: torch.load(weights_only=True) must refuse to unpickle it."""


def test_weights_refuse_arbitrary_pickles(tmp_path):
    torch.save({"conv1.conv.weight": Gadget()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"readable with weights_only=True"):
        load_weights(build_model("convpool-cnn-c-crelu"), tmp_path / "evil.pt")


def test_weights_errors(tmp_path):
    model = build_model("convpool-cnn-c-crelu")
    with pytest.raises(WeightsError, match=r"does not exist"):
        load_weights(model, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"expected a state dict saved with torch.save"):
        load_weights(model, tmp_path / "junk.pt")
    torch.save(build_model("all-cnn-b-crelu").state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"expected weights for Sequential with the same names and shapes"):
        load_weights(model, tmp_path / "other.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"expected a mapping of parameter names to tensors"):
        load_weights(model, tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    pytest.importorskip("safetensors")
    with pytest.raises(WeightsError, match=r"expected a valid .safetensors file"):
        load_weights(model, tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    ("array", "note", "value"),
    [
        (np.full((40, 60), 128, np.uint8), "greyscale replicated to 3 channels", 128 / 255),
        (
            np.dstack([np.full((40, 40, 3), 100, np.uint8), np.zeros((40, 40), np.uint8)]),
            "RGBA composited over white",
            1.0,  # alpha 0: only the white background is left
        ),
        (np.zeros((30, 30, 3), np.uint8), "", 0.0),
    ],
)
def test_load_image_conversions(tmp_path, array, note, value):
    skio.imsave(tmp_path / "in.png", array, check_contrast=False)
    image, said = load_image(tmp_path / "in.png", size=None)
    assert image.shape == (1, 3, *array.shape[:2])
    assert note in said
    assert image.dtype == torch.float64
    assert torch.equal(image, torch.full_like(image, value))  # hand values: uint8 / 255, composited


def test_load_image_crops_and_resizes(tmp_path):
    skio.imsave(tmp_path / "in.png", np.zeros((40, 60, 3), np.uint8), check_contrast=False)
    image, said = load_image(tmp_path / "in.png", size=16)
    assert image.shape == (1, 3, 16, 16)
    assert said == "centre-cropped 40x60 -> 40x40; resized 40x40 -> 16x16"


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageReadError, match=r"does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(
        ImageReadError, match=r"which Pillow does not recognise as an image \(it starts with b'\\x89PNG"
    ):
        load_image(tmp_path / "corrupt.png")


def test_save_image_round_trip(tmp_path):
    image = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    save_image(image, tmp_path / "out.png")
    back, _ = load_image(tmp_path / "out.png")
    assert float((back.float() - image).abs().max()) <= 0.5 / 255 + 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


# --- bad input to build_model, load_image, save_image, load_weights, atomic_write ---------------


def test_build_model_refuses_unknown_names_and_seeds():
    with pytest.raises(OptionError, match=r"expected a model name in \[.*\], got 'resnet'; 'invertnet models' lists"):
        build_model("resnet")
    with pytest.raises(
        OptionError, match=r"expected an int seed in \[-2\*\*63, 2\*\*64 - 1\].*got 1180591620717411303424"
    ):
        build_model("convpool-cnn-c-crelu", 2**70)
    with pytest.raises(OptionError, match=r"expected an int seed .*got 1\.5"):
        build_model("convpool-cnn-c-crelu", 1.5)


def test_load_image_says_when_it_clips_a_float_image(tmp_path):
    array = np.full((8, 8, 3), 0.5, np.float32)
    array[0, 0, 0], array[1, 1, 1] = -0.2, 1.7
    skio.imsave(tmp_path / "f.tif", array, check_contrast=False)
    image, note = load_image(tmp_path / "f.tif")
    assert note == "values outside [0, 1] (min -0.2, max 1.7) clipped"
    assert float(image.min()) == 0.0
    assert float(image.max()) == 1.0
    array[2, 2, 2] = np.nan
    skio.imsave(tmp_path / "nan.tif", array, check_contrast=False)
    with pytest.raises(NonFiniteError, match=r"expected finite pixel values, got 1 NaN or infinite pixels"):
        load_image(tmp_path / "nan.tif")


@pytest.mark.parametrize(
    ("size", "match"),
    [
        (0, r"expected an int size in \[1, 4096\] .*got 0; pass a positive side such as 224"),
        (-3, r"got -3; pass a positive side"),
        (2.5, r"got 2\.5; pass a positive side"),
        (100_000, r"got 100000; a 100000x100000 RGB image alone takes 224 GiB in float64"),
    ],
)
def test_load_image_refuses_bad_sizes(size, match):
    with pytest.raises(OptionError, match=match):
        load_image(ASSETS / "coffee.png", size=size)


def test_load_image_refuses_an_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"which is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.png")


@pytest.mark.parametrize(
    ("name", "image", "error", "match"),
    [
        ("noext", torch.rand(3, 4, 4), OutputPathError, r"ending in \.png, .*got '.*noext' with no extension"),
        ("out.xyz", torch.rand(3, 4, 4), OutputPathError, r"with '\.xyz'; add an extension, e\.g\. out\.png"),
        ("out.png", torch.rand(4, 4), ShapeError, r"expected one image of shape \(C, H, W\).*got \(4, 4\)"),
        ("out.png", torch.rand(2, 3, 4, 4), ShapeError, r"got \(2, 3, 4, 4\); save the images of a batch one by one"),
        ("out.png", torch.rand(5, 4, 4), ShapeError, r"with C in 1, 3, 4, got \(5, 4, 4\)"),
        ("out.png", torch.full((3, 4, 4), float("nan")), NonFiniteError, r"expected finite values, got 48 NaN/Inf"),
        ("out.png", np.zeros((4, 4, 3)), ArgumentTypeError, r"expected a torch\.Tensor, got ndarray"),
    ],
)
def test_save_image_refuses_before_writing(tmp_path, name, image, error, match):
    with pytest.raises(error, match=match):
        save_image(image, tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary


def test_load_weights_names_a_non_finite_tensor(tmp_path):
    state = build_model("convpool-cnn-c-crelu").state_dict()
    state["conv2.conv.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(NonFiniteError, match=r"got 1 of 165888 entries of 'conv2\.conv\.weight' NaN or infinite"):
        load_weights(build_model("convpool-cnn-c-crelu"), tmp_path / "diverged.pt")
    with pytest.raises(ArgumentTypeError, match=r"load_weights: expected an nn\.Module, got str"):
        load_weights("convpool-cnn-c-crelu", tmp_path / "diverged.pt")


def test_weights_file_holding_a_whole_module_says_to_save_the_state_dict(tmp_path):
    torch.save(torch.nn.Conv2d(3, 4, 3), tmp_path / "module.pt")
    with pytest.raises(WeightsError, match=r"holds pickled objects other than tensors .*save model\.state_dict\(\)"):
        load_weights(build_model("convpool-cnn-c-crelu"), tmp_path / "module.pt")


def test_atomic_write_leaves_nothing_when_the_block_fails(tmp_path):
    def interrupted() -> None:
        with atomic_write(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: all_cnn_b(activation="tanh"), r"expected an activation in \['avr', 'crelu', 'relu'\], got 'tanh'"),
        (
            lambda: all_cnn_b(crelu_layers=(13,)),
            r"expected crelu layer numbers from 1 to 12 \(conv1\.\.conv12\), got 13",
        ),
        (lambda: all_cnn_b(avr_layers=(0,)), r"expected avr layer numbers from 1 to 12 .*got 0; layers are numbered"),
        (lambda: convpool_cnn_c(width=0.0), r"expected a positive width for conv1\.\.conv9, got 0\.0"),
    ],
    ids=["activation", "crelu-layer-13", "avr-layer-0", "zero-width"],
)
def test_builders_refuse_layers_they_do_not_have(build, match):
    with pytest.raises(OptionError, match=match):
        build()


def test_save_image_into_a_missing_directory_or_onto_a_directory(tmp_path):
    with pytest.raises(OutputPathError, match=r"directory '.*missing' does not exist"):
        save_image(torch.rand(3, 4, 4), tmp_path / "missing" / "x.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OutputPathError, match=r"d\.png': it is a directory; give a file name"):
        save_image(torch.rand(3, 4, 4), tmp_path / "d.png")
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"]
