"""invertnet: invert convolutional networks, exactly where mathematics allows, and measure the rest.

Shang, Sohn, Almeida and Lee (ICML 2016) showed that a convolution followed by CReLU,
``rho(z) = (max(0, z), max(0, -z))``, keeps both phases of its response, so the layer can be
undone: ``z = pos - neg``, then the pseudo-inverse of the convolution, layer by layer.

The house, in layers (imports point down only):

1. Tensor maths, no I/O
   - :mod:`invertnet.activations` -- ``CReLU``/``crelu`` (and the leaky variant), ``invert_crelu``,
     ``AVR``, ``Proportional`` (ReLU on m of every n channels) and ``invert_proportional``.
   - :mod:`invertnet.operators` -- ``ConvOperator`` (forward, adjoint, im2col ``patches``, patch
     matrices, ``to_dense``), ``Padding`` (every padding mode and its adjoint), ``dottest``.
2. Pseudo-inverses and spectra
   - :mod:`invertnet.spectral` -- the DFT of circular convolutions: exact spectra and ``A^+``.
   - :mod:`invertnet.solvers` -- batched matrix-free LSQR.
   - :mod:`invertnet.windows` -- pseudo-inverses of blocks of outputs: exact on a layer's range
     when a block determines its window (LSQR's start).
   - :mod:`invertnet.pinv` -- ``patch_pinv`` (the paper's reading), ``conv_pinv`` (routes by name).
   - :mod:`invertnet.spectrum` -- ``sigma_min``/``sigma_max`` (Lanczos), ``injectivity_report``.
3. Walking a model, measuring
   - :mod:`invertnet.trace` -- run a model once up to a layer, record the chain of modules;
     ``layer_outputs`` of any architecture.
   - :mod:`invertnet.reconstruct` -- ``reconstruct``: invert that chain back to the input; the
     registry of layer inverses (``register_inverse``).
   - :mod:`invertnet.joint` -- joint inversion of a prefix (L-BFGS, then pattern-fixed Gauss-Newton).
   - :mod:`invertnet.compare` -- ``compare_methods``: every method from every layer, as a table.
   - :mod:`invertnet.metrics` -- ``psnr``, ``ssim`` (Wang et al. 2004 or scikit-image's defaults),
     ``relative_error``.
4. Around it: the paper's models and analyses, files, figures
   - :mod:`invertnet.models` -- the model zoo: All-CNN-B, ConvPool-CNN-C, VGG-16 (CIFAR) variants.
   - :mod:`invertnet.pairing` -- opposite-phase filter pairing (the paper's Figs. 2-3).
   - :mod:`invertnet.bounds` -- Rademacher complexities and Theorem 4.1's bound.
   - :mod:`invertnet.invariance` -- invariance scores (Goodfellow et al. 2009).
   - :mod:`invertnet.sparsity` -- activation sparsity per layer.
   - :mod:`invertnet.io` -- images (scikit-image), weights (``weights_only=True`` / safetensors).
   - :mod:`invertnet.plotting` -- paper figures.
5. :mod:`invertnet.cli` -- the ``invertnet`` command, thin.

Adding a layer inverse: write ``fn(module, record, y, ctx) -> StepResult`` and decorate it with
``@register_inverse(MyModule)`` (see :mod:`invertnet.reconstruct`). Adding an operator:
subclass :class:`~invertnet.operators.LinearOperator` with ``forward`` and ``adjoint``, and add it
to the table of operator factories in ``tests/test_operators.py`` so that the dot test, the dense
matrix and the autograd adjoint are checked for it.

Example
-------
>>> import torch
>>> import invertnet
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), invertnet.CReLU()).double()
>>> x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
>>> result = invertnet.reconstruct(net, x, "1")
>>> float(result.psnr[0]) > 200
True
"""

from invertnet.activations import (
    AVR,
    CReLU,
    Proportional,
    avr,
    crelu,
    invert_crelu,
    invert_proportional,
    leaky_relu_inverse,
)
from invertnet.compare import ComparisonRow, compare_methods
from invertnet.errors import (
    AdjointMismatchError,
    ImageReadError,
    InvalidCReLUOutputError,
    InvertnetError,
    LayerNotFoundError,
    NotAChainError,
    RouteError,
    ShapeError,
    TooLargeError,
    UnsupportedLayerError,
    WeightsError,
)
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.operators import ConvOperator, LinearOperator, dottest
from invertnet.pinv import CONV_METHODS, SolveInfo, conv_pinv, patch_pinv
from invertnet.reconstruct import LayerStep, Reconstruction, reconstruct, register_inverse, supported_layers

__version__ = "0.1.0"

__all__ = [
    "AVR",
    "CONV_METHODS",
    "AdjointMismatchError",
    "CReLU",
    "ComparisonRow",
    "ConvOperator",
    "ImageReadError",
    "InvalidCReLUOutputError",
    "InvertnetError",
    "LayerNotFoundError",
    "LayerStep",
    "LinearOperator",
    "NotAChainError",
    "Proportional",
    "Reconstruction",
    "RouteError",
    "ShapeError",
    "SolveInfo",
    "TooLargeError",
    "UnsupportedLayerError",
    "WeightsError",
    "avr",
    "compare_methods",
    "conv_pinv",
    "crelu",
    "dottest",
    "invert_crelu",
    "invert_proportional",
    "leaky_relu_inverse",
    "patch_pinv",
    "psnr",
    "reconstruct",
    "register_inverse",
    "relative_error",
    "ssim",
    "supported_layers",
]
