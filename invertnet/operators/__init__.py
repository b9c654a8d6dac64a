"""Linear operators of layer 1: convolution, dense matrices, masks, transposes, padding; adjoints and the dot test."""

from invertnet.operators.base import DENSE_MAX_ENTRIES, LinearOperator, dottest
from invertnet.operators.conv import ConvOperator
from invertnet.operators.masked import MaskedOperator
from invertnet.operators.matrix import MatrixOperator
from invertnet.operators.padding import PADDING_MODES, Padding
from invertnet.operators.transposed import TransposedOperator

__all__ = [
    "DENSE_MAX_ENTRIES",
    "PADDING_MODES",
    "ConvOperator",
    "LinearOperator",
    "MaskedOperator",
    "MatrixOperator",
    "Padding",
    "TransposedOperator",
    "dottest",
]
