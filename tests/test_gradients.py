"""Gradients where invertnet defines differentiable maps, by torch.autograd.gradcheck (float64 finite differences),
and the inverses on every device and dtype of the suite (``device_dtype``), against the dtype's tolerance."""

import pytest
import torch
from conftest import TOL, assert_close

from invertnet import ConvOperator, crelu, invert_crelu, leaky_relu_inverse
from invertnet.nn.activations import invert_proportional, proportional
from invertnet.operators import dottest
from invertnet.reconstruction.priors import TotalVariation


def test_total_variation_gradient_is_its_derivative():
    """The completion's L-BFGS follows autograd's gradient of the prior: checked against finite differences."""
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(TotalVariation(eps=1e-2), (x,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(TotalVariation(eps=1e-2), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("slope", [0.0, 0.25])
def test_invert_crelu_is_differentiable_and_its_gradient_is_exact(slope):
    """z = pos - neg (scaled for a leaky CReLU): a linear map whose Jacobian autograd gets right."""
    h = crelu(torch.randn(2, 4, 5, 5, dtype=torch.float64), negative_slope=slope).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: invert_crelu(t, check=False, negative_slope=slope), (h,))


def test_leaky_relu_inverse_gradient_away_from_the_kink():
    y = torch.tensor([-2.0, -0.5, 0.3, 1.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: leaky_relu_inverse(t, 0.2), (y,))


def test_convolution_operator_gradient_is_its_adjoint():
    """The walk and the completion differentiate through ConvOperator: its autograd matches finite differences."""
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect").double()
    op = ConvOperator.from_conv(conv, (7, 7))
    x = torch.rand(1, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.forward, (x,))
    y = torch.rand(1, *op.out_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.adjoint, (y,))


def test_crelu_round_trip_on_every_device_and_dtype(device_dtype):
    device, dtype = device_dtype
    z = torch.randn(3, 6, 4, 4, dtype=dtype, device=device)
    back = invert_crelu(crelu(z))
    assert (back.device, back.dtype) == (z.device, z.dtype)
    assert torch.equal(back, z)  # pos - neg with one of them zero: bit-exact in any dtype


def test_proportional_round_trip_on_every_device_and_dtype(device_dtype):
    device, dtype = device_dtype
    z = torch.randn(2, 8, 3, 3, dtype=dtype, device=device)
    pre, known = invert_proportional(proportional(z, 1, 2), 1, 2)
    assert (pre.device, pre.dtype) == (z.device, z.dtype)
    assert torch.equal(pre[known], z[known])


def test_convolution_adjoint_on_every_device_and_dtype(device_dtype):
    """<A x, y> = <x, A^T y> to the dtype's rounding (the dot test), on the device of the data."""
    device, dtype = device_dtype
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).to(device=device, dtype=dtype)
    op = ConvOperator.from_conv(conv, (8, 8))
    forward, adjoint = dottest(op, dtype=dtype, device=device, generator=torch.Generator().manual_seed(0))
    rtol, _ = TOL[dtype]
    assert abs(forward - adjoint) <= 100 * rtol * max(abs(forward), abs(adjoint))
    x = torch.rand(2, 3, 8, 8, dtype=dtype, device=device)
    assert_close(op.forward(x), conv(x) - conv.bias.reshape(1, -1, 1, 1), dtype)
