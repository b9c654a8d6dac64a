"""Exceptions raised by invertnet.

Every error that bad input can trigger derives from :class:`InvertnetError`, so
callers (and the CLI) can catch them in one place. Each class also derives from
the built-in exception a Python user expects (``ValueError`` or ``TypeError``),
and every message states what was expected, what came, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AdjointMismatchError",
    "ArgumentTypeError",
    "DTypeError",
    "ForwardError",
    "ImageReadError",
    "InvalidActivationOutputError",
    "InvalidCReLUOutputError",
    "InvertnetError",
    "LayerNotFoundError",
    "ModelError",
    "ModelSpecError",
    "NonFiniteError",
    "NotAChainError",
    "OptionError",
    "OutOfRangeError",
    "OutputPathError",
    "ResultsFileError",
    "RouteError",
    "ShapeError",
    "TooLargeError",
    "TrainingModeError",
    "UnsupportedLayerError",
    "WeightsError",
]


class InvertnetError(Exception):
    """Base class of every error invertnet raises on bad input."""


class ShapeError(InvertnetError, ValueError):
    """A tensor has the wrong number of dimensions or the wrong size."""


class InvalidCReLUOutputError(InvertnetError, ValueError):
    """A tensor cannot be the output of CReLU (or of the chosen variant)."""


class AdjointMismatchError(InvertnetError, ValueError):
    """The dot test ``<A x, y> == <x, A^T y>`` failed."""


class TooLargeError(InvertnetError, ValueError):
    """An operation would materialise more memory than allowed."""


class RouteError(InvertnetError, ValueError):
    """An inversion route that does not apply to this layer (e.g. ``"fft"`` on zero padding)."""


class UnsupportedLayerError(InvertnetError, TypeError):
    """A module that invertnet does not know how to invert."""


class LayerNotFoundError(InvertnetError, ValueError):
    """A layer name that the model does not have."""


class NotAChainError(InvertnetError, ValueError):
    """A model whose forward pass is not a chain of named submodules."""


class ImageReadError(InvertnetError, ValueError):
    """An image file that is missing, unreadable or of an unusable shape."""


class WeightsError(InvertnetError, ValueError):
    """A weights file that is missing, unreadable or does not fit the model."""


class OptionError(InvertnetError, ValueError):
    """An option outside its allowed values (an unknown method, a negative weight, a bad range)."""


class ArgumentTypeError(InvertnetError, TypeError):
    """An argument of the wrong kind (e.g. an ``nn.Conv2d`` where a linear operator is expected)."""


class NonFiniteError(InvertnetError, ValueError):
    """A tensor (weights, an image) with NaN or infinite entries, which no analysis can use."""


class OutputPathError(InvertnetError, ValueError):
    """An output path that cannot be written (unknown file extension, missing or read-only directory)."""


class ModelError(InvertnetError, TypeError):
    """Something given as a model that is not an ``nn.Module``."""


class ForwardError(InvertnetError, ValueError):
    """A model whose forward pass fails on the given input (the message names the module)."""


class TrainingModeError(InvertnetError, ValueError):
    """A layer in training mode where inversion needs eval mode (BatchNorm, Dropout)."""


class DTypeError(InvertnetError, TypeError):
    """A tensor of a dtype that cannot be used (e.g. an integer image where floats in a known range are needed)."""


class OutOfRangeError(InvertnetError, ValueError):
    """A tensor with values outside the range of the layer it should be the output of (``|y| > 1`` for Tanh)."""


class InvalidActivationOutputError(InvertnetError, ValueError):
    """A tensor cannot be the output of the given activation (ReLU, ReLU6, Hardtanh): NaN, or beyond a clip level."""


class ModelSpecError(InvertnetError, ValueError):
    """A ``--model`` string that names no model: unknown, unimportable, or not a callable returning a module."""


class ResultsFileError(InvertnetError, ValueError):
    """A results file that cannot be resumed: other columns, rows of other settings, or a damaged line."""
