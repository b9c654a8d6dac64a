r"""Walk a captured graph back from the requested node to the image, one node at a time.

Nodes are inverted in reverse topological order (:mod:`invertnet.graph`), each value estimated once:

- a module or a functional call with one input on the image's path: its registered inverse
  (:mod:`invertnet.inverses`; functional forms through their module equivalents);
- ``torch.cat``/``torch.stack``: split, every part to its input (exact);
- any other join (``x + F(x)``, ...): the smallest enclosing block, solved from its immediate dominator
  (:mod:`invertnet.blocks`);
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

from invertnet.activeset import Constraints
from invertnet.blocks import solve_block
from invertnet.errors import OptionError, UnsupportedLayerError
from invertnet.graph import Graph, Node
from invertnet.inverses import RELU_MODES, InversionContext, StepResult, inverse_for
from invertnet.inverses.functions import as_module, function_inverse_for
from invertnet.joint import JointOptions
from invertnet.metrics import relative_error
from invertnet.pinv import SolveOptions
from invertnet.trace import LayerRecord

__all__ = ["LayerStep", "invert_graph"]

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
    """Invert ``graph`` from its target back to its input; the estimate of the input and the steps, top first.

    Parameters
    ----------
    graph : Graph
        From :func:`invertnet.graph.capture`.
    method, maxpool, relu, options
        The convolution route, the max-pool mode, how clipping activations are undone and the routes' options
        (see :func:`invertnet.reconstruct`).
    block : JointOptions, optional
        For joins solved jointly (default ``JointOptions(tol=1e-12)``).
    progress : callable, optional
        Called with one line per inverted node.
    """
    if relu not in RELU_MODES:
        raise OptionError(f"expected relu in {RELU_MODES}, got {relu!r}; 'identity' is the paper's ReLU baseline")
    options = options or SolveOptions()
    block = block or JointOptions(tol=1e-12)
    pending: dict[str, list[_Value]] = {graph.target: [_Value(graph.features, True)]}
    skip: set[str] = set()
    dominators: dict[str, set[str]] | None = None
    order = list(graph.nodes)
    steps: list[LayerStep] = []
    estimate = graph.features

    def unsolved(deferred: tuple[int, ...], where: str) -> None:
        """The constraints of ``deferred`` reached a node that does not solve them: they keep the identity reading."""
        for k in deferred:
            note = f"identity reading: {where} does not solve the active set's constraints"
            steps[k] = replace(steps[k], note=_join(steps[k].note, note))

    def solved(value: _Value, target: str, x: torch.Tensor, exact: bool) -> None:
        """The constraints of ``value`` were solved with ``x`` the input of the solving node: redo the steps above."""
        for k in value.deferred:
            parent = graph.nodes[graph.nodes[names[k]].parents[0]]
            redone = graph.evaluate({target: x}, until=parent.name)
            steps[k] = replace(
                steps[k],
                estimate=redone,
                exact=steps[k].exact or exact,  # a lossy step is as exact as the solve of what it handed down
                relative_error=_error(redone, parent.value, x.shape[0]),
                note=_join(steps[k].note, f"solved with the layer below ({steps[-1].name})"),
            )

    names: list[str] = []
    stopped: list[str] = []  # nodes on the path whose input the walk cannot see
    reached = False
    with torch.no_grad():
        for name in reversed(order):
            if name in skip or name not in pending:
                continue
            node = graph.nodes[name]
            values = pending.pop(name)
            incoming, reconciled = _reconcile(values)
            for v in values if len(values) > 1 else ():
                unsolved(v.deferred, f"{node.label!r} (read by {len(values)} nodes)")
            y, exact_so_far = incoming.tensor, incoming.exact
            if node.op == "input":
                unsolved(incoming.deferred, "the input")
                estimate, reached = y, True
                break
            if not node.parents:
                stopped.append(node.label)
                continue
            ctx = InversionContext(
                method, maxpool, options, name == graph.target, relu, exact_so_far, incoming.constraints
            )
            handed: _Value | None = None
            if node.target in _SPLITS:
                unsolved(incoming.deferred, repr(node.label))
                for parent, part in _split(node, graph, y):
                    pending.setdefault(parent, []).append(_Value(part, exact_so_far))
                step = StepResult(y, "split", True)
                target = node.parents[0]
            elif len(node.parents) == 1:
                step = invert_node(node, graph, y, ctx)
                target = node.parents[0]
                if step.constraints is not None and incoming.constraints is None:  # a clipping activation
                    handed = _Value(step.estimate, False, step.constraints, (len(steps),), exact_so_far)
                elif step.constraints is not None:  # carried through
                    deferred = (*incoming.deferred, len(steps))
                    handed = replace(incoming, tensor=step.estimate, constraints=step.constraints, deferred=deferred)
                elif step.resolves:
                    handed = _Value(step.estimate, incoming.exact_above and step.exact)
                else:
                    unsolved(incoming.deferred, f"{node.label!r} ({_kind(node)})")
                pending.setdefault(target, []).append(handed or _Value(step.estimate, exact_so_far and step.exact))
            else:
                unsolved(incoming.deferred, f"{node.label!r} (a join)")
                dominators = dominators or _dominators(graph)
                index = {n: i for i, n in enumerate(order)}
                start = max(dominators[name] - {name}, key=index.__getitem__)
                skip |= _ancestors(graph, name) - _ancestors(graph, start)
                result = solve_block(graph, node, start, y, options, block)
                step = StepResult(result.estimate, result.route, result.exact, False, result.note)
                target = start
                pending.setdefault(target, []).append(_Value(step.estimate, exact_so_far and step.exact))
            truth = graph.nodes[target].value
            steps.append(
                LayerStep(
                    node.label,
                    _kind(node),
                    step.route,
                    step.exact,
                    step.closed_form,
                    step.estimate,
                    _error(step.estimate, truth, y.shape[0]),
                    _join(reconciled, step.note),
                )
            )
            names.append(name)
            if step.resolves:
                solved(incoming, target, step.estimate, step.exact)
            if progress is not None:
                progress(f"{node.label}: {step.route}{'' if step.exact else ' (lossy)'}")
    if not reached or estimate.shape != graph.image.shape:  # never an inner value as "the image"
        where = f" at {', '.join(map(repr, stopped))}" if stopped else ""
        raise UnsupportedLayerError(
            f"expected the walk to reach the input, {tuple(graph.image.shape)}, got stopped{where} with a value of "
            f"shape {tuple(estimate.shape)}; reconstruct from a node before it, or use method='joint'"
        )
    return estimate, steps
