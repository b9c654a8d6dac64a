import pytest
import torch

from invertnet import AVR, CReLU, InvalidCReLUOutputError, avr, crelu, invert_crelu, leaky_relu_inverse
from invertnet.errors import ArgumentTypeError, OptionError, ShapeError
from invertnet.nn.activations import Proportional, invert_proportional, proportional


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_invert_crelu_is_exact(dim, generator):
    z = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=generator)
    h = crelu(z, dim=dim)
    assert h.shape[dim] == 2 * z.shape[dim]
    assert torch.equal(invert_crelu(h, dim=dim), z)  # bit-exact: pos - 0 or 0 - neg


def test_crelu_hand_value():
    assert torch.equal(crelu(torch.tensor([[1.5, -2.0, 0.0]])), torch.tensor([[1.5, 0.0, 0.0, 0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("slope", [0.01, 0.2, 1.5])
def test_leaky_crelu_inverts(slope, generator):
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=generator)
    module = CReLU(negative_slope=slope)
    h = module(z)
    # hand-derived: pos - neg = (1 + a) z
    torch.testing.assert_close(h[:, :3] - h[:, 3:], (1 + slope) * z, rtol=1e-15, atol=0)
    torch.testing.assert_close(module.inverse(h), z, rtol=1e-15, atol=1e-15)


def test_leaky_relu_inverse(generator):
    x = torch.randn(100, dtype=torch.float64, generator=generator)
    # one rounding in the forward multiply, one in the inverse divide: measured 4.4e-16 (2 ulp)
    torch.testing.assert_close(leaky_relu_inverse(torch.nn.functional.leaky_relu(x, 0.1), 0.1), x, rtol=5e-15, atol=0)
    with pytest.raises(ValueError, match=r"expected negative_slope > 0"):
        leaky_relu_inverse(x, 0.0)


def test_avr_loses_the_sign():
    x = torch.tensor([-1.0, 2.0])
    assert torch.equal(avr(x), AVR()(-x))


def test_rejects_odd_size():
    with pytest.raises(InvalidCReLUOutputError, match=r"expected an even size along dim=1.*got shape \(2, 3, 4\)"):
        invert_crelu(torch.zeros(2, 3, 4))


def test_rejects_negative_entries():
    h = crelu(torch.randn(1, 2, 3, 3, dtype=torch.float64))
    h[0, 1, 2, 0] = -0.5
    with pytest.raises(InvalidCReLUOutputError, match=r"expected non-negative values.*-0\.5 at index \(0, 1, 2, 0\)"):
        invert_crelu(h)


def test_rejects_both_halves_nonzero():
    h = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    h[0, 1, 1, 0] = 1.0  # positive half, channel 1
    h[0, 3, 1, 0] = 0.25  # negative half, channel 1
    with pytest.raises(InvalidCReLUOutputError, match=r"both halves non-zero at index \(0, 1, 1, 0\)"):
        invert_crelu(h)


def test_tolerance_is_dtype_aware():
    h = torch.zeros(1, 2, dtype=torch.float32)
    h[0, 0], h[0, 1] = 1.0, 1e-7  # below 64 eps(float32) * max|h|: rounding noise, accepted
    assert torch.equal(invert_crelu(h), h[:, :1] - h[:, 1:])  # pos - neg: the noise is kept, not rejected
    h64 = h.double()  # in float64 the same 1e-7 is far above rounding: rejected
    with pytest.raises(InvalidCReLUOutputError, match=r"both halves non-zero"):
        invert_crelu(h64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rejects_non_finite(bad):
    h = torch.zeros(1, 2, 2, 2)
    h[0, 0, 1, 1] = bad
    with pytest.raises(InvalidCReLUOutputError, match=r"expected finite values.*at index \(0, 0, 1, 1\)"):
        invert_crelu(h)


def test_rejects_inconsistent_leaky_output():
    h = CReLU(negative_slope=0.1)(torch.randn(1, 2, 3, 3, dtype=torch.float64))
    h[0, 0, 0, 0] += 1.0
    with pytest.raises(InvalidCReLUOutputError, match=r"negative_slope=0\.1.*at index \(0, 0, 0, 0\)"):
        invert_crelu(h, negative_slope=0.1)


def test_check_false_accepts_estimates():
    h = torch.ones(1, 2, 2, 2)
    assert torch.equal(invert_crelu(h, check=False), torch.zeros(1, 1, 2, 2))


def test_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"expected a torch.Tensor, got list"):
        invert_crelu([1.0, 0.0])


# --- bad input: every public function taking a dim checks it instead of wrapping it ------------


@pytest.mark.parametrize(
    "call",
    [
        lambda h, d: invert_crelu(h, dim=d),
        lambda h, d: crelu(h, dim=d),
        lambda h, d: CReLU(dim=d)(h),
        lambda h, d: proportional(h, 1, 2, dim=d),
        lambda h, d: invert_proportional(h, 1, 2, dim=d),
    ],
    ids=["invert_crelu", "crelu", "CReLU", "proportional", "invert_proportional"],
)
@pytest.mark.parametrize("dim", [4, 5, -5])
def test_dim_outside_the_tensor_is_refused(call, dim):
    h = crelu(torch.randn(2, 3, 4, 4))
    with pytest.raises(
        ShapeError, match=rf"expected dim in \[-4, 4\) for a tensor of shape \(2, 6, 4, 4\), got dim={dim}"
    ):
        call(h, dim)


def test_dim_must_be_an_int_and_negative_dims_still_work():
    h = crelu(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ArgumentTypeError, match=r"invert_crelu: expected an int dim, got float 1\.5"):
        invert_crelu(h, dim=1.5)
    assert isinstance(ArgumentTypeError("x"), TypeError)
    assert torch.equal(invert_crelu(h, dim=-3), invert_crelu(h, dim=1))


def test_bad_slopes_are_option_errors():
    h = crelu(torch.randn(1, 2, 3, 3))
    with pytest.raises(
        OptionError, match=r"expected negative_slope != -1, got -1.*pass the slope the forward pass used"
    ):
        invert_crelu(h, negative_slope=-1.0)
    with pytest.raises(OptionError, match=r"expected negative_slope > 0 \(bijective\), got nan"):
        leaky_relu_inverse(h, float("nan"))
    with pytest.raises(TypeError, match=r"leaky_relu_inverse input: expected a torch.Tensor, got list"):
        leaky_relu_inverse([1.0, -2.0], 0.5)
    with pytest.raises(OptionError, match=r"expected 0 <= m <= n and n >= 1, got m=3, n=2"):
        proportional(h, 3, 2)


def test_bad_tolerance_and_proportions_are_refused():
    h = crelu(torch.randn(1, 2, 3, 3))
    with pytest.raises(OptionError, match=r"invert_crelu: expected a finite atol >= 0, got -1\.0"):
        invert_crelu(h, atol=-1.0)
    with pytest.raises(ArgumentTypeError, match=r"Proportional: expected int m and n .*got m=1\.5, n=2"):
        Proportional(1.5, 2)
