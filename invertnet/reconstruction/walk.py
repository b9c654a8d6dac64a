r"""Walk a captured graph back from the requested node to the image, one node at a time.

Nodes are inverted in reverse topological order (:mod:`invertnet.capture.graph`), each value estimated once:

- a module or a functional call with one input on the image's path: its registered inverse
  (:mod:`invertnet.inverses`; functional forms through their module equivalents);
- ``torch.cat``/``torch.stack``: split, every part to its input (exact);
- any other join (``x + F(x)``, ...): the smallest enclosing block, solved from its immediate dominator
  (:mod:`invertnet.reconstruction.blocks`);
- a value read by several nodes receives several estimates; they are reconciled by least squares (their
  mean; the estimates proven exact take precedence, since they agree);
- a clipping activation read through its active set (``relu="active_set"``) hands its equations and
  inequalities down, through layers that carry them (BatchNorm2d, Identity), to the first that solves them
  (Conv2d, Linear); max-pooling with switches hands down its own (equations at the switches, the window's
  maximum as a bound elsewhere), which a ReLU below carries. The steps that handed them down are provisional
  until then: once solved, their estimates are recomputed from the solution (the graph run forward), and a
  lossy one (ReLU, max-pooling) is as exact as the solve. Where no layer solves them (a join, a fan-out, the
  input), they keep their own reading and say so.

Every step reports its route, ``exact``, ``closed_form`` and what was lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from invertnet.activeset import Constraints
from invertnet.capture.chain import LayerRecord
from invertnet.capture.graph import Graph, Node
from invertnet.errors import OptionError, UnsupportedLayerError
from invertnet.inverses import RELU_MODES, InversionContext, StepResult, inverse_for
from invertnet.inverses.functions import as_module, function_inverse_for
from invertnet.inverses.pairs import PairStep, crelu_pair_inverse
from invertnet.metrics import relative_error
from invertnet.nn.activations import CReLU
from invertnet.pinv import SolveOptions
from invertnet.reconstruction.blocks import solve_block
from invertnet.reconstruction.joint import FeatureTarget, JointOptions

__all__ = ["PROBE_ITERATIONS", "Frontier", "LayerStep", "Walk", "Walker", "invert_graph"]

_SPLITS = (torch.cat, torch.concat, torch.stack)


@dataclass(frozen=True)
class LayerStep:
    r"""One inverted node.

    Attributes
    ----------
    name, kind : str
        The node's label (a module's qualified name, ``@2`` for its second call, or a function's name) and
        its class or function name.
    route : str
        How it was inverted (``"invert_crelu"``, ``"patch"``, ``"lsqr"``, ``"switches"``, ``"split"``,
        ``"fixed point"``, ``"joint block"``, ...; never ``"auto"``).
    exact : bool
        This inverse returns the node's input exactly from the node's exact output (proven for this node).
    closed_form : bool
        Computed without iteration.
    estimate : torch.Tensor
        Estimate of the node's input (for a join: of the block's input).
    relative_error : torch.Tensor
        Per image, :math:`\|\hat u - u\| / \|u\|` against the true input :math:`u` (NaN where not a tensor).
    note : str
        What is lost, when something is.
    """

    name: str
    kind: str
    route: str
    exact: bool
    closed_form: bool
    estimate: torch.Tensor
    relative_error: torch.Tensor
    note: str = ""


@dataclass(frozen=True)
class _Value:
    """An estimate on its way down: whether its chain is exact, and constraints handed down with it."""

    tensor: torch.Tensor
    exact: bool
    constraints: Constraints | None = None
    deferred: tuple[int, ...] = ()  # indices of the provisional steps that handed the constraints down
    exact_above: bool = True  # the chain's exactness above the first of them


def _reconcile(values: list[_Value]) -> tuple[_Value, str]:
    if len(values) == 1:
        return values[0], ""
    exact = [v.tensor for v in values if v.exact]
    chosen = exact or [v.tensor for v in values]
    note = f"{len(values)} estimates reconciled (least squares: the mean of the {len(chosen)} " + (
        "exact ones)" if exact else "estimates)"
    )
    return _Value(torch.stack(chosen).mean(0), bool(exact)), note


def _dominators(graph: Graph) -> dict[str, set[str]]:
    dominators: dict[str, set[str]] = {}
    for name, node in graph.nodes.items():
        parents = [p for p in node.parents if p in dominators]
        common = set.intersection(*(dominators[p] for p in parents)) if parents else set()
        dominators[name] = common | {name}
    return dominators


def _ancestors(graph: Graph, name: str) -> set[str]:
    seen = {name}
    stack = [name]
    while stack:
        for parent in graph.nodes[stack.pop()].parents:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _kind(node: Node) -> str:
    if node.module is not None:
        return type(node.module).__name__
    return str(getattr(node.target, "__name__", node.target))


def invert_node(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    """Invert one node with one input on the image's path (a module, a function or a method)."""
    if node.module is not None:
        return inverse_for(node.module, node.label)(node.module, node.record(), y, ctx)
    inverse = function_inverse_for(node)
    if inverse is not None:
        return inverse(node, graph, y, ctx)
    module = as_module(node, graph)
    if module is None:
        raise UnsupportedLayerError(
            f"expected a layer or function invertnet can invert, got {node.label!r} ({_kind(node)}); reconstruct "
            "from a node below it, or register an inverse (invertnet.register_inverse for modules, "
            "invertnet.inverses.functions.register_function_inverse for functions)"
        )
    record = LayerRecord(node.label, module, graph.nodes[node.parents[0]].tensor, tuple(node.tensor.shape[1:]))
    return inverse_for(module, node.label)(module, record, y, ctx)


def _split(node: Node, graph: Graph, y: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    args, kwargs = graph.arguments(node)
    dim = int(str(kwargs.get("dim", args[1] if len(args) > 1 else 0)))
    if node.fx_node is None:
        raise UnsupportedLayerError(f"expected a traced node for {node.label!r}")
    inputs = node.fx_node.args[0]
    if not isinstance(inputs, (tuple, list)):
        raise UnsupportedLayerError(f"expected {node.label!r} to join a list of tensors")
    names = [getattr(a, "name", None) for a in inputs]
    values = args[0]
    if not isinstance(values, (tuple, list)):
        raise UnsupportedLayerError(f"expected {node.label!r} to join a list of tensors")
    if node.target is torch.stack:
        parts = list(y.unbind(dim))
    else:
        parts = list(torch.split(y, [int(v.shape[dim]) for v in values if isinstance(v, torch.Tensor)], dim=dim))
    return [(str(name), part) for name, part in zip(names, parts, strict=True) if name in node.parents]


def _error(estimate: torch.Tensor, truth: object, n: int) -> torch.Tensor:
    if isinstance(truth, torch.Tensor) and truth.shape == estimate.shape and truth.ndim == 4:
        return relative_error(estimate, truth)
    return torch.full((n,), float("nan"))


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


#: ``probe``: LSQR's cap on each convolution below the exact chain (an estimate for the start, no more).
PROBE_ITERATIONS = 30
#: ``probe``: joins below the exact chain get a short joint solve (a start for the completion, no more).
PROBE_BLOCK = JointOptions(tol=1e-6, lbfgs_evaluations=50, max_steps=2)


@dataclass(frozen=True)
class Frontier:
    """The deepest node whose every preimage the walk knows, and what is known of its value.

    Attributes
    ----------
    name, label : str
        The node (the graph's input when the walk is exact all the way down).
    target : FeatureTarget
        Its value (equal bounds: proven by exact steps from the features) or the box a clipping activation or
        max-pooling above leaves for it (constraints handed down, not solved).
    """

    name: str
    label: str
    target: FeatureTarget


@dataclass(frozen=True)
class Walk:
    """What a walk returns: the estimate of the input, the steps, and what the completion may build on.

    Attributes
    ----------
    estimate : torch.Tensor
        The estimate of the graph's input.
    steps : list of LayerStep
        From the target down.
    frontier : Frontier
        The deepest node whose preimages are known exactly (see :class:`Frontier`).
    determined : torch.Tensor, optional
        When every step is exact but the last one leaves input entries that no output reads: a boolean mask
        (broadcastable to ``estimate``) of the entries the features determine.
    """

    estimate: torch.Tensor
    steps: list[LayerStep]
    frontier: Frontier
    determined: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        """Every step is exact: the estimate is the input."""
        return bool(self.steps) and all(step.exact for step in self.steps)


def _known_rows(constraints: Constraints) -> torch.Tensor:
    """Per image, how many entries the constraints fix (equations)."""
    return (constraints.lower == constraints.upper).flatten(1).sum(dim=1)


class Walker:
    """Invert a captured graph from its target back to its input, node by node (see the module docstring).

    Parameters
    ----------
    graph : Graph
        From :func:`invertnet.capture.graph.capture`.
    method : str
        The convolution route (``"auto"`` or a name of :data:`invertnet.pinv.ROUTES`).
    maxpool, relu, options
        The max-pool mode, how clipping activations are undone and the routes' options (see
        :func:`invertnet.reconstruct`).
    block : JointOptions, optional
        For joins solved jointly (default ``JointOptions(tol=1e-12)``).
    probe : bool, default False
        The default's walk: every step solved in full while the steps are proven (and the active set only where
        the count lets the known rows determine the layer's input); below, each step is only probed (LSQR capped
        at :data:`PROBE_ITERATIONS`, joins by :data:`PROBE_BLOCK`): the estimate is a candidate start for the
        completion. ``False``: every step solved in full (the layer-by-layer reading).
    damp : bool, default False
        ``probe=False``: a convolution whose input is not exact solves a damped problem
        (:attr:`~invertnet.inverses.InversionContext.regularise`) instead of amplifying that input's error.
    progress : callable, optional
        Called with one line per inverted node.
    """

    def __init__(
        self,
        graph: Graph,
        method: str = "auto",
        *,
        maxpool: str = "switches",
        relu: str = "active_set",
        options: SolveOptions | None = None,
        block: JointOptions | None = None,
        probe: bool = False,
        damp: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if relu not in RELU_MODES:
            raise OptionError(f"expected relu in {RELU_MODES}, got {relu!r}; 'identity' is the paper's ReLU baseline")
        self.graph, self.method, self.maxpool, self.relu = graph, method, maxpool, relu
        self.probe, self.damp = probe, damp and not probe
        self.options = options or SolveOptions()
        self.block = block or JointOptions(tol=1e-12)
        self.progress = progress
        self.pending: dict[str, list[_Value]] = {graph.target: [_Value(graph.features, True)]}
        self.skip: set[str] = set()
        self.steps: list[LayerStep] = []
        self.names: list[str] = []
        self.order = list(graph.nodes)
        self.dominators = _dominators(graph)
        self.consumers = graph.consumers()
        self.frontier = Frontier(graph.target, graph.nodes[graph.target].label, FeatureTarget.equal(graph.features))
        self.determined: torch.Tensor | None = None

    # -- bookkeeping of constraints handed down --------------------------------------------------------------

    def _unsolved(self, deferred: tuple[int, ...], where: str) -> None:
        """The constraints of ``deferred`` reached a node that does not solve them: they keep the identity reading."""
        for k in deferred:
            note = f"identity reading: {where} does not solve the active set's constraints"
            self.steps[k] = replace(self.steps[k], note=_join(self.steps[k].note, note))

    def _solved(self, value: _Value, target: str, x: torch.Tensor, exact: bool) -> None:
        """The constraints of ``value`` were solved with ``x`` the input of the solving node: redo the steps above."""
        graph = self.graph
        for k in value.deferred:
            parent = graph.nodes[graph.nodes[self.names[k]].parents[0]]
            redone = graph.evaluate({target: x}, until=parent.name)
            self.steps[k] = replace(
                self.steps[k],
                estimate=redone,
                exact=self.steps[k].exact or exact,  # a lossy step is as exact as the solve of what it handed down
                relative_error=_error(redone, parent.value, x.shape[0]),
                note=_join(self.steps[k].note, f"solved with the layer below ({self.steps[-1].name})"),
            )

    # -- the walk -------------------------------------------------------------------------------------------------

    def _probing(self, incoming: _Value) -> bool:
        """Below the exact chain in ``"auto"`` mode: only an estimate for the completion's start is wanted."""
        return self.probe and not incoming.exact and incoming.constraints is None

    def _context(self, name: str, incoming: _Value) -> InversionContext:
        options = self.options
        if self._probing(incoming):
            cap = PROBE_ITERATIONS if options.maxiter is None else min(options.maxiter, PROBE_ITERATIONS)
            options = replace(options, maxiter=cap, warn=False)
        return InversionContext(
            self.method,
            self.maxpool,
            options,
            name == self.graph.target,
            self.relu,
            incoming.exact,
            incoming.constraints,
            regularise=self.damp and not incoming.exact and incoming.constraints is None,
            probe=self.probe,
        )

    def _update_frontier(self, name: str, incoming: _Value) -> None:
        """Move the frontier down to ``name`` when its preimages are known and every path to the target crosses it."""
        if name not in self.dominators[self.graph.target]:
            return
        node = self.graph.nodes[name]
        if incoming.exact:
            self.frontier = Frontier(name, node.label, FeatureTarget.equal(incoming.tensor))
        elif incoming.constraints is not None and incoming.exact_above:
            c = incoming.constraints
            self.frontier = Frontier(name, node.label, FeatureTarget.between(c.lower, c.upper))

    def _gate_active_set(self, node: Node, incoming: _Value) -> _Value:
        """``"auto"``: constraints whose known rows are too few to determine the layer's input are not solved.

        Fewer equations than unknowns leave a preimage set no single solve can pick from (an active-set solve
        would spend minutes on one of many minimum-norm points): the constraints stay the frontier's target and
        the completion takes it from there; below, the walk only probes.
        """
        if not self.probe or incoming.constraints is None or len(node.parents) != 1:
            return incoming
        if not isinstance(node.module, (nn.Conv2d, nn.Linear)):
            return incoming
        unknowns = node.first_input[0].numel()
        rows = _known_rows(incoming.constraints)
        if bool((rows >= unknowns).all()):
            return incoming
        fewest = int(rows.min())
        for k in incoming.deferred:
            note = (
                f"not solved: {node.label!r} has {fewest} known rows for {unknowns} unknowns, too few to determine its "
                "input; the constraints are the completion's target"
            )
            self.steps[k] = replace(self.steps[k], note=_join(self.steps[k].note, note))
        return _Value(incoming.tensor, False)

    def _crelu_pair(self, node: Node, y: torch.Tensor, incoming: _Value) -> tuple[StepResult, Node, CReLU, str] | None:
        """A linear layer read through a CReLU, solved as one absolute value equation when that is proven unique."""
        if not incoming.exact or incoming.constraints is not None or len(node.parents) != 1:
            return None
        parent = self.graph.nodes[node.parents[0]]
        if not isinstance(parent.module, CReLU) or len(self.consumers[parent.name]) != 1 or not parent.parents:
            return None
        if node.module is None:
            return None
        solved = crelu_pair_inverse(node.module, parent.module, y)
        if not isinstance(solved, PairStep):
            return None
        step = StepResult(solved.z, "absolute_value", solved.exact, False, solved.note)
        return step, parent, parent.module, parent.parents[0]

    def _record(self, node: Node, step: StepResult, target: str, n: int, note: str = "") -> None:
        truth = self.graph.nodes[target].value
        self.steps.append(
            LayerStep(
                node.label,
                _kind(node),
                step.route,
                step.exact,
                step.closed_form,
                step.estimate,
                _error(step.estimate, truth, n),
                _join(note, step.note),
            )
        )
        self.names.append(node.name)
        if self.progress is not None:
            self.progress(f"{node.label}: {step.route}{'' if step.exact else ' (lossy)'}")

    def _join_block(self, name: str, node: Node, y: torch.Tensor, incoming: _Value) -> tuple[StepResult, str]:
        index = {n: i for i, n in enumerate(self.order)}
        start = max(self.dominators[name] - {name}, key=index.__getitem__)
        self.skip |= _ancestors(self.graph, name) - _ancestors(self.graph, start)
        # a joint block solve is never proven (only a contractive fixed point is), so the default only probes it
        block = PROBE_BLOCK if self.probe else self.block
        result = solve_block(self.graph, node, start, y, self.options, block)
        return StepResult(result.estimate, result.route, result.exact, False, result.note), start

    def run(self) -> Walk:
        """Walk from the target to the input."""
        graph = self.graph
        estimate = graph.features
        stopped: list[str] = []  # nodes on the path whose input the walk cannot see
        reached = False
        with torch.no_grad():
            for name in reversed(self.order):
                if name in self.skip or name not in self.pending:
                    continue
                node = graph.nodes[name]
                values = self.pending.pop(name)
                incoming, reconciled = _reconcile(values)
                for v in values if len(values) > 1 else ():
                    self._unsolved(v.deferred, f"{node.label!r} (read by {len(values)} nodes)")
                self._update_frontier(name, incoming)
                y, n = incoming.tensor, incoming.tensor.shape[0]
                if node.op == "input":
                    self._unsolved(incoming.deferred, "the input")
                    estimate, reached = y, True
                    break
                if not node.parents:
                    stopped.append(node.label)
                    continue
                incoming = self._gate_active_set(node, incoming)
                if node.target in _SPLITS:
                    self._unsolved(incoming.deferred, repr(node.label))
                    for parent, part in _split(node, graph, y):
                        self.pending.setdefault(parent, []).append(_Value(part, incoming.exact))
                    self._record(node, StepResult(y, "split", True, closed_form=True), node.parents[0], n, reconciled)
                    continue
                if len(node.parents) > 1:
                    self._unsolved(incoming.deferred, f"{node.label!r} (a join)")
                    step, target = self._join_block(name, node, y, incoming)
                    self.pending.setdefault(target, []).append(_Value(step.estimate, incoming.exact and step.exact))
                    self._record(node, step, target, n, reconciled)
                    continue
                pair = self._crelu_pair(node, y, incoming)
                if pair is not None:
                    step, crelu_node, crelu, below = pair
                    through = StepResult(crelu(step.estimate), step.route, step.exact, False, "")
                    self._record(node, through, crelu_node.name, n, reconciled)
                    self._record(crelu_node, step, below, n)
                    self.skip.add(crelu_node.name)
                    self.pending.setdefault(below, []).append(_Value(step.estimate, step.exact))
                    continue
                step = invert_node(node, graph, y, self._context(name, incoming))
                target = node.parents[0]
                handed: _Value | None = None
                if step.constraints is not None and incoming.constraints is None:  # a clipping activation
                    handed = _Value(step.estimate, False, step.constraints, (len(self.steps),), incoming.exact)
                elif step.constraints is not None:  # carried through
                    deferred = (*incoming.deferred, len(self.steps))
                    handed = replace(incoming, tensor=step.estimate, constraints=step.constraints, deferred=deferred)
                elif step.resolves:
                    handed = _Value(step.estimate, incoming.exact_above and step.exact)
                else:
                    self._unsolved(incoming.deferred, f"{node.label!r} ({_kind(node)})")
                if graph.nodes[target].op == "input" and incoming.exact and step.determined is not None:
                    self.determined = step.determined
                self.pending.setdefault(target, []).append(
                    handed or _Value(step.estimate, incoming.exact and step.exact)
                )
                self._record(node, step, target, n, reconciled)
                if step.resolves:
                    self._solved(incoming, target, step.estimate, step.exact)
        if not reached or estimate.shape != graph.image.shape:  # never an inner value as "the image"
            where = f" at {', '.join(map(repr, stopped))}" if stopped else ""
            raise UnsupportedLayerError(
                f"expected the walk to reach the input, {tuple(graph.image.shape)}, got stopped{where} with a value of "
                f"shape {tuple(estimate.shape)}; reconstruct from a node before it, or use method='joint'"
            )
        steps = self.steps
        determined = self.determined if steps and all(s.exact for s in steps[:-1]) else None
        return Walk(estimate, steps, self.frontier, determined)


def invert_graph(
    graph: Graph,
    method: str = "auto",
    *,
    maxpool: str = "switches",
    relu: str = "active_set",
    options: SolveOptions | None = None,
    block: JointOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, list[LayerStep]]:
    """Invert ``graph`` from its target back to its input, layer by layer; the estimate of the input and the steps.

    A thin form of :class:`Walker`: every step solved in full, nothing damped (the paper's reading).

    Parameters
    ----------
    graph : Graph
        From :func:`invertnet.capture.graph.capture`.
    method, maxpool, relu, options
        The convolution route, the max-pool mode, how clipping activations are undone and the routes' options
        (see :func:`invertnet.reconstruct`).
    block : JointOptions, optional
        For joins solved jointly (default ``JointOptions(tol=1e-12)``).
    progress : callable, optional
        Called with one line per inverted node.
    """
    walk = Walker(graph, method, maxpool=maxpool, relu=relu, options=options, block=block, progress=progress).run()
    return walk.estimate, walk.steps
