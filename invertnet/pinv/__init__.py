r"""Moore-Penrose pseudo-inverses of convolution layers: one route a file, chosen by name or by ``"auto"``.

A convolution :math:`y = A x + b` is a linear operator (:mod:`invertnet.operators`). Each route inverts it
one way and reports, in one vocabulary (:class:`SolveInfo`), how (``closed_form``) and what it achieves
(``exact``: the layer's input from its exact output, proven for this layer; ``pseudo_inverse``: the
minimum-norm least-squares solution :math:`A^+ (y - b)` for any response).

==========  ===============================================================  ======  =========================
route       computes                                                         closed  :math:`A^+` when
==========  ===============================================================  ======  =========================
``patch``   :math:`(S^T S)^{-1} S^T (I \otimes P^+) z`, the paper's reading   yes     receptive fields disjoint
``window``  :math:`A_w^+` of a block of outputs, tiled (exact on the range)   yes     never (a local fit)
``fft``     per-frequency pseudo-inverses after the 2-D DFT                   yes     circular or no padding
``dense``   the SVD of the dense matrix (tiny layers; the tests' reference)   yes     always
``lsqr``    matrix-free LSQR, from the window estimate where it applies       no      always (to tolerance)
==========  ===============================================================  ======  =========================

``"auto"`` takes the cheapest route that provably computes :math:`A^+` on the layer, within a memory
budget (:func:`choose_route`; e.g. ``patch`` for a 1x1 convolution at stride 1, ``fft`` for a circular one,
``lsqr`` otherwise), and says why in :attr:`SolveInfo.reason`.

Adding a route: subclass :class:`Route` in a new file (``name``, ``summary``, ``closed_form``, ``because``;
``why_not``, ``pinv_reason``, ``cost``, ``solve``), and register the
file below; the dense-matrix battery in ``tests/test_pinv.py`` runs over :data:`ROUTES`.
"""

from __future__ import annotations

from collections.abc import Mapping

from invertnet.pinv.base import (
    ROUTES,
    ConvLayer,
    Cost,
    LiveTable,
    Route,
    RouteResult,
    SolveInfo,
    SolveOptions,
    pinv_rtol,
    register_route,
)
from invertnet.pinv.dense import DenseRoute
from invertnet.pinv.fft import FFTRoute
from invertnet.pinv.lsqr import LSQRRoute
from invertnet.pinv.patch import PatchRoute, fields_are_disjoint, patch_is_exact, patch_pinv
from invertnet.pinv.solve import choose_method, choose_route, conv_pinv
from invertnet.pinv.window import WindowRoute

__all__ = [
    "CONV_METHODS",
    "ROUTES",
    "ConvLayer",
    "Cost",
    "Route",
    "RouteResult",
    "SolveInfo",
    "SolveOptions",
    "choose_method",
    "choose_route",
    "conv_pinv",
    "fields_are_disjoint",
    "patch_is_exact",
    "patch_pinv",
    "pinv_rtol",
    "register_route",
]


# one registration a route, in the order tables list them
for _route in (PatchRoute(), WindowRoute(), FFTRoute(), DenseRoute(), LSQRRoute()):
    register_route(_route)


#: Methods of :func:`conv_pinv`: ``"auto"`` and every registered route, name -> what it computes (read live).
CONV_METHODS: Mapping[str, str] = LiveTable(
    lambda: {
        "auto": "the cheapest route that provably computes A^+ on the layer",
        **{name: route.summary for name, route in ROUTES.items()},
    }
)
