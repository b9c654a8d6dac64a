r"""The inverse of every layer type, in a registry that the walks of :mod:`invertnet.reconstruction.api` read.

An inverse takes the module, its record from the forward pass (:class:`~invertnet.capture.chain.LayerRecord`: its
input, output shape), an estimate of its output and the settings, and returns a :class:`StepResult`: the
estimate of its input, the route, whether the step is ``exact`` (returns the layer's input from its exact
output) and ``closed_form`` (computed without iteration), and what is lost.

======================  =======================================================  ===================================
module                  inverse                                                  exact
======================  =======================================================  ===================================
Conv2d                  :func:`~invertnet.pinv.conv_pinv` with ``method``        when the route proves it (SolveInfo)
CReLU (any slope)       :func:`~invertnet.nn.activations.invert_crelu`              yes
LeakyReLU (slope > 0)   :math:`y` if :math:`y \ge 0` else :math:`y / a`          yes
BatchNorm2d (eval)      the affine map undone                                    yes (non-zero scales)
Dropout, Identity       identity (eval mode)                                     yes
ReLU, ReLU6, Hardtanh   ``relu="active_set"``: equations and inequalities        with the layer below: when its
                        solved with the Conv2d/Linear below (masked least        known rows determine its input
                        squares); ``"identity"``: the paper's baseline           (certificate)
AVR                     identity: the sign is lost                               no
Proportional            ``invert_proportional``                                  where no ReLU channel is negative
MaxPool2d               unpool with the forward pass's switches (Zeiler &        no
                        Fergus 2014); ``maxpool="guess"``: spread without them
AvgPool2d               :func:`~invertnet.pinv.conv_pinv` of the averaging       when the route proves it
AdaptiveAvgPool2d       separable pseudo-inverse :math:`P_h^+ Y (P_w^+)^T`       when both bin matrices have full
                        (any output size, even or uneven bins)                   column rank
AdaptiveMaxPool2d       unpool with the switches (or ``"guess"``: spread)        when every bin is one pixel
PReLU                   :math:`y` if :math:`y \ge 0` else :math:`y / a_c`        when every slope > 0
ELU, CELU               :math:`y` if :math:`y > 0` else                          yes (alpha > 0), unless saturated
                        :math:`s \log(1 + y / \alpha)` (``log1p``)               at :math:`-\alpha`
Softplus                :math:`y + \log(-\mathrm{expm1}(-\beta y)) / \beta`;     yes, unless saturated at 0 or in
                        :math:`y` above the threshold                            the sliver at the threshold
Tanh, Sigmoid           ``atanh``, logit                                         yes, unless saturated (``|y| = 1``;
                                                                                 ``y`` = 0 or 1)
SiLU, GELU, Mish        the branch above the minimiser (safeguarded Newton)      no (the other branch is lost)
Hardswish               the branch above -1.5 (closed form)                      no
Linear                  :math:`(y - b) (W^+)^T` (one cached SVD)                 when rank W = in_features
LayerNorm, GroupNorm    the affine map undone: :math:`(y - \beta) / \gamma`      no (mean and scale lost)
Flatten, Unflatten      reshape back                                             yes
======================  =======================================================  ===================================

Outside its range (``|y| > 1`` for Tanh, below the minimum for SiLU, ...) an activation's inverse refuses the top
layer's features (:class:`~invertnet.errors.OutOfRangeError`) and clamps estimates below it (said in the note); see
:mod:`invertnet.inverses.nonlinear`.

Adding an inverse::

    @register_inverse(MyModule)
    def _invert_my_module(module, record, y, ctx):
        return StepResult(estimate, "my_route", exact=True, closed_form=True)
"""

from __future__ import annotations

# each module registers its inverses on import
from invertnet.inverses import activations, linear, nonlinear, pooling  # noqa: F401
from invertnet.inverses.registry import (
    MAXPOOL_MODES,
    RELU_MODES,
    InversionContext,
    LayerInverse,
    StepResult,
    inverse_for,
    register_inverse,
    supported_layers,
)

__all__ = [
    "MAXPOOL_MODES",
    "RELU_MODES",
    "InversionContext",
    "LayerInverse",
    "StepResult",
    "inverse_for",
    "register_inverse",
    "supported_layers",
]
