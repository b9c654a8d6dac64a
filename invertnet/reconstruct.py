r"""Reconstruct an input from the features of any layer: layer by layer, or jointly.

:func:`reconstruct` is the paper's algorithm (Shang et al. 2016, Sec. 3): take the features :math:`f(x)` of the
chosen layer and walk back down the chain of modules that produced them (:func:`~invertnet.trace.trace`),
inverting each one with its registered inverse (:mod:`invertnet.inverses`): undo CReLU
(:math:`z = \rho_+ - \rho_-`), apply the pseudo-inverse of the convolution (:mod:`invertnet.pinv`), and so on to
the image. Every step says its route, whether it is ``exact`` (returns the layer's input from its exact
output) and ``closed_form`` (no iteration), and what it loses.

:func:`invert_jointly` matches the features of the whole prefix at once (:mod:`invertnet.joint`), from a flat
image or from the layer-by-layer estimate (:class:`~invertnet.joint.JointOptions`).

Both return a :class:`Reconstruction` with the estimate and its metrics against the true input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from invertnet.errors import InvertnetError, OptionError
from invertnet.graph import Graph, capture
from invertnet.injectivity import ruled_out_by_count
from invertnet.inverses import MAXPOOL_MODES, RELU_MODES
from invertnet.joint import JOINT_STARTS, JointOptions, JointResult, match_features
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.pinv import CONV_METHODS, SolveOptions
from invertnet.pinv.base import LiveTable
from invertnet.walk import LayerStep, invert_graph

__all__ = [
    "JOINT_STARTS",
    "LAYERS_PROBE_ITERATIONS",
    "LAYERS_START_TOL",
    "MAXPOOL_MODES",
    "RECONSTRUCTION_METHODS",
    "RELU_MODES",
    "LayerStep",
    "Reconstruction",
    "invert_graph",
    "invert_jointly",
    "reconstruct",
]

#: ``JointOptions(start="auto")`` starts an image from the layer-by-layer estimate when its relative feature
#: residual is at most this (the pattern is then right and Gauss-Newton finishes in a step or two).
LAYERS_START_TOL = 1e-6
#: ``JointOptions(start="auto")`` computes that estimate with LSQR capped at this many iterations: an exact chain
#: hands every LSQR step a response in its range, which the window start solves in no iteration, while an inexact
#: one would spend its full budget (about 280 iterations on All-CNN-B conv1 from conv2) on an estimate that is
#: then not used. The price: a chain that is exact only through LSQR from zero (a layer without a window inverse)
#: starts flat; ``start="layers"`` forces the uncapped estimate.
LAYERS_PROBE_ITERATIONS = 30


#: Methods of :func:`reconstruct`: every convolution route (layer by layer), and ``"joint"`` (read live).
RECONSTRUCTION_METHODS: Mapping[str, str] = LiveTable(
    lambda: {**CONV_METHODS, "joint": "match the features of the whole prefix (invert_jointly)"}
)


@dataclass
class Reconstruction:
    r"""The result of :func:`reconstruct` and :func:`invert_jointly`.

    Attributes
    ----------
    image : torch.Tensor
        The input estimate, ``(N, C, H, W)``.
    input : torch.Tensor
        The input it estimates (in the model's dtype and device).
    features : torch.Tensor
        The output of ``layer`` that was inverted.
    layer, method : str
    steps : list of LayerStep
        From the chosen layer down to the input (for ``"joint"``: the layer-by-layer estimate it started from,
        when it did).
    psnr, ssim, relative_error : torch.Tensor
        Per image, against ``input``, with ``data_range`` (SSIM as Wang et al. 2004; NaN below 11 pixels).
    feature_residual : torch.Tensor
        Per image, :math:`\|f(\hat x) - f(x)\| / \|f(x)\|` through the prefix up to ``layer``.
    data_range : float
    joint : JointResult or None
        Evaluations, steps, inner iterations and residual history of the joint inversion.
    note : str
        Said when the dimension count shows that the features have many preimages.
    """

    image: torch.Tensor
    input: torch.Tensor
    features: torch.Tensor
    layer: str
    method: str
    steps: list[LayerStep] = field(default_factory=list)
    psnr: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    ssim: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    relative_error: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    feature_residual: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    data_range: float = 1.0
    joint: JointResult | None = None
    note: str = ""

    @property
    def exact(self) -> bool:
        """Layer by layer: every step is exact, so the reconstruction returns the input up to rounding.

        Joint: the features determine the input only where the prefix is injective, which the walk cannot
        prove; ``exact`` is then False and ``feature_residual`` says how well the features are matched.
        """
        return self.method != "joint" and bool(self.steps) and all(step.exact for step in self.steps)

    @property
    def closed_form(self) -> bool:
        """Every step was computed without iteration (never for ``"joint"``)."""
        return self.method != "joint" and all(step.closed_form for step in self.steps)


def _check_common(method: str, maxpool: str, data_range: float) -> None:
    if method not in RECONSTRUCTION_METHODS:
        raise OptionError(
            f"expected method in {list(RECONSTRUCTION_METHODS)}, got {method!r}; 'auto' picks the cheapest provable "
            "route per layer"
        )
    if maxpool not in MAXPOOL_MODES:
        raise OptionError(f"expected maxpool in {MAXPOOL_MODES}, got {maxpool!r}")
    if not (isinstance(data_range, (int, float)) and data_range > 0 and data_range != float("inf")):
        raise OptionError(f"expected a positive finite data_range (1.0 for images in [0, 1]), got {data_range!r}")


def _prefix(graph: Graph) -> Callable[[torch.Tensor], torch.Tensor]:
    def prefix(x: torch.Tensor) -> torch.Tensor:
        return graph.evaluate({graph.input: x})

    return prefix


def _feature_residual(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per image, :math:`\|f(x) - y\| / \|y\|` (features of any shape)."""
    with torch.no_grad():
        misfit: torch.Tensor = (f(x) - y).flatten(1).norm(dim=1)
        scale: torch.Tensor = y.flatten(1).norm(dim=1).clamp(min=torch.finfo(y.dtype).tiny)
        return misfit / scale


def _many_preimages(graph: Graph) -> str | None:
    """The first layer whose responses are fewer than the unknowns behind it (its features have many preimages).

    A count along a chain only: where values join or fan out, the count of one layer does not bound what the
    graph keeps (the walk's block solves say their own counts).
    """
    if any(len(node.parents) > 1 for node in graph.nodes.values()) or any(
        len(readers) > 1 for readers in graph.consumers().values()
    ):
        return None
    for node in graph.nodes.values():
        if node.op != "module" or node.module is None:
            continue
        parent = graph.nodes[node.parents[0]] if node.parents else None
        behind = parent.record() if parent is not None and parent.op == "module" else None
        record = node.record()
        if ruled_out_by_count([*([behind] if behind is not None else []), record]) == record.name:
            return node.label
    return None


def _result(
    graph: Graph,
    image: torch.Tensor,
    layer: str,
    method: str,
    steps: list[LayerStep],
    data_range: float,
    joint: JointResult | None = None,
) -> Reconstruction:
    original = graph.image
    many = _many_preimages(graph)
    note = (
        f"the features have many preimages ({many} has fewer responses than unknowns): this is one of them"
        if many
        else ""
    )
    small = min(original.shape[-2:]) < 11
    return Reconstruction(
        image=image,
        input=original,
        features=graph.features,
        layer=layer,
        method=method,
        steps=steps,
        psnr=psnr(image, original, data_range),
        ssim=torch.full((image.shape[0],), float("nan"), dtype=image.dtype)
        if small
        else ssim(image, original, data_range),
        relative_error=relative_error(image, original),
        feature_residual=_feature_residual(_prefix(graph), image, graph.features),
        data_range=data_range,
        joint=joint,
        note=note,
    )


def reconstruct(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    method: str = "auto",
    *,
    maxpool: str = "switches",
    relu: str = "active_set",
    data_range: float = 1.0,
    options: SolveOptions | None = None,
    joint: JointOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Reconstruction:
    r"""Reconstruct ``image`` from the features of ``layer``, inverting one layer at a time.

    Parameters
    ----------
    model : nn.Module
        ``nn.Sequential`` or any module whose forward is a chain of named submodules (what it is not, e.g.
        a skip connection or a reused module, is refused with the place named), in eval mode where it has
        BatchNorm or Dropout. Computation runs in its dtype and on its device: use ``model.double()`` for
        exactness checks.
    image : torch.Tensor
        ``(N, C, H, W)``, floating point.
    layer : str
        Qualified module name; a container (``"conv3"``) means its output.
    method : str, default "auto"
        A convolution route of :data:`~invertnet.pinv.CONV_METHODS` (``"auto"``: per layer the cheapest route
        that provably computes :math:`A^+`; ``"patch"``: the paper's reading), or ``"joint"``, a thin alias of
        :func:`invert_jointly` with the ``joint`` options.
    maxpool : {"switches", "guess"}
        Unpool max-pooling with the switches recorded in the forward pass, or spread each maximum over its
        window (a guess: without switches the positions are lost).
    relu : {"active_set", "identity"}
        How ReLU, ReLU6 and Hardtanh are undone. ``"active_set"``: their output read as equations (entries
        inside the clip levels) and inequalities (entries at a level), solved with the convolution or Linear
        layer below (:mod:`invertnet.activeset`); exact where the known rows determine that layer's input (the
        step's note gives the certificate), else the minimum-norm input that reproduces the output. That
        layer is then solved by the active set whatever ``method`` says. Only exact outputs are read so (the
        features, or estimates every step above returned exactly); below an inexact step the identity.
        ``"identity"``: the output as it is (the paper's ReLU baseline).
    data_range : float, default 1.0
        Span of valid pixel values, for PSNR and SSIM.
    options : SolveOptions, optional
        Cutoffs, LSQR's tolerance and cap of the convolution routes. A layer whose LSQR stops unconverged says
        so in its step's note (no warning is raised).
    joint : JointOptions, optional
        ``method="joint"`` only.
    progress : callable, optional
        Called with one line per inverted layer (the CLI prints them on a terminal).

    Returns
    -------
    Reconstruction

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU, reconstruct
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 2), CReLU()).double()
    >>> x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    >>> result = reconstruct(net, x, "1")
    >>> result.exact, [step.route for step in result.steps], float(result.relative_error) < 1e-12
    (True, ['invert_crelu', 'lsqr'], True)
    """
    _check_common(method, maxpool, data_range)
    if method == "joint":
        return invert_jointly(
            model, image, layer, joint, maxpool=maxpool, data_range=data_range, solve=options, progress=progress
        )
    if joint is not None:
        raise OptionError(f"joint options go with method='joint', got method={method!r}; drop them or use 'joint'")
    graph = capture(model, image, layer)
    estimate, steps = invert_graph(graph, method, maxpool=maxpool, relu=relu, options=options, progress=progress)
    return _result(graph, estimate, layer, method, steps, data_range)


def invert_jointly(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    options: JointOptions | None = None,
    *,
    maxpool: str = "switches",
    data_range: float = 1.0,
    solve: SolveOptions | None = None,
    progress: Callable[[str], None] | None = None,
    on_round: Callable[[int, float], None] | None = None,
) -> Reconstruction:
    r"""Reconstruct ``image`` by matching the features of the whole prefix up to ``layer`` at once.

    L-BFGS with an optional total-variation prior, then pattern-fixed Gauss-Newton
    (:func:`~invertnet.joint.match_features`), from the start ``options.start`` picks. Each image of a
    batch is solved on its own (its own start, counts and stop) and gets the result it gets alone.

    Parameters
    ----------
    model, image, layer
        As for :func:`reconstruct`.
    options : JointOptions, optional
        Tolerance, start, caps, prior and box.
    maxpool, solve
        For the layer-by-layer estimate the ``"auto"`` and ``"layers"`` starts need.
    data_range : float, default 1.0
        For PSNR and SSIM, and the flat start (the middle of ``[0, data_range]`` without a box).
    progress : callable, optional
        Called with a line after every L-BFGS round and Gauss-Newton step.
    on_round : callable, optional
        Called as ``on_round(round, residual)`` at the same moments (e.g. to draw a bar).

    Returns
    -------
    Reconstruction
        ``method="joint"``; ``joint`` holds the solver's counts and history.

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU, JointOptions, invert_jointly
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 2), CReLU(), torch.nn.Conv2d(16, 20, 2)).double()
    >>> x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    >>> result = invert_jointly(net, x, "2", JointOptions(start="flat"))
    >>> result.joint.converged.tolist(), (result.relative_error < 1e-8).tolist()
    ([True, True], [True, True])
    """
    options = options or JointOptions()
    _check_common("joint", maxpool, data_range)
    graph = capture(model, image, layer)
    prefix = _prefix(graph)
    steps: list[LayerStep] = []
    middle = sum(options.box) / 2 if options.box is not None else data_range / 2
    start = torch.full_like(graph.image, middle)
    lbfgs = torch.ones(start.shape[0], dtype=torch.bool, device=start.device)
    if options.start in ("auto", "layers"):
        probe = solve or SolveOptions()
        if options.start == "auto":
            cap = LAYERS_PROBE_ITERATIONS if probe.maxiter is None else min(probe.maxiter, LAYERS_PROBE_ITERATIONS)
            probe = replace(probe, maxiter=cap)
        try:
            estimate, steps = invert_graph(graph, "auto", maxpool=maxpool, options=probe)
        except InvertnetError:
            if options.start == "layers":
                raise
            estimate = None  # no layer-by-layer estimate here: joint needs nothing but autograd
        if estimate is not None and options.start == "layers":
            start = estimate
        elif estimate is not None:
            close = _feature_residual(prefix, estimate, graph.features) <= LAYERS_START_TOL
            start = torch.where(close.reshape(-1, *([1] * (start.ndim - 1))), estimate, start)
            lbfgs = ~close  # where the pattern is right, Gauss-Newton alone finishes
            steps = steps if bool(close.any()) else []

    def report(round_: int, residual: float) -> None:
        if progress is not None:
            progress(f"joint: round {round_}, feature residual {residual:.3g}")
        if on_round is not None:
            on_round(round_, residual)

    result = match_features(prefix, graph.features, start, options, report, lbfgs=lbfgs)
    return _result(graph, result.image, layer, "joint", steps, data_range, result)
