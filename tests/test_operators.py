"""The operator battery: every configuration proves its forward, adjoint and dense matrix."""

import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from strategies import ConvConfig, conv_configs

from invertnet import AdjointMismatchError, ConvOperator, ShapeError, TooLargeError, dottest
from invertnet.errors import ArgumentTypeError, InvertnetError, OptionError
from invertnet.operators import Padding


def _autograd_adjoint(op, y):
    x = torch.zeros(y.shape[0], *op.in_shape, dtype=y.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(op.forward(x), x, y)
    return grad


@settings(max_examples=150, deadline=None)
@given(conv_configs())
def test_conv_operator_battery(cfg: ConvConfig):
    conv = cfg.conv()
    op = ConvOperator.from_conv(conv, cfg.size)
    x = torch.randn(2, *op.in_shape, dtype=torch.float64)
    y = torch.randn(2, *op.out_shape, dtype=torch.float64)
    # forward: nn.Conv2d minus its bias
    with torch.no_grad():
        reference = conv(x) - (conv.bias.reshape(1, -1, 1, 1) if conv.bias is not None else 0)
    assert_close(op.forward(x), reference)
    # dot test to 1e-12 of the Cauchy-Schwarz bound ||A x|| ||y|| (the design's figure): measured up to 2.3e-12
    # relative to |<A x, y>| when it cancels (the normalisation before), about 1e-16 of the bound
    dottest(op, rtol=1e-12)
    # adjoint equals the autograd vector-Jacobian product and the dense matrix's transpose
    assert_close(op.adjoint(y), _autograd_adjoint(op, y))
    dense = op.to_dense()
    assert_close(op.adjoint(y).flatten(1), y.flatten(1) @ dense)
    # the matrix placed from the patch rows (through every padding mode) is the one built by columns
    assert_close(op.placed_matrix(), dense)
    # the Gram matrix summed from the filters' products is A^T A (zero padding; other modes are refused)
    if op.pad.mode == "zeros":
        assert_close(op.gram_matrix(), dense.T @ dense)
        last = torch.arange(op.in_dim).reshape(op.in_shape).permute(1, 2, 0).reshape(-1)  # (H, W, C) order
        assert_close(op.gram_matrix(channels_last=True), (dense.T @ dense)[last][:, last])
    else:
        with pytest.raises(OptionError, match=r"gram_matrix: expected zero padding, got padding_mode="):
            op.gram_matrix()
    # A = P S
    columns = op.apply_patch_matrices(op.patches(x), op.patch_matrices(x))
    assert_close(columns.reshape(2, *op.out_shape), op.forward(x))
    # S^T S = diag(coverage): coverage counts the non-zero entries of each column of S (small integers: exact)
    ones = torch.ones_like(op.patches(x))
    assert torch.equal(op.patches_adjoint(ones)[0, 0], op.coverage())


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate", "zeros"])
def test_padding_adjoint_matches_dense(mode):
    pad = Padding((2, 1, 0, 3), mode, (4, 5))
    n = 4 * 5
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, 4, 5)
    matrix = pad(eye).reshape(n, -1).T  # (padded pixels, input pixels): a 0/1 selection
    u = torch.randn(3, 1, *pad.output_size, dtype=torch.float64)
    assert_close(pad.adjoint(u).reshape(3, -1), u.reshape(3, -1) @ matrix)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_same_padding_with_even_kernel():
    conv = torch.nn.Conv2d(2, 3, (2, 4), padding="same", bias=False).double()
    op = ConvOperator.from_conv(conv, (5, 6))
    assert op.out_shape == (3, 5, 6)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        assert_close(op(x), conv(x))
    dottest(op)


def test_float32_follows_input():
    op = ConvOperator.from_conv(torch.nn.Conv2d(3, 4, 3, stride=2).double(), (9, 9))
    x = torch.randn(1, 3, 9, 9, dtype=torch.float32)
    assert op(x).dtype == torch.float32
    dottest(op, dtype=torch.float32)  # default float32 rtol 1e-4: measured up to 9.4e-7 over 10 draws


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_follows_input():
    op = ConvOperator.from_conv(torch.nn.Conv2d(3, 4, 3, stride=2), (9, 9))
    dottest(op, device="cuda")


class _WrongAdjoint(ConvOperator):
    def adjoint(self, y):
        return 1.01 * super().adjoint(y)


def test_dottest_reports_both_numbers():
    op = _WrongAdjoint(torch.randn(2, 1, 3, 3), (6, 6))
    with pytest.raises(AdjointMismatchError, match=r"expected <A x, y> == <x, A\^T y> to relative 1e-12, got .* and"):
        dottest(op)


def test_shape_errors():
    op = ConvOperator(torch.randn(4, 3, 3, 3), (8, 8))
    with pytest.raises(ShapeError, match=r"expected shape \(N, 3, 8, 8\), got \(1, 3, 9, 9\)"):
        op(torch.zeros(1, 3, 9, 9))
    with pytest.raises(ShapeError, match=r"smaller than the dilated kernel 5x5"):
        ConvOperator(torch.randn(1, 1, 3, 3), (4, 4), dilation=2)
    with pytest.raises(ShapeError, match=r"expected a weight of shape \(C_out, C_in/groups, kh, kw\), got \(3, 3\)"):
        ConvOperator(torch.randn(3, 3), (4, 4))
    with pytest.raises(ShapeError, match=r"reflect padding .* needs every pad smaller than the input size"):
        ConvOperator(torch.randn(1, 1, 3, 3), (2, 2), padding=2, padding_mode="reflect")


def test_to_dense_refuses_large_sizes():
    op = ConvOperator(torch.randn(96, 3, 11, 11), (224, 224), stride=4)
    with pytest.raises(TooLargeError, match=r"279936 x 150528 \(314\.0 GiB in torch.float64\)"):
        op.to_dense()
    with pytest.raises(TooLargeError, match=r"placed_matrix: the matrix would be 279936 x 150528"):
        op.placed_matrix()
    with pytest.raises(TooLargeError, match=r"gram_matrix: the matrix would be 150528 x 150528"):
        op.gram_matrix()
    tall = ConvOperator(torch.randn(2, 4, 10, 1, dtype=torch.float64), (2, 8), padding=(4, 0))  # kernel > input
    dense = tall.to_dense()
    assert torch.allclose(tall.gram_matrix(), dense.T @ dense, rtol=0, atol=1e-12 * float(dense.abs().max()) ** 2)
    # the matrix has 4,096 entries, the column sums 10 x 10 x (8 x 4)^2 = 102,400
    with pytest.raises(TooLargeError, match=r"gram_matrix's column sums: the matrix would be 100 x 1024"):
        tall.gram_matrix(max_entries=50_000)


def test_construction_errors():
    with pytest.raises(ShapeError, match=r"ConvOperator: 5 filters do not split into groups=2"):
        ConvOperator(torch.randn(5, 1, 3, 3), (6, 6), groups=2)
    with pytest.raises(ValueError, match=r"expected padding_mode in \('zeros', 'circular', 'reflect', 'replicate'\)"):
        ConvOperator(torch.randn(2, 1, 3, 3), (6, 6), padding_mode="mirror")
    with pytest.raises(ShapeError, match=r"expected padding as an int, \(h, w\) or \(left, right, top, bottom\), got"):
        ConvOperator(torch.randn(2, 1, 3, 3), (6, 6), padding=(1, 1, 1))
    with pytest.raises(ShapeError, match=r"circular padding \(4, 4, 0, 0\) needs every pad at most the input size"):
        Padding((4, 4, 0, 0), "circular", (3, 3))


# --- bad input to the public functions of invertnet.operators --------------------------------


def test_dottest_of_a_module_says_how_to_wrap_it():
    with pytest.raises(
        ArgumentTypeError,
        match=r"expected a LinearOperator, got Conv2d; wrap it with "
        r"ConvOperator\.from_conv\(conv, input_size\)",
    ):
        dottest(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match=r"expected a LinearOperator, got Tensor"):
        dottest(torch.randn(4, 3, 3, 3))
    with pytest.raises(OptionError, match=r"dottest: expected a batch size >= 1, got 0"):
        dottest(ConvOperator(torch.randn(2, 1, 3, 3), (6, 6)), batch=0)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ConvOperator(torch.randn(2, 1, 3, 3), (6, 6), stride=0), OptionError, r"expected stride >= 1"),
        (lambda: ConvOperator(torch.randn(2, 1, 3, 3), (6, 6), dilation=(1, 0)), OptionError, r"dilation >= 1"),
        (lambda: ConvOperator(torch.randn(2, 1, 3, 3), (6, 6), groups=0), OptionError, r"expected groups >= 1, got 0"),
        (
            lambda: ConvOperator(torch.randn(2, 1, 3, 3), (6, 6), padding="same"),
            OptionError,
            r"expected padding as numbers, got 'same'.*ConvOperator\.from_conv",
        ),
        (
            lambda: ConvOperator.from_conv(torch.nn.Conv1d(1, 2, 3), (6, 6)),
            ArgumentTypeError,
            r"expected an nn\.Conv2d, got Conv1d",
        ),
        (
            lambda: ConvOperator.from_pool(torch.nn.Conv2d(1, 1, 2), 1, (6, 6), torch.zeros(1)),
            ArgumentTypeError,
            r"expected an nn\.MaxPool2d or nn\.AvgPool2d, got Conv2d",
        ),
        (lambda: Padding((1, 1), "zeros", (3, 3)), ShapeError, r"expected pads \(left, right, top, bottom\)"),
        (lambda: Padding((1, 1, 1, 1), "mirror", (3, 3)), OptionError, r"expected a mode in"),
        (
            lambda: Padding((1, 1, 1, 1), "circular", (3, 3))(torch.ones(3, 3, 3)),
            ShapeError,
            r"Padding.__call__: expected shape \(N, C, 3, 3\), got \(3, 3, 3\)",
        ),
        (
            lambda: Padding((1, 1, 1, 1), "reflect", (3, 3)).adjoint(torch.ones(1, 1, 3, 3)),
            ShapeError,
            r"Padding.adjoint: expected shape \(N, C, 5, 5\), got \(1, 1, 3, 3\)",
        ),
    ],
    ids=[
        "stride-0",
        "dilation-0",
        "groups-0",
        "padding-same",
        "conv1d",
        "pool-of-a-conv",
        "pads-pair",
        "mode",
        "pad-3d",
        "pad-adjoint-size",
    ],
)
def test_operator_construction_and_call_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
    assert issubclass(error, InvertnetError)


def test_from_conv_with_padding_same_keeps_the_size():
    op = ConvOperator.from_conv(torch.nn.Conv2d(3, 4, 3, padding="same"), (8, 8))
    assert op.out_shape == (4, 8, 8)
    dottest(op)


def test_dottest_refuses_a_negative_tolerance():
    with pytest.raises(OptionError, match=r"dottest: expected a finite rtol >= 0, got -1"):
        dottest(ConvOperator(torch.randn(2, 1, 3, 3), (6, 6)), rtol=-1)


# --- the battery for every other operator, driven by a table of factories ---------------------------------------
from invertnet.operators import MaskedOperator, MatrixOperator, TransposedOperator  # noqa: E402


def _linear_operator():
    torch.manual_seed(0)
    return MatrixOperator.from_linear(torch.nn.Linear(7, 5).double())


OPERATOR_FACTORIES = {
    "matrix": _linear_operator,
    "matrix-wide": lambda: MatrixOperator(torch.randn(3, 8, dtype=torch.float64)),
    "matrix-flatten": lambda: MatrixOperator(torch.randn(6, 12, dtype=torch.float64), in_shape=(3, 2, 2)),
    "masked-conv": lambda: MaskedOperator(
        ConvOperator(torch.randn(4, 2, 3, 3, dtype=torch.float64), (6, 6), padding=1), torch.rand(4, 6, 6) > 0.5
    ),
    "masked-matrix": lambda: MaskedOperator(_linear_operator(), torch.tensor([True, False, True, True, False])),
    "transposed-conv": lambda: TransposedOperator(ConvOperator(torch.randn(3, 2, 3, 3, dtype=torch.float64), (5, 5))),
}


@pytest.mark.parametrize("factory", OPERATOR_FACTORIES.values(), ids=OPERATOR_FACTORIES.keys())
def test_operator_battery(factory):
    op = factory()
    dottest(op, rtol=1e-12)
    x = torch.randn(2, *op.in_shape, dtype=torch.float64)
    y = torch.randn(2, *op.out_shape, dtype=torch.float64)
    dense = op.to_dense()
    assert dense.shape == (op.out_dim, op.in_dim)
    assert_close(op.forward(x).flatten(1), x.flatten(1) @ dense.T)
    assert_close(op.adjoint(y).flatten(1), y.flatten(1) @ dense)
    assert_close(op.adjoint(y), _autograd_adjoint(op, y))


def test_matrix_operator_is_linear_without_bias():
    linear = torch.nn.Linear(4, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        assert_close(MatrixOperator.from_linear(linear)(x), linear(x) - linear.bias)
    assert MatrixOperator.from_linear(linear)(x.float()).dtype == torch.float32


def test_matrix_and_mask_errors():
    with pytest.raises(ShapeError, match=r"MatrixOperator: expected a weight of shape \(m, n\), got \(2, 3, 4\)"):
        MatrixOperator(torch.zeros(2, 3, 4))
    with pytest.raises(ShapeError, match=r"expected an in_shape with 6 entries \(the weight's columns\), got \(5,\)"):
        MatrixOperator(torch.zeros(2, 6), in_shape=(5,))
    with pytest.raises(TypeError, match=r"from_linear: expected an nn.Linear, got Conv2d"):
        MatrixOperator.from_linear(torch.nn.Conv2d(1, 1, 1))
    op = MatrixOperator(torch.zeros(3, 2))
    with pytest.raises(ShapeError, match=r"expected a mask of shape \(3,\) or \(N, 3\) for MatrixOperator"):
        MaskedOperator(op, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"the mask holds 2 samples, got a batch of 3"):
        MaskedOperator(op, torch.ones(2, 3, dtype=torch.bool)).forward(torch.zeros(3, 2))
