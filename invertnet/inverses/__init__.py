r"""The inverse of every layer type, in a registry that the walks of :mod:`invertnet.reconstruct` read.

An inverse takes the module, its record from the forward pass (:class:`~invertnet.trace.LayerRecord`: its
input, output shape), an estimate of its output and the settings, and returns a :class:`StepResult`: the
estimate of its input, the route, whether the step is ``exact`` (returns the layer's input from its exact
output) and ``closed_form`` (computed without iteration), and what is lost.

======================  =======================================================  ===================================
module                  inverse                                                  exact
======================  =======================================================  ===================================
Conv2d                  :func:`~invertnet.pinv.conv_pinv` with ``method``        when the route proves it (SolveInfo)
CReLU (any slope)       :func:`~invertnet.activations.invert_crelu`              yes
LeakyReLU (slope > 0)   :math:`y` if :math:`y \ge 0` else :math:`y / a`          yes
BatchNorm2d (eval)      the affine map undone                                    yes (non-zero scales)
Dropout, Identity       identity (eval mode)                                     yes
ReLU                    identity: the negative part is lost (paper's baseline)   no
AVR                     identity: the sign is lost                               no
Proportional            ``invert_proportional``                                  where no ReLU channel is negative
MaxPool2d               unpool with the forward pass's switches (Zeiler &        no
                        Fergus 2014); ``maxpool="guess"``: spread without them
AvgPool2d               :func:`~invertnet.pinv.conv_pinv` of the averaging       when the route proves it
======================  =======================================================  ===================================

Adding an inverse::

    @register_inverse(MyModule)
    def _invert_my_module(module, record, y, ctx):
        return StepResult(estimate, "my_route", exact=True, closed_form=True)
"""

from __future__ import annotations

# each module registers its inverses on import
from invertnet.inverses import activations, linear, pooling  # noqa: F401
from invertnet.inverses.registry import (
    MAXPOOL_MODES,
    InversionContext,
    LayerInverse,
    StepResult,
    inverse_for,
    register_inverse,
    supported_layers,
)

__all__ = [
    "MAXPOOL_MODES",
    "InversionContext",
    "LayerInverse",
    "StepResult",
    "inverse_for",
    "register_inverse",
    "supported_layers",
]
