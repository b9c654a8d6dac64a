"""What each ReLU layer keeps (invertnet.analysis.information) and the CReLU twin, float64."""

import math

import pytest
import torch
from test_cli import ASSETS, _one_line_error, run
from torch import nn

from invertnet import CReLU
from invertnet.analysis.information import crelu_twin, format_information, layer_information
from invertnet.errors import ModelError, UnsupportedLayerError
from invertnet.zoo.models import all_cnn_b, count_parameters


def test_the_twin_of_all_cnn_b_is_the_papers_half_model():
    relu = all_cnn_b(crelu_layers=())
    twin = crelu_twin(relu)
    half = all_cnn_b(crelu_layers=range(1, 13), half_layers=range(1, 13))
    assert count_parameters(twin) == count_parameters(half)  # the zoo's CReLU "half" model, built independently
    assert [type(m).__name__ for m in twin.conv1] == [type(m).__name__ for m in half.conv1]
    assert torch.equal(twin.conv1.conv.weight, relu.conv1.conv.weight[:48])  # the first half of the filters
    assert relu.conv1.conv.out_channels == 96  # the model itself is untouched


def test_the_twin_halves_batchnorm_and_keeps_the_width():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_()
    twin = crelu_twin(net).eval()
    assert [type(m).__name__ for m in twin] == ["Conv2d", "BatchNorm2d", "CReLU", "Conv2d"]
    assert torch.equal(twin[1].running_mean, net[1].running_mean[:4])
    x = torch.rand(2, 3, 9, 9)
    assert twin(x).shape == net(x).shape
    with torch.no_grad():
        z = net[1](net[0](x))[:, :4]
    torch.testing.assert_close(twin[2](twin[1](twin[0](x))), CReLU()(z))


def test_the_twin_refuses_what_it_cannot_halve():
    with pytest.raises(ModelError, match=r"found none; the twin replaces such ReLUs"):
        crelu_twin(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh()))
    with pytest.raises(
        ModelError, match=r"expected Conv2d '0' with groups=1 and an even number of filters, got groups=2"
    ):
        crelu_twin(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU()))


def test_a_determined_layer_is_counted_and_recovered_by_all_but_the_identity():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()).double().eval()
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    (row,) = layer_information(net, x, ["1"], twin=crelu_twin(net))
    assert (row.images, row.determined, row.undecided) == (2, 2, 0)
    with torch.no_grad():
        assert row.active_share == pytest.approx(float((net(x) > 0).double().mean()), abs=1e-15)
    assert row.psnr_active_set > 150  # exact up to LSQR's 1e-12: measured 226 dB
    assert row.psnr_twin > 150  # CReLU inverts exactly
    assert row.psnr_identity < 30
    assert "patch" in row.certificate
    table = format_information([row])
    assert table.splitlines()[1].startswith("1            ")
    assert "2/2" in table


def test_no_twin_leaves_its_column_empty_and_other_layers_are_refused():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Tanh()).double().eval()
    x = torch.rand(1, 1, 10, 10, dtype=torch.float64)
    (row,) = layer_information(net, x, ["1"])
    assert math.isnan(row.psnr_twin)
    assert row.determined == 0
    with pytest.raises(
        UnsupportedLayerError, match=r"expected a layer whose output is a ReLU, ReLU6 or Hardtanh, got '3'"
    ):
        layer_information(net, x, ["3"])


def test_information_command(tmp_path):
    out = tmp_path / "i.png"
    # 16 px: the command and its refusal do not depend on the size (7.2 s at 32 px, 3.8 s at 16)
    args = ["information", ASSETS / "camera.png", "--size", "16", "--layers", "conv1", "--no-twin", "--out", out]
    result, _ = run(args, tmp_path)
    assert result.exit_code == 0, result.output
    assert "conv1" in result.stdout
    assert "certificate (conv1):" in result.stdout
    assert out.stat().st_size > 0
    refused, _ = run(args, tmp_path)  # the figure exists now: refused without --force
    _one_line_error(refused, "exists")


def test_a_relu_with_no_convolution_below_is_refused():
    net = nn.Sequential(nn.AvgPool2d(2), nn.ReLU()).double().eval()
    with pytest.raises(UnsupportedLayerError, match=r"expected a Conv2d or Linear below '1' \(through BatchNorm2d\)"):
        layer_information(net, torch.rand(1, 1, 8, 8, dtype=torch.float64), ["1"])
