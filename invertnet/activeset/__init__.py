r"""Inverting ReLU, ReLU6 and Hardtanh layers through the active set.

A ReLU keeps more than its positive part. For :math:`h = \max(0, A x + b)`, every positive entry is an
*equation* on the input, :math:`a_i x + b_i = h_i`, and every zero an *inequality*,
:math:`a_i x + b_i \le 0`; for ReLU6 and Hardtanh, :math:`h = \mathrm{clip}(A x + b, \ell, u)`, entries at
either level are inequalities. Where the known rows (the active set) have full column rank, the input is
determined and the masked least-squares solution *is* the input; elsewhere a point that meets every
equation and inequality reproduces the output exactly (Haider, Ehler & Balazs, ICML 2023; Puthawala et
al., JMLR 2022).

- :mod:`~invertnet.activeset.constraints` -- :func:`activation_constraints` reads an output as
  :class:`Constraints` (a box :math:`\ell_i \le z_i \le u_i` per entry; no operator needed, so a walk can
  hand it down a layer); :func:`clip_levels` reads the levels off a module.
- :mod:`~invertnet.activeset.certificate` -- :func:`certify`: do the known rows determine the input? Proven
  (count, zero columns, patch, dense, masked window, Gram: :mod:`invertnet.pinv.proofs`), or undecided.
- :mod:`~invertnet.activeset.solve` -- :func:`invert_active_set`: the minimum-norm solution of the
  equations (LSQR on the masked operator), then violated inequalities added at their bound until none is.

Example
-------
>>> import torch
>>> from invertnet.activeset import activation_constraints, invert_active_set
>>> from invertnet.operators import ConvOperator
>>> _ = torch.manual_seed(0)
>>> conv = torch.nn.Conv2d(1, 32, 3, padding=1).double()
>>> x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
>>> h = torch.relu(conv(x)).detach()
>>> result = invert_active_set(ConvOperator.from_conv(conv, (8, 8)), activation_constraints(h), bias=conv.bias)
>>> bool(result.exact[0]), result.certificates[0].method
(True, 'patch')
"""

from invertnet.activeset.certificate import LANCZOS_RTOL, Certificate, CertificateMethod, certify
from invertnet.activeset.constraints import Constraints, activation_constraints, clip_levels
from invertnet.activeset.solve import ActiveSetOptions, ActiveSetResult, invert_active_set

__all__ = [
    "LANCZOS_RTOL",
    "ActiveSetOptions",
    "ActiveSetResult",
    "Certificate",
    "CertificateMethod",
    "Constraints",
    "activation_constraints",
    "certify",
    "clip_levels",
    "invert_active_set",
]
