import os

import numpy as np
import pytest
import torch
from skimage import io as skio

from invertnet import ImageReadError, WeightsError
from invertnet.io import load_image, load_weights, save_image
from invertnet.models import all_cnn_b, build_model, convpool_cnn_c


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_paper():
    # Shang et al. 2016: All-CNN-B ReLU 9.37M, CReLU (conv1-4) 10.14M; ConvPool-CNN-C ReLU 1.4M (hand counts below)
    assert _count(all_cnn_b(crelu_layers=())) == 9_372_840
    assert _count(all_cnn_b()) == 10_144_936
    assert _count(convpool_cnn_c(crelu_layers=())) == 1_369_738
    # CReLU on conv1-8 of ConvPool-CNN-C: 2,735,626 (the paper rounds its CReLU model to 2.8M)
    assert _count(convpool_cnn_c()) == 2_735_626


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
    assert std == pytest.approx((2 / a.conv4.conv.weight[0].numel()) ** 0.5, rel=0.05)


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
    ("array", "note"),
    [
        (np.full((40, 60), 128, np.uint8), "greyscale replicated to 3 channels"),
        (np.dstack([np.full((40, 40, 3), 255, np.uint8), np.zeros((40, 40), np.uint8)]), "RGBA composited over white"),
        (np.zeros((30, 30, 3), np.uint8), ""),
    ],
)
def test_load_image_conversions(tmp_path, array, note):
    skio.imsave(tmp_path / "in.png", array, check_contrast=False)
    image, said = load_image(tmp_path / "in.png", size=None)
    assert image.shape == (1, 3, *array.shape[:2])
    assert note in said
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1


def test_load_image_crops_and_resizes(tmp_path):
    skio.imsave(tmp_path / "in.png", np.zeros((40, 60, 3), np.uint8), check_contrast=False)
    image, said = load_image(tmp_path / "in.png", size=16)
    assert image.shape == (1, 3, 16, 16)
    assert said == "centre-cropped 40x60 -> 40x40; resized 40x40 -> 16x16"


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageReadError, match=r"does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match=r"expected an image scikit-image can read"):
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


def test_load_image_refuses_two_channel_images(tmp_path):
    skio.imsave(tmp_path / "la.png", np.zeros((8, 8, 2), np.uint8), check_contrast=False)
    with pytest.raises(
        ImageReadError, match=r"expected a greyscale, RGB or RGBA image, got an array of shape \(8, 8, 2\)"
    ):
        load_image(tmp_path / "la.png")
