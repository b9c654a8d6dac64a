"""Linear operators of layer 1: convolution and padding, with adjoints, patch matrices and the dot test."""

from invertnet.operators.base import DENSE_MAX_ENTRIES, LinearOperator, dottest
from invertnet.operators.conv import ConvOperator
from invertnet.operators.padding import PADDING_MODES, Padding

__all__ = ["DENSE_MAX_ENTRIES", "PADDING_MODES", "ConvOperator", "LinearOperator", "Padding", "dottest"]
