r"""Which layers of a model can be inverted at all: dimension counts, proofs and singular values, both sides.

A layer can only be undone where its operator :math:`A` is injective on the inputs it can receive, and how
stably is told by its smallest singular value, :math:`\|A^+(y - y')\| \le \|y - y'\| / \sigma_{\min}`.

:func:`injectivity_report` gives, per convolution and pooling node of any network :func:`invertnet.reconstruct`
handles (one :func:`~invertnet.capture.graph.capture` of the forward pass; a module called twice is two nodes): the
input and output dimensions, the dimension count that already rules inversion out (behind a CReLU input the
unknowns are the ``C/2`` pre-activation channels, not ``C``), :math:`\sigma_{\max}`, and two sides of
:math:`\sigma_{\min}`:

- an **estimate** (:attr:`LayerSpectrum.sigma_min`): exact up to rounding for the DFT and dense spectra, to many
  digits by shift-and-invert Lanczos through a Cholesky factor, or a LOBPCG Ritz value (an upper bound) at image
  scale, preconditioned by the circulant + border preconditioner where it fits;
- a **proven lower bound** (:attr:`LayerSpectrum.sigma_min_lower`, :mod:`invertnet.pinv.proofs`): the verified DFT or
  dense spectrum, a verified Cholesky factorisation of :math:`A^T A - \tau I`, or the window certificate.

``exact`` means one thing in invertnet: proven. A layer is reported injective only with a proof, which the
report names (:attr:`LayerSpectrum.proof`); ``computed_exactly`` says whether the singular values themselves are
exact (DFT, dense) rather than iterative estimates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from invertnet._checks import pair
from invertnet.capture.chain import LayerRecord, require_module
from invertnet.capture.count import KINDS, unknowns
from invertnet.capture.graph import Graph, capture, last_module_node
from invertnet.errors import UnsupportedLayerError
from invertnet.linalg.preconditioners import BorderPreconditioner, border_bytes, border_reason
from invertnet.linalg.spectral import circulant_reason, circulant_singular_values
from invertnet.linalg.spectrum import DENSE_SPECTRUM_ENTRIES, sigma_max, sigma_min_lobpcg
from invertnet.operators import ConvOperator
from invertnet.pinv.proofs import (
    BANDED_MAX_FLOPS,
    GRAM_MAX_UNKNOWNS,
    Proof,
    banded_proof,
    dense_proof,
    dft_proof,
    gram_proof,
    patch_proof,
    vector_upper_bound,
    window_proof,
    zero_column_proof,
)
from invertnet.pinv.proofs.banded import SHIFT_FRACTIONS

__all__ = ["VERDICTS", "LayerSpectrum", "format_spectrum", "injectivity_report"]

VERDICTS = (
    "injective",
    "numerically singular",
    "not injective (dimension count)",
    "not injective as a linear map (count passes on CReLU inputs only)",
    "not injective (pooling)",
    "not injective (pixels no filter reads)",
    "not proven (estimate only)",
)

#: A layer the Gram proof cannot decide (too ill-conditioned for its rounding margin) gets the dense SVD certificate
#: up to this many matrix entries (256 MB in float64; a 4096 x 4096 SVD, seconds to a minute on one thread).
DENSE_FALLBACK_ENTRIES = 2**25

#: Image-scale layers: LOBPCG's iteration cap for sigma_min (an estimate that stops there says so).
LOBPCG_MAX_ITERATIONS = 300

#: A local proof (patch, window) whose bound lies more than this factor below LOBPCG's estimate is tightened by the
#: banded verified Cholesky, within the flop budget (All-CNN-B conv10 at 224 px: window 46x below, banded 1.01x).
TIGHTEN_GAP = 10.0

#: The border preconditioner of LOBPCG is built when it needs at most this many bytes.
BORDER_MAX_BYTES = 2 * 2**30


#: Kinds of module the report covers.
@dataclass(frozen=True)
class LayerSpectrum:
    r"""Injectivity report of one layer.

    Attributes
    ----------
    name, kind : str
        The node's label (a module's qualified name, ``"@2"`` for its second call) and the module's class.
    in_shape, out_shape : tuple of int
    in_dim, out_dim : int
        Unknowns and responses of the linear map.
    unknowns : int
        Degrees of freedom of the possible inputs: ``in_dim / 2`` behind a CReLU, else ``in_dim``.
    sigma_max : float
        Of the linear map: exact for the DFT and dense spectra, else a Lanczos estimate (``nan`` for max-pooling).
    sigma_min : float
        The estimate of :math:`\sigma_{\min}`: exact (DFT, dense), by shift-and-invert Lanczos through a verified
        Cholesky factor (``"cholesky"``), or a LOBPCG Ritz value (``"lobpcg"``: an upper bound). ``0`` where the
        count or unread pixels prove it zero.
    condition : float
        ``sigma_max / sigma_min``.
    exact : bool
        The layer is proven injective (:attr:`proof` names the proof, :attr:`sigma_min_lower` > 0): it can be
        undone exactly. One meaning across invertnet.
    converged : bool
        Whether an iterative estimate of ``sigma_min`` converged (True for exact ones).
    verdict : str
        One of :data:`VERDICTS`.
    singular_values : torch.Tensor or None
        The whole spectrum where it is exact (DFT of circular layers, the dense matrix of small ones),
        else the circulant approximation on the same grid (for plots; computed in float32, whose rounding is far
        below the approximation's own error) when the stride divides the input; ``None`` otherwise.
    sigma_method : str
        How ``sigma_min`` was computed: ``"dft"``, ``"dense"``, ``"cholesky"`` (shift-and-invert Lanczos through the
        verified Cholesky factor of the Gram matrix), ``"lobpcg, border"`` / ``"lobpcg"`` (image scale: LOBPCG on
        :math:`A^T A`, preconditioned by :class:`~invertnet.linalg.preconditioners.BorderPreconditioner` where it fits;
        a Ritz value, an upper bound), ``"lanczos max"`` (:math:`\sigma_{\min} = 0` proven by count or unread pixels;
        Lanczos for :math:`\sigma_{\max}` only) or ``"none"`` (max-pooling).
    sigma_min_lower : float
        A proven lower bound on :math:`\sigma_{\min}` (``0.0`` when it is proven zero or nothing positive is
        proven; ``nan`` for max-pooling).
    proof : str
        What proves :attr:`sigma_min_lower` or the verdict: ``"dft"``, ``"dense"``, ``"gram"``, ``"banded"``,
        ``"window"``, ``"patch"``, ``"count"``, ``"zero column"``, ``"singular"`` (shown numerically singular)
        or ``""``.
    computed_exactly : bool
        Whether the singular values are exact (DFT or dense) rather than iterative estimates.
    seconds : float
        Time spent on this layer.
    sigma_min_upper : float
        A proven upper bound on :math:`\sigma_{\min}` where an iterative estimate left its vector (LOBPCG): the
        Rayleigh quotient of that Ritz vector with its rounding bounded
        (:func:`~invertnet.pinv.proofs.upper.vector_upper_bound`); ``nan`` elsewhere.
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_dim: int
    out_dim: int
    unknowns: int
    sigma_max: float
    sigma_min: float
    condition: float
    exact: bool
    converged: bool
    verdict: str
    singular_values: torch.Tensor | None
    sigma_method: str = ""
    sigma_min_lower: float = math.nan
    proof: str = ""
    computed_exactly: bool = False
    seconds: float = field(default=0.0, compare=False)
    sigma_min_upper: float = math.nan

    @property
    def gap(self) -> float:
        """``sigma_min / sigma_min_lower``: how far the proven bound lies below the estimate (``nan`` without one)."""
        if not self.sigma_min_lower > 0:
            return math.nan
        return self.sigma_min / self.sigma_min_lower

    @property
    def bracket(self) -> float:
        """``sigma_min_upper / sigma_min_lower``: the proven interval's ratio (``nan`` without both sides)."""
        if not self.sigma_min_lower > 0 or not math.isfinite(self.sigma_min_upper):
            return math.nan
        return self.sigma_min_upper / self.sigma_min_lower


def _linear_operator(record: LayerRecord) -> ConvOperator | None:
    module, size = record.module, pair(tuple(record.input.shape[-2:]), "input size")
    if isinstance(module, nn.Conv2d):
        return ConvOperator.from_conv(module, size)
    if isinstance(module, nn.AvgPool2d):
        return ConvOperator.from_pool(module, record.input.shape[1], size, record.input.double())
    return None


@dataclass
class _Sides:
    """What the layer spectrum computes: both sides of sigma_min, sigma_max, how."""

    s_max: float = math.nan
    s_min: float = math.nan
    s_min_upper: float = math.nan
    proof: Proof = field(default_factory=lambda: Proof.none(""))
    method: str = ""
    converged: bool = True
    computed_exactly: bool = False
    values: torch.Tensor | None = None


def _exactly(op: ConvOperator, sides: _Sides, max_entries: int | None = None) -> bool:
    """The DFT or the dense matrix, when one applies: exact singular values and their proof."""
    max_entries = DENSE_SPECTRUM_ENTRIES if max_entries is None else max_entries
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    if h % sh == 0 and w % sw == 0 and circulant_reason(op) is None:
        proof, sides.values = dft_proof(op)
        sides.method = "dft"
    elif op.out_dim * op.in_dim <= max_entries:
        proof, sides.values = dense_proof(op, max_entries=max_entries)
        sides.method = "dense"
    else:
        return False
    if sides.proof.injective is None:  # the count and zero columns, found before, stay the proof
        sides.proof = proof
    sides.computed_exactly = True
    sides.s_max = float(sides.values[0]) if len(sides.values) else 0.0
    full = op.out_dim >= op.in_dim and sides.proof.name != "zero column"
    sides.s_min = float(sides.values[-1]) if full and len(sides.values) else 0.0
    return True


def _iteratively(
    op: ConvOperator,
    sides: _Sides,
    window: bool,
    progress: Callable[[str], None] | None = None,
    proof_flops: float = BANDED_MAX_FLOPS,
) -> None:
    """sigma_min by the verified Cholesky of the Gram matrix, else the dense SVD, else LOBPCG and a proof.

    The proof of a large layer: the patch or window certificate, else (or when that bound lies more than
    :data:`TIGHTEN_GAP` times below the estimate, to tighten it) the banded verified Cholesky within ``proof_flops``.
    """
    if sides.proof.injective is False:  # proven zero: the count or unread pixels
        sides.s_max = sigma_max(op)
        sides.method, sides.s_min = "lanczos max", 0.0
        return
    if op.in_dim <= GRAM_MAX_UNKNOWNS:
        proof, estimate = gram_proof(op)
        if proof.injective is True and math.isfinite(estimate):
            sides.s_max = sigma_max(op)
            sides.proof, sides.s_min, sides.method = proof, estimate, "cholesky"
            return
        # too ill-conditioned for the Gram's rounding margin: the SVD certificate reaches further
        if _exactly(op, sides, DENSE_FALLBACK_ENTRIES):
            return
    sides.s_max = sigma_max(op)
    local = patch_proof(op) or (window_proof(op) if window else None)
    preconditioner = None
    if border_reason(op) is None and border_bytes(op) <= BORDER_MAX_BYTES:
        preconditioner = BorderPreconditioner(op, torch.zeros((), dtype=torch.float64))
    found = sigma_min_lobpcg(op, preconditioner=preconditioner, maxiter=LOBPCG_MAX_ITERATIONS, progress=progress)
    sides.s_min, sides.converged = found.sigma_min, found.converged
    sides.s_min_upper = vector_upper_bound(op, found.vector)
    sides.method = "lobpcg, border" if preconditioner is not None else "lobpcg"
    if local is not None:
        sides.proof = local
    loose = local is not None and sides.s_min > TIGHTEN_GAP * local.lower_bound
    if proof_flops > 0 and (sides.proof.injective is None or loose):
        fractions: tuple[float, ...] = SHIFT_FRACTIONS if found.converged else (0.5, 0.0)  # maybe far above: weakest
        if local is not None:  # tightening: the weakest claim would prove no more than the local proof
            fractions = tuple(f for f in fractions if f > 0)
        banded = banded_proof(op, found.sigma_min, fractions=fractions, max_flops=proof_flops, progress=progress)
        if banded.injective is not None and (local is None or banded.lower_bound > local.lower_bound):
            sides.proof = banded


def _verdict(sides: _Sides, op_dims: tuple[int, int], free: int, rtol: float) -> str:
    out_dim, in_dim = op_dims
    if out_dim < free:
        return "not injective (dimension count)"
    if out_dim < in_dim:
        return "not injective as a linear map (count passes on CReLU inputs only)"
    if sides.proof.name == "zero column":
        return "not injective (pixels no filter reads)"
    if sides.proof.injective is True:
        return "injective"
    if sides.proof.name == "singular" or sides.s_min <= rtol * sides.s_max:
        return "numerically singular"
    return "not proven (estimate only)"


def _layer_spectrum(
    record: LayerRecord,
    previous: LayerRecord | None,
    rtol: float,
    window: bool = True,
    progress: Callable[[str], None] | None = None,
    proof_flops: float = BANDED_MAX_FLOPS,
) -> LayerSpectrum:
    in_shape, out_shape = tuple(record.input.shape[1:]), record.output_shape
    in_dim, out_dim = math.prod(in_shape), math.prod(out_shape)
    free = unknowns(record, previous)
    start = time.perf_counter()
    op = _linear_operator(record)
    if op is None:  # max-pooling: not linear; only the count speaks
        return LayerSpectrum(
            record.name,
            type(record.module).__name__,
            in_shape,
            out_shape,
            in_dim,
            out_dim,
            free,
            math.nan,
            math.nan,
            math.nan,
            False,
            True,
            "not injective (pooling)",
            None,
            "none",
            math.nan,
            "",
            False,
        )
    op = ConvOperator(op.weight.double(), op.input_size, op.stride, op.pad.pads, op.dilation, op.groups, op.pad.mode)
    sides = _Sides()
    if out_dim < in_dim:
        sides.proof = Proof(False, 0.0, "count", f"{out_dim} responses for {in_dim} unknowns: not injective by count")
    elif (zero := zero_column_proof(op)) is not None:
        sides.proof = zero
    if not _exactly(op, sides):
        _iteratively(op, sides, window, progress, proof_flops)
    (h, w), (sh, sw) = op.in_shape[1:], op.stride
    if sides.values is None and h % sh == 0 and w % sw == 0:
        approximation = circulant_singular_values(op, torch.zeros((), dtype=torch.float32))
        sides.values = approximation.to(torch.float64)
    verdict = _verdict(sides, (out_dim, in_dim), free, rtol)
    proven = sides.proof.injective is True
    lower = sides.proof.lower_bound if sides.proof.injective is not None else 0.0
    condition = sides.s_max / sides.s_min if sides.s_min > 0 else math.inf
    return LayerSpectrum(
        record.name,
        type(record.module).__name__,
        in_shape,
        out_shape,
        in_dim,
        out_dim,
        free,
        sides.s_max,
        sides.s_min,
        condition,
        proven,
        sides.converged,
        verdict,
        sides.values,
        sides.method,
        lower,
        sides.proof.name,
        sides.computed_exactly,
        time.perf_counter() - start,
        sides.s_min_upper,
    )


def _records(graph: Graph) -> list[tuple[LayerRecord, LayerRecord | None]]:
    """The covered module nodes of a capture, each with the node that feeds it (for the CReLU count)."""
    out = []
    for node in graph.nodes.values():
        if node.op != "module" or not isinstance(node.module, KINDS):
            continue
        parent = graph.nodes.get(node.parents[0]) if node.parents else None
        feeding = parent.record() if parent is not None and parent.op == "module" else None
        out.append((node.record(), feeding))
    return out


def injectivity_report(
    model: nn.Module,
    input_size: tuple[int, int],
    layer: str | None = None,
    *,
    rtol: float = 1e-6,
    window: bool = True,
    progress: Callable[[str], None] | None = None,
    proof_flops: float = BANDED_MAX_FLOPS,
) -> list[LayerSpectrum]:
    r"""The injectivity of every convolution and pooling node of ``model`` up to ``layer``.

    Parameters
    ----------
    model : nn.Module
        Any network :func:`invertnet.reconstruct` handles (one :func:`~invertnet.capture.graph.capture`; residual
        blocks, concatenations and modules called twice included).
    input_size : (int, int)
        Spatial size of the input (the number of channels is read from the first convolution).
    layer : str, optional
        Stop at this node (a node, module or container name); default: the last convolution or pooling node.
    rtol : float, default 1e-6
        A layer whose estimate :math:`\sigma_{\min} \le` ``rtol`` :math:`\sigma_{\max}` (and that no proof decides)
        is "numerically singular".
    window : bool, default True
        Large layers (beyond the Gram proof) whose patches do not prove them injective try the window
        certificate: one Gram matrix and Cholesky factorisation of a block's window (up to
        :data:`~invertnet.pinv.proofs.local.TEMPLATE_MAX_COLUMNS` unknowns; All-CNN-B conv4 at 224 px: 11,616).
        ``False`` skips it (the estimate only, faster).
    proof_flops : float, default :data:`~invertnet.pinv.proofs.banded.BANDED_MAX_FLOPS`
        A large layer that no local certificate decides gets the banded verified Cholesky proof
        (:func:`~invertnet.pinv.proofs.banded.banded_proof`) when it costs at most this many flops (All-CNN-B conv7
        at 224 px: 5.4e12, minutes on one core), and to tighten a local bound more than :data:`TIGHTEN_GAP` times
        below the estimate; ``0`` skips it.
    progress : callable, optional
        Called with a line before each layer and one after (how, proven bound, seconds).

    Returns
    -------
    list of LayerSpectrum

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU(), torch.nn.Conv2d(24, 10, 1))
    >>> [(r.verdict, r.proof) for r in injectivity_report(net, (8, 8))]
    [('injective', 'dense'), ('not injective (dimension count)', 'count')]
    """
    model = require_module(model)
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, KINDS)]
    if not named:
        raise UnsupportedLayerError(
            f"injectivity_report: expected a model with Conv2d or pooling layers, got {type(model).__name__} "
            "without any; the report covers convolution and pooling layers only"
        )
    first_conv = next((m for _, m in named if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float64
    image = torch.zeros(1, channels, *input_size, dtype=dtype)
    target = layer or last_module_node(model, KINDS) or named[-1][0]
    report = []
    for record, previous in _records(capture(model, image, target)):
        if progress is not None:
            progress(f"{record.name}: {type(record.module).__name__} on {tuple(record.input.shape[1:])}")
        report.append(_layer_spectrum(record, previous, rtol, window, progress, proof_flops))
        if progress is not None:
            r = report[-1]
            proven = f", proven >= {r.sigma_min_lower:.6g} ({r.proof})" if r.exact else ""
            above = f", proven <= {r.sigma_min_upper:.6g}" if math.isfinite(r.sigma_min_upper) else ""
            progress(f"{record.name}: {r.sigma_method}{proven}{above}, {r.seconds:.1f} s")
    return report


def format_spectrum(report: list[LayerSpectrum], title: str = "", seconds: bool = False) -> str:
    """The report as a table: ``title`` and a legend on one line, the header, then one line per layer.

    Columns: in, out and unknowns (``C/2`` behind a CReLU input); ``sigma_min``, the estimate (exact for
    ``dft`` and ``dense``; a Lanczos or LOBPCG value is an upper bound); ``proven >=``, the proof's lower bound;
    ``gap``, their ratio; ``proven <=``, the proven upper bound from LOBPCG's vector; ``sigma_max`` and the
    condition number; how ``sigma_min`` was computed, the proof and the verdict. With ``seconds``, the time
    spent on each layer before the verdict (for benchmarks).
    """
    width = max([len("layer"), *(len(r.name) for r in report)])
    lines = [
        f"{title + ' ' if title else ''}(unknowns: C/2 behind a CReLU input; sigma_min: the estimate (exact for "
        "dft and dense, a Lanczos or LOBPCG "
        "value is an upper bound); proven >=: the proof's lower bound; gap = their ratio; proven <=: from the "
        "estimate's vector)",
        f"{'layer':<{width}} {'in':>9} {'out':>9} {'unknowns':>9} {'sigma_min':>11} {'proven >=':>11} {'gap':>6} "
        f"{'proven <=':>11} {'sigma_max':>10} {'cond':>9}  {'sigma by':<14} {'proof':<11} "
        + (f"{'s':>7} " if seconds else "")
        + " verdict",
    ]
    for r in report:
        flag = "" if r.converged else " (sigma_min not converged)"
        gap = f"{r.gap:.3g}" if r.sigma_min_lower > 0 else "-"
        proven = f"{r.sigma_min_lower:.6g}" if r.proof and r.proof != "singular" else "-"
        above = f"{r.sigma_min_upper:.6g}" if math.isfinite(r.sigma_min_upper) else "-"
        lines.append(
            f"{r.name:<{width}} {r.in_dim:>9} {r.out_dim:>9} {r.unknowns:>9} {r.sigma_min:>11.6g} {proven:>11} "
            f"{gap:>6} {above:>11} {r.sigma_max:>10.4g} {r.condition:>9.3g}  {r.sigma_method:<14} "
            f"{r.proof or '-':<11} " + (f"{r.seconds:>7.1f} " if seconds else "") + f" {r.verdict}{flag}"
        )
    return "\n".join(lines)
