r"""Reconstruct an input from the features of any layer: layer by layer, or jointly.

:func:`reconstruct` is the paper's algorithm (Shang et al. 2016, Sec. 3): take the features :math:`f(x)` of the
chosen layer and walk back down the chain of modules that produced them (:func:`~invertnet.capture.chain.trace`),
inverting each one with its registered inverse (:mod:`invertnet.inverses`): undo CReLU
(:math:`z = \rho_+ - \rho_-`), apply the pseudo-inverse of the convolution (:mod:`invertnet.pinv`), and so on to
the image. Every step says its route, whether it is ``exact`` (returns the layer's input from its exact
output) and ``closed_form`` (no iteration), and what it loses.

:func:`invert_jointly` matches the features of the whole prefix at once (:mod:`invertnet.reconstruction.joint`), from a
flat image or from the layer-by-layer estimate (:class:`~invertnet.reconstruction.joint.JointOptions`).

Both return a :class:`Reconstruction` with the estimate and its metrics against the true input.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from invertnet.capture.count import ruled_out_by_count
from invertnet.capture.graph import Graph, capture
from invertnet.errors import InvertnetError, NotAChainError, OptionError
from invertnet.inverses import MAXPOOL_MODES, RELU_MODES
from invertnet.metrics import psnr, relative_error, ssim
from invertnet.pinv import CONV_METHODS, SolveOptions
from invertnet.pinv.base import LiveTable
from invertnet.reconstruction.completion import CompletionOptions, CompletionResult, complete
from invertnet.reconstruction.joint import JOINT_STARTS, JointOptions, JointResult, match_features
from invertnet.reconstruction.walk import LayerStep, Walk, Walker, invert_graph

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


#: Methods of :func:`reconstruct` (read live: a new convolution route is a new layer-by-layer method).
RECONSTRUCTION_METHODS: Mapping[str, str] = LiveTable(
    lambda: {
        "auto": "the default: every step proven exact, then a feature-consistent completion with a natural-image "
        "prior where the proofs end",
        "layers": "the paper's layer-by-layer reading, each convolution by the cheapest route that provably "
        "computes its pseudo-inverse (steps below an inexact one damped)",
        **{
            name: f"layer by layer, every convolution by {name!r}: {text}"
            for name, text in CONV_METHODS.items()
            if name != "auto"
        },
        "joint": "match the features of the whole prefix (invert_jointly)",
    }
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
    completion : CompletionResult or None
        ``method="auto"`` where the walk's proofs end: the completion's start, residual history and stop.
    frontier : str
        ``method="auto"``: the node whose value (or box) the completion matched (the deepest one the exact steps
        determine); the requested layer for the other methods.
    determined : torch.Tensor or None
        A boolean mask, broadcastable to ``image``, of the input entries the features are proven to determine
        (every step exact, and the first layer injective on the pixels it reads); ``None`` when no proof covers
        the input (``exact`` results determine every entry).
    stopped : list of str
        Per image, why the method stopped (every step exact; the completion's reason; the joint solve's).
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
    completion: CompletionResult | None = None
    frontier: str = ""
    determined: torch.Tensor | None = None
    stopped: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Every step is proven exact, so the reconstruction returns the input up to rounding.

        A completed or joint result is never exact: the features determine the input only where the prefix is
        injective, which no step proved; ``feature_residual`` says how well the features are matched.
        """
        return (
            self.method != "joint"
            and self.completion is None
            and bool(self.steps)
            and all(step.exact for step in self.steps)
        )

    @property
    def closed_form(self) -> bool:
        """Every step was computed without iteration (never for ``"joint"`` or a completion)."""
        return self.method != "joint" and self.completion is None and all(step.closed_form for step in self.steps)


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
    *,
    joint: JointResult | None = None,
    completion: CompletionResult | None = None,
    frontier: str = "",
    determined: torch.Tensor | None = None,
    stopped: list[str] | None = None,
) -> Reconstruction:
    original = graph.image
    if image.shape != original.shape:
        raise NotAChainError(
            f"expected the reconstruction of layer {layer!r} to have the input's shape {tuple(original.shape)}, got "
            f"{tuple(image.shape)}: a node between the input and the layer changes the layout in a way the walk "
            "does not follow; reconstruct from a layer below it, or use method='joint'"
        )
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
        completion=completion,
        frontier=frontier or graph.nodes[graph.target].label,
        determined=determined,
        stopped=stopped or [],
    )


def _single_prefix(
    model: nn.Module, image: torch.Tensor, layer: str, until: str
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The prefix up to node ``until`` on a float32 copy of ``model`` (None where a copy is not possible)."""
    try:
        copy32 = copy.deepcopy(model).float()
        graph32 = capture(copy32, image.float(), layer)
    except (InvertnetError, RuntimeError, TypeError):  # e.g. a model that pins its dtype: no float32 stage
        return None
    if until not in graph32.nodes:
        return None

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return graph32.evaluate({graph32.input: x}, until=until)

    return prefix


def _complete(
    model: nn.Module,
    graph: Graph,
    layer: str,
    walk: Walk,
    options: CompletionOptions,
    data_range: float,
    progress: Callable[[str], None] | None,
) -> CompletionResult:
    """The completion from the walk's frontier (see :mod:`invertnet.reconstruction.completion`)."""
    options = options if options.box is not None else replace(options, box=(0.0, data_range))
    frontier = walk.frontier
    box = options.box or (0.0, data_range)
    flat = torch.full_like(graph.image, (box[0] + box[1]) / 2)
    starts = {"flat": flat, "walk": walk.estimate} if walk.estimate.shape == flat.shape else {"flat": flat}
    free = None if walk.determined is None else ~walk.determined
    until = frontier.name

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return graph.evaluate({graph.input: x}, until=until)

    single = None
    if options.single and graph.image.dtype == torch.float64 and until != graph.input:
        single = _single_prefix(model, graph.image, layer, until)

    def report(round_: int, residual: float) -> None:
        if progress is not None:
            progress(f"completion of {frontier.label}: round {round_}, residual {residual:.3g}")

    return complete(prefix, frontier.target, starts, options, free=free, f_single=single, progress=report)


def _captured(model: nn.Module, image: torch.Tensor, layer: str, graph: Graph | None) -> Graph:
    """``graph`` when it is the capture of ``model`` on ``image`` up to ``layer``, else a new capture."""
    if graph is None:
        return capture(model, image, layer)
    if graph.model is not model or graph.layer != layer:
        raise OptionError(
            f"expected a capture of this model up to {layer!r}, got one of "
            f"{'this' if graph.model is model else 'another'} model up to {graph.layer!r}; capture it "
            "(invertnet.capture.graph.capture(model, image, layer)) or leave graph=None"
        )
    if graph.image.shape != image.shape or not torch.equal(graph.image, image.to(graph.image)):
        raise OptionError(
            "expected the capture of this image, got one of another image; capture it "
            "(invertnet.capture.graph.capture(model, image, layer)) or leave graph=None"
        )
    return graph


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
    completion: CompletionOptions | None = None,
    graph: Graph | None = None,
    progress: Callable[[str], None] | None = None,
) -> Reconstruction:
    r"""Reconstruct ``image`` from the features of ``layer``: exact where proven, consistent and natural elsewhere.

    ``method="auto"`` (the default) walks down from the layer taking every step that is proven exact
    (:class:`~invertnet.reconstruction.walk.Walker`). If every step down to the image is exact, that is the answer,
    with no prior. Otherwise the walk's *frontier* (the deepest value or box the proofs determine) is handed to the
    completion (:mod:`invertnet.reconstruction.completion`): an input whose prefix meets it, chosen by a natural-image
    prior (total variation in ``[0, data_range]``) among the many that do, from the better of the walk's estimate and a
    flat image. What the exact steps determined stays. The other methods are the paper's layer-by-layer reading
    (``"layers"``, or one convolution route for every layer) and the joint inversion (``"joint"``).

    Parameters
    ----------
    model : nn.Module
        Any module whose forward torch.fx can trace (residual, dense and branching networks, functional calls),
        or a chain of named submodules; in eval mode where it has BatchNorm or Dropout. Computation runs in its
        dtype and on its device: use ``model.double()`` for exactness checks.
    image : torch.Tensor
        ``(N, C, H, W)``, floating point.
    layer : str
        A node or qualified module name; a container (``"conv3"``) means its output.
    method : str, default "auto"
        One of :data:`RECONSTRUCTION_METHODS`: ``"auto"``, ``"layers"``, a convolution route of
        :data:`~invertnet.pinv.CONV_METHODS` for every layer (``"patch"``: the paper's reading), or ``"joint"``
        (:func:`invert_jointly` with the ``joint`` options).
    maxpool : {"switches", "guess"}
        Unpool max-pooling with the switches recorded in the forward pass, or spread each maximum over its
        window (a guess: without switches the positions are lost).
    relu : {"active_set", "identity"}
        How ReLU, ReLU6 and Hardtanh are undone. ``"active_set"``: their output read as equations (entries
        inside the clip levels) and inequalities (entries at a level), solved with the convolution or Linear
        layer below (:mod:`invertnet.activeset`); exact where the known rows determine that layer's input.
        With ``"auto"`` the active set is solved only where the known rows are at least the unknowns (else the
        equations and inequalities are the completion's target). ``"identity"``: the output as it is (the
        paper's ReLU baseline). Not used by ``"joint"``.
    data_range : float, default 1.0
        Span of valid pixel values: for PSNR and SSIM, the box of the completion (and of a ``"layers"``
        estimate that is not exact).
    options : SolveOptions, optional
        Cutoffs, LSQR's tolerance and cap of the convolution routes.
    joint : JointOptions, optional
        ``method="joint"`` only.
    completion : CompletionOptions, optional
        ``method="auto"``: the prior (any differentiable callable), its weight, the caps.
    graph : Graph, optional
        The capture of ``model`` on ``image`` up to ``layer`` (:func:`~invertnet.capture.graph.capture`), to run
        several methods on one capture (as :func:`~invertnet.evaluation.evaluate.evaluate` and
        :func:`~invertnet.evaluation.compare.compare_methods` do); refused if it is another model's, layer's or
        image's. Default: a new capture.
    progress : callable, optional
        Called with one line per inverted layer and completion round (the CLI prints them on a terminal).

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
        if relu != "active_set" or completion is not None:
            raise OptionError(
                "method='joint' matches the features directly: it takes neither relu nor completion options, got "
                f"relu={relu!r}{' and completion options' if completion is not None else ''}; drop them"
            )
        return invert_jointly(
            model,
            image,
            layer,
            joint,
            maxpool=maxpool,
            data_range=data_range,
            options=options,
            graph=graph,
            progress=progress,
        )
    if joint is not None:
        raise OptionError(f"joint options go with method='joint', got method={method!r}; drop them or use 'joint'")
    if completion is not None and method != "auto":
        raise OptionError(f"completion options go with method='auto', got method={method!r}; drop them")
    graph = _captured(model, image, layer, graph)
    if method == "auto":
        walk = Walker(graph, "auto", maxpool=maxpool, relu=relu, options=options, probe=True, progress=progress).run()
        if walk.exact:
            stopped = ["every step exact: the walk returned the input"] * graph.image.shape[0]
            return _result(graph, walk.estimate, layer, method, walk.steps, data_range, stopped=stopped)
        done = _complete(model, graph, layer, walk, completion or CompletionOptions(), data_range, progress)
        return _result(
            graph,
            done.image,
            layer,
            method,
            walk.steps,
            data_range,
            completion=done,
            frontier=walk.frontier.label,
            determined=walk.determined,
            stopped=done.stopped,
        )
    route = "auto" if method == "layers" else method
    walk = Walker(
        graph, route, maxpool=maxpool, relu=relu, options=options, damp=method == "layers", progress=progress
    ).run()
    estimate = walk.estimate
    if walk.exact:
        stopped = ["every step exact: the walk returned the input"] * estimate.shape[0]
    elif method == "layers" and estimate.shape == graph.image.shape:
        estimate = estimate.clamp(0.0, data_range)
        stopped = [f"layer by layer, not every step exact: projected on [0, {data_range:g}]"] * estimate.shape[0]
    else:
        stopped = [f"layer by layer with the {method!r} route, not every step exact"] * estimate.shape[0]
    return _result(graph, estimate, layer, method, walk.steps, data_range, stopped=stopped)


def invert_jointly(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    joint: JointOptions | None = None,
    *,
    maxpool: str = "switches",
    data_range: float = 1.0,
    options: SolveOptions | None = None,
    graph: Graph | None = None,
    progress: Callable[[str], None] | None = None,
    on_round: Callable[[int, float], None] | None = None,
) -> Reconstruction:
    r"""Reconstruct ``image`` by matching the features of the whole prefix up to ``layer`` at once.

    L-BFGS with an optional total-variation prior, then pattern-fixed Gauss-Newton
    (:func:`~invertnet.reconstruction.joint.match_features`), from the start ``joint.start`` picks. Each image of a
    batch is solved on its own (its own start, counts and stop) and gets the result it gets alone.

    Parameters
    ----------
    model, image, layer
        As for :func:`reconstruct`.
    joint : JointOptions, optional
        Tolerance, start, caps, prior and box.
    maxpool, options
        For the layer-by-layer estimate the ``"auto"`` and ``"layers"`` starts need.
    data_range : float, default 1.0
        For PSNR and SSIM, and the flat start (the middle of ``[0, data_range]`` without a box).
    progress : callable, optional
        Called with a line after every L-BFGS round and Gauss-Newton step.
    on_round : callable, optional
        Called as ``on_round(round, residual)`` at the same moments (e.g. to draw a bar).
    graph : Graph, optional
        The capture of ``model`` on ``image`` up to ``layer`` (:func:`~invertnet.capture.graph.capture`), to run
        several methods on one capture (as :func:`~invertnet.evaluation.evaluate.evaluate` and
        :func:`~invertnet.evaluation.compare.compare_methods` do); refused if it is another model's, layer's or
        image's. Default: a new capture.

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
    joint = joint or JointOptions()
    _check_common("joint", maxpool, data_range)
    graph = _captured(model, image, layer, graph)
    prefix = _prefix(graph)
    steps: list[LayerStep] = []
    middle = sum(joint.box) / 2 if joint.box is not None else data_range / 2
    start = torch.full_like(graph.image, middle)
    lbfgs = torch.ones(start.shape[0], dtype=torch.bool, device=start.device)
    if joint.start in ("auto", "layers"):
        probe = options or SolveOptions()
        if joint.start == "auto":
            cap = LAYERS_PROBE_ITERATIONS if probe.maxiter is None else min(probe.maxiter, LAYERS_PROBE_ITERATIONS)
            probe = replace(probe, maxiter=cap)
        try:
            estimate, steps = invert_graph(graph, "auto", maxpool=maxpool, options=probe)
        except InvertnetError:
            if joint.start == "layers":
                raise
            estimate = None  # no layer-by-layer estimate here: joint needs nothing but autograd
        if estimate is not None and joint.start == "layers":
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

    result = match_features(prefix, graph.features, start, joint, report, lbfgs=lbfgs)
    stopped = [
        f"joint: {'met the tolerance' if bool(ok) else 'stopped above the tolerance'}, residual {float(r):.2g}"
        for ok, r in zip(result.converged, result.residual, strict=True)
    ]
    return _result(graph, result.image, layer, "joint", steps, data_range, joint=result, stopped=stopped)
