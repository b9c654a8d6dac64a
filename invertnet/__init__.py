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
2. Pseudo-inverses, solvers and spectra (built on layer 1 only)
   - :mod:`invertnet.spectral` -- the DFT of circular convolutions: exact spectra and ``A^+``.
   - :mod:`invertnet.solvers` -- batched matrix-free LSQR, and CGLS with a preconditioner.
   - :mod:`invertnet.preconditioners` -- an additive Schwarz preconditioner for strided convolutions
     with zero padding or none: circulant interior, exact border strips and corners.
   - :mod:`invertnet.windows` -- pseudo-inverses of blocks of outputs: exact on a layer's range
     when a block determines its window (LSQR's start).
   - :mod:`invertnet.pinv` -- the inversion routes, one a file (``patch``, ``window``, ``fft``,
     ``dense``, ``lsqr``), ``conv_pinv`` and ``"auto"`` (the cheapest provable route), ``patch_pinv``.
   - :mod:`invertnet.verified` -- proven lower bounds on smallest singular values in floating point (verified
     Cholesky, SVD certificate).
   - :mod:`invertnet.proofs` -- proofs that a layer (or a ReLU's known rows) is injective, with a lower bound on
     ``sigma_min``: count, zero columns, patch, window (masked too, any image size), dense, Gram, DFT.
   - :mod:`invertnet.spectrum` -- ``sigma_min``/``sigma_max`` estimates (Lanczos, LOBPCG, the Gram's Cholesky
     factor), exact spectra.
   - :mod:`invertnet.absolute_value` -- generalized absolute value equations ``A z + B|z| = c`` (a linear layer
     read through a CReLU): generalized Newton, and proofs of uniqueness.
   - :mod:`invertnet.priors` -- differentiable image priors (``TotalVariation``).
   - :mod:`invertnet.joint` -- matching features (L-BFGS, then pattern-fixed Gauss-Newton), its phases.
   - :mod:`invertnet.completion` -- the default's completion: a feature-consistent input, with a prior on what
     the features leave free.
3. Walking a model, measuring
   - :mod:`invertnet.trace` -- run a model once up to a layer, record the chain of modules, refuse
     (naming the place) what a chain walk cannot follow; ``layer_outputs`` of any architecture.
   - :mod:`invertnet.injectivity` -- dimension counts and ``injectivity_report`` (estimate and proven bound).
   - :mod:`invertnet.inverses` -- the registry of layer inverses (``register_inverse``).
   - :mod:`invertnet.walk` -- the node-by-node walk (``Walker``), its frontier for the completion.
   - :mod:`invertnet.reconstruct` -- ``reconstruct`` (the default: exact steps, then the completion; ``"layers"``;
     a route) and ``invert_jointly``.
   - :mod:`invertnet.compare` -- ``compare_methods``: every method from every layer, as a table.
   - :mod:`invertnet.metrics` -- ``psnr``, ``ssim`` (Wang et al. 2004 or scikit-image's defaults),
     ``relative_error``.
4. Around it: the paper's models and analyses, files, figures
   - :mod:`invertnet.models` -- the model zoo: All-CNN-B, ConvPool-CNN-C, VGG-16 (CIFAR) variants.
   - :mod:`invertnet.architectures` -- torchvision's AlexNet, VGG-16-BN, ResNet-18, SqueezeNet 1.0,
     MobileNetV2, DenseNet-121 with torchvision's names (no torchvision needed).
   - :mod:`invertnet.pairing` -- opposite-phase filter pairing (the paper's Figs. 2-3).
   - :mod:`invertnet.bounds` -- Rademacher complexities and Theorem 4.1's bound.
   - :mod:`invertnet.invariance` -- invariance scores (Goodfellow et al. 2009).
   - :mod:`invertnet.sparsity` -- activation sparsity per layer.
   - :mod:`invertnet.images` -- image files decoded as their owners see them (Pillow, tifffile), or refused
     saying why; the pixel limit from the header.
   - :mod:`invertnet.io` -- writing images atomically, weights (``weights_only=True`` / safetensors, by content).
   - :mod:`invertnet.plotting` -- paper figures.
   - :mod:`invertnet.results` -- the results file of ``evaluate``: rows keyed by resolved path and content
     hash, one writer at a time (a lock), resuming.
   - :mod:`invertnet.evaluate` -- ``evaluate``: every image of a dataset from every layer with every method,
     resumable and distributed (``torchrun``), unreadable images skipped and listed; ``summarize``: means with
     95% intervals, perfect rows counted apart.
5. :mod:`invertnet.cli` -- the ``invertnet`` command, thin.

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
from invertnet.completion import CompletionOptions, CompletionResult
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
from invertnet.injectivity import LayerSpectrum, injectivity_report
from invertnet.inverses import StepResult, register_inverse, supported_layers
from invertnet.joint import JointOptions, JointResult
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.operators import ConvOperator, LinearOperator, dottest
from invertnet.pinv import CONV_METHODS, ROUTES, Route, SolveInfo, SolveOptions, conv_pinv, patch_pinv, register_route
from invertnet.priors import TotalVariation
from invertnet.reconstruct import (
    RECONSTRUCTION_METHODS,
    LayerStep,
    Reconstruction,
    invert_graph,
    invert_jointly,
    reconstruct,
)

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
