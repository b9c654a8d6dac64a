"""invertnet: invert convolutional networks, exactly where mathematics allows, and measure the rest.

Shang, Sohn, Almeida and Lee (ICML 2016) showed that a convolution followed by CReLU,
``rho(z) = (max(0, z), max(0, -z))``, keeps both phases of its response, so the layer can be
undone: ``z = pos - neg``, then the pseudo-inverse of the convolution, layer by layer.

The house, in layers: one folder a room, and every import points down (``tests/test_layering.py`` reads them all).

0. Base: :mod:`invertnet.errors` (every error, a ``ValueError``/``TypeError`` subclass) and
   :mod:`invertnet._checks` (argument checks).
1. Pure tensor code
   - :mod:`invertnet.nn` -- ``CReLU``/``crelu`` (and the leaky variant), ``invert_crelu``, ``AVR``, ``Proportional``
     (ReLU on m of every n channels) and ``invert_proportional``.
   - :mod:`invertnet.operators` -- ``ConvOperator`` (forward, adjoint, im2col ``patches``, patch matrices,
     ``to_dense``), masked and matrix operators, ``Padding`` (every mode and its adjoint), ``dottest``.
   - :mod:`invertnet.metrics` -- ``psnr``, ``ssim`` (Wang et al. 2004 or scikit-image's defaults), ``relative_error``.
2. Linear algebra and routes
   - :mod:`invertnet.linalg` -- LSQR and preconditioned CGLS (``solvers``), L-BFGS (``lbfgs``), the circulant +
     border preconditioner (``preconditioners``), DFT spectra (``spectral``), Lanczos/LOBPCG estimates
     (``spectrum``), rounding-aware lower bounds (``verified``: verified Cholesky, SVD certificate), and generalized
     absolute value equations ``A z + B|z| = c`` (``absolute_value``).
   - :mod:`invertnet.pinv` -- the routes of a convolution's pseudo-inverse, one a file (``patch``, ``window``,
     ``fft``, ``dense``, ``lsqr``), ``conv_pinv`` with ``"auto"`` (the cheapest provable route), ``patch_pinv``; the
     window tiling (``windows``); the proofs of injectivity (``proofs``: count, zero columns, patch, window, dense,
     Gram, DFT), each a lower bound on ``sigma_min``.
   - :mod:`invertnet.activeset` -- a ReLU's known rows: constraints, the active-set solve, its certificate.
3. Capture and reconstruction
   - :mod:`invertnet.capture` -- one capture of any model: its torch.fx graph (``graph``; a chain of modules where fx
     cannot trace, ``chain``), the values of its nodes, and the dimension count (``count``).
   - :mod:`invertnet.inverses` -- the registry of layer inverses (``register_inverse``), by family.
   - :mod:`invertnet.reconstruction` -- the walk (``Walker``, its frontier), blocks, the joint inversion (``joint``),
     priors (``TotalVariation``), the default's completion (``completion``), and the API (``api``: ``reconstruct``,
     ``invert_jointly``).
4. Analyses, the zoo, evaluation, files, figures
   - :mod:`invertnet.io` -- image files decoded as their owners see them or refused saying why (``images``); atomic
     writes and safe weights (``files``: ``weights_only=True`` / safetensors, by content).
   - :mod:`invertnet.zoo` -- All-CNN-B, ConvPool-CNN-C, VGG-16 (CIFAR) variants (``models``), torchvision's
     architectures without torchvision (``architectures``), ``package.module:callable`` specs (``specs``).
   - :mod:`invertnet.analysis` -- ``injectivity_report`` (estimate and proven bound per layer), what ReLU keeps
     (``information``), filter pairing (the paper's Figs. 2-3), the Rademacher bound (Theorem 4.1), invariance,
     sparsity.
   - :mod:`invertnet.evaluation` -- ``evaluate`` over datasets (resumable, distributed), its results file,
     ``summarize``, and ``compare_methods`` in memory.
   - :mod:`invertnet.plotting` -- the paper's figures (matplotlib).
5. :mod:`invertnet.cli` -- the ``invertnet`` command, thin: parse, call the library, print, write files.

One vocabulary throughout: a step (and a solve, and a reconstruction) is ``closed_form`` when it is
computed without iteration, and ``exact`` when it returns the layer's input from the layer's exact
output, proven for that layer; the two are reported separately and never inferred from each other.

Adding a layer inverse: write ``fn(module, record, y, ctx) -> StepResult`` and decorate it with
``@register_inverse(MyModule)`` (see :mod:`invertnet.inverses`). Adding a convolution route: one
file with a :class:`~invertnet.pinv.Route` subclass, registered in :mod:`invertnet.pinv`. Adding an operator:
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

from invertnet.analysis.injectivity import LayerSpectrum, injectivity_report
from invertnet.errors import (
    AdjointMismatchError,
    DTypeError,
    ForwardError,
    ImageReadError,
    InvalidCReLUOutputError,
    InvertnetError,
    LayerNotFoundError,
    ModelError,
    NotAChainError,
    OptionError,
    RouteError,
    ShapeError,
    TooLargeError,
    TrainingModeError,
    UnsupportedLayerError,
    WeightsError,
)
from invertnet.evaluation.compare import ComparisonRow, compare_methods
from invertnet.inverses import StepResult, register_inverse, supported_layers
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.nn.activations import (
    AVR,
    CReLU,
    Proportional,
    avr,
    crelu,
    invert_crelu,
    invert_proportional,
    leaky_relu_inverse,
)
from invertnet.operators import ConvOperator, LinearOperator, dottest
from invertnet.pinv import CONV_METHODS, ROUTES, Route, SolveInfo, SolveOptions, conv_pinv, patch_pinv, register_route
from invertnet.reconstruction.api import (
    RECONSTRUCTION_METHODS,
    LayerStep,
    Reconstruction,
    invert_graph,
    invert_jointly,
    reconstruct,
)
from invertnet.reconstruction.completion import CompletionOptions, CompletionResult
from invertnet.reconstruction.joint import JointOptions, JointResult
from invertnet.reconstruction.priors import TotalVariation

__version__ = "0.1.0"

__all__ = [
    "AVR",
    "CONV_METHODS",
    "RECONSTRUCTION_METHODS",
    "ROUTES",
    "AdjointMismatchError",
    "CReLU",
    "ComparisonRow",
    "CompletionOptions",
    "CompletionResult",
    "ConvOperator",
    "DTypeError",
    "ForwardError",
    "ImageReadError",
    "InvalidCReLUOutputError",
    "InvertnetError",
    "JointOptions",
    "JointResult",
    "LayerNotFoundError",
    "LayerSpectrum",
    "LayerStep",
    "LinearOperator",
    "ModelError",
    "NotAChainError",
    "OptionError",
    "Proportional",
    "Reconstruction",
    "Route",
    "RouteError",
    "ShapeError",
    "SolveInfo",
    "SolveOptions",
    "StepResult",
    "TooLargeError",
    "TotalVariation",
    "TrainingModeError",
    "UnsupportedLayerError",
    "WeightsError",
    "avr",
    "compare_methods",
    "conv_pinv",
    "crelu",
    "dottest",
    "injectivity_report",
    "invert_crelu",
    "invert_graph",
    "invert_jointly",
    "invert_leaky_relu",
    "invert_proportional",
    "leaky_relu_inverse",
    "patch_pinv",
    "psnr",
    "reconstruct",
    "register_inverse",
    "register_route",
    "relative_error",
    "ssim",
    "supported_layers",
]

#: ``invert_*`` is the name of every inverse; the old name stays as an alias.
invert_leaky_relu = leaky_relu_inverse
