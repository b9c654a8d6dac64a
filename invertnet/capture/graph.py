r"""Capture a model's forward pass as a graph of nodes, run it once, and record every value.

``torch.fx.symbolic_trace`` gives the nodes of most CNN forwards: module calls (a module called twice is two
nodes), functional calls (``F.relu``, ``torch.flatten``, ``x.view``, ``torch.cat``, ``+``) and the input.
:func:`capture` traces the model, resolves the requested layer to a node, runs the graph once on the image
up to that node, and keeps the nodes the requested value depends on, with a copy of each node's value (what
inversion needs: inputs of layers, max-pooling switches, shapes).

A forward that fx cannot trace (data-dependent control flow, Python calls on tensor values) falls back to
the hook-based chain of :func:`invertnet.capture.chain.trace`: a chain of modules still inverts; anything else is
refused with the reason fx gave.

Layer names: a node's name (``"layer1_0_relu_1"``, see ``invertnet layers``), a module's qualified name
(``"layer1.0.conv1"``; a module called more than once must be named by its node), or a container
(``"layer1.0"``: the last value computed inside it).

What :func:`capture` checks before any inversion, so that a wrong result never looks like a result:

- the image is finite, and so is every weight of the modules (and attributes) the value depends on; a
  weight tensor that is all zeros is refused too (its layer keeps nothing of its input), naming the layer;
- in-place operations (``h.mul_(2)``, ``F.relu(h, inplace=True)``, ``nn.ReLU(inplace=True)``, ``h += b``):
  fx records ``h``'s later readers as reading ``h`` before the change, so :func:`capture` points them at the
  in-place node instead, and the in-place node is inverted like its out-of-place twin. The graph is then run
  again out of place and must reproduce the model's value; where it does not (an in-place change through a
  view, ``h[...] = v``), the call is refused naming the in-place node.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
import torch.fx as fx
from torch import nn

from invertnet.capture.chain import LayerRecord, Trace, model_input, require_module, trace
from invertnet.errors import (
    ArgumentTypeError,
    ForwardError,
    InvertnetError,
    LayerNotFoundError,
    NonFiniteError,
    NotAChainError,
    UnsupportedLayerError,
    WeightsError,
)

T = TypeVar("T")

__all__ = [
    "Graph",
    "Node",
    "capture",
    "check_layer",
    "check_weights",
    "graph_layers",
    "is_in_place",
    "keep_whole",
    "last_module_node",
    "layer_values",
]


@dataclass
class Node:
    """One value of the forward pass.

    Attributes
    ----------
    name : str
        Unique node name (fx's).
    op : {"input", "module", "function", "method"}
    target : object
        The module's qualified name, the function, or the method's name.
    label : str
        What to call it in reports: the module's qualified name (``"@2"`` for its second call), or the
        function's name.
    module : nn.Module or None
        The module of a module node.
    parents : tuple of str
        The nodes this value is computed from that depend on the image (tensors), in argument order.
    value : object
        A copy of the value computed in the forward pass.
    fx_node : torch.fx.Node or None
        The traced node (None for a hook-traced chain), for re-evaluation.
    """

    name: str
    op: str
    target: object
    label: str
    module: nn.Module | None
    parents: tuple[str, ...]
    value: object
    fx_node: fx.Node | None = None

    @property
    def tensor(self) -> torch.Tensor:
        """The recorded value as a tensor (every node on the image's path has one)."""
        if not isinstance(self.value, torch.Tensor):
            raise NotAChainError(f"expected node {self.label!r} to compute a tensor, got {type(self.value).__name__}")
        return self.value

    def record(self) -> LayerRecord:
        """The :class:`~invertnet.capture.chain.LayerRecord` the layer inverses take (module, input, output shape)."""
        if self.module is None:
            raise NotAChainError(f"expected a module node, got {self.op} {self.label!r}")
        first = self.first_input
        return LayerRecord(self.label, self.module, first, tuple(self.tensor.shape[1:]))

    first_input: torch.Tensor = field(default_factory=lambda: torch.empty(0))


@dataclass
class Graph:
    """The nodes the requested value depends on, in topological order, and how to evaluate them again.

    Attributes
    ----------
    nodes : dict of str to Node
        Topological order; the first is the input.
    input, target : str
        Names of the input node and of the requested node.
    features : torch.Tensor
        The requested value.
    traced : bool
        Whether fx traced the forward (False: a hook-traced chain of modules).
    model : nn.Module or None
        The model captured, and ``layer`` the name it was asked for (:func:`capture` sets them: a capture reused
        for several reconstructions is checked against them).
    """

    nodes: dict[str, Node]
    input: str
    target: str
    features: torch.Tensor
    traced: bool
    functional_modules: dict[str, nn.Module] = field(default_factory=dict)
    _modules: dict[str, nn.Module] = field(default_factory=dict)
    _attributes: Callable[[str], object] | None = None
    model: nn.Module | None = None
    layer: str = ""

    @property
    def image(self) -> torch.Tensor:
        """The input it was run on."""
        return self.nodes[self.input].tensor

    def consumers(self) -> dict[str, list[str]]:
        """For every node, the nodes that read it (among the recorded ones)."""
        out: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for parent in node.parents:
                out[parent].append(node.name)
        return out

    def evaluate(self, overrides: dict[str, torch.Tensor], until: str | None = None) -> torch.Tensor:
        """Run the graph again from ``overrides`` (node name -> value) to ``until`` (default: the target).

        Nodes that do not depend on an overridden node keep their recorded values; autograd and ``torch.func``
        transforms see through the call.
        """
        until = until or self.target
        env: dict[str, object] = dict(overrides)
        dirty = set(overrides)
        for name, node in self.nodes.items():
            if name in env:
                if name == until:
                    break
                continue
            if not any(p in dirty for p in node.parents):
                env[name] = node.value
            else:
                env[name] = self._run(node, env)
                dirty.add(name)
            if name == until:
                break
        value = env[until]
        if not isinstance(value, torch.Tensor):
            raise NotAChainError(f"expected node {until!r} to compute a tensor, got {type(value).__name__}")
        return value

    def arguments(self, node: Node) -> tuple[tuple[object, ...], dict[str, object]]:
        """The recorded positional and keyword arguments of a traced node (tensors, constants, attributes)."""
        if node.fx_node is None:
            return (node.first_input,), {}
        env = {name: other.value for name, other in self.nodes.items()}
        return self._arguments(node, env)

    def _arguments(self, node: Node, env: dict[str, object]) -> tuple[tuple[object, ...], dict[str, object]]:
        fx_node = node.fx_node
        if fx_node is None:
            return (env[node.parents[0]],), {}

        def value_of(arg: fx.Node) -> fx.node.Argument:
            # recorded values are tensors and Python constants: arguments fx itself passed to the call
            if arg.name in env:
                return cast("fx.node.Argument", env[arg.name])
            if arg.op == "get_attr" and self._attributes is not None:
                return cast("fx.node.Argument", self._attributes(str(arg.target)))
            raise NotAChainError(f"node {node.label!r} reads {arg.name!r}, which was not recorded")

        args = fx.node.map_arg(fx_node.args, value_of)
        kwargs = fx.node.map_arg(fx_node.kwargs, value_of)
        return tuple(args), dict(kwargs)

    def _run(self, node: Node, env: dict[str, object]) -> object:
        if node.fx_node is None:  # a hook-traced chain: a module applied to its one parent
            if node.module is None:
                raise NotAChainError(f"cannot evaluate node {node.label!r} of a hook-traced chain")
            return node.module(env[node.parents[0]])
        args, kwargs = self._arguments(node, env)
        if node.op == "module" and node.module is not None:
            return node.module(*args, **kwargs)
        if node.op == "function" and callable(node.target):
            if kwargs.get("inplace") is True:  # out of place, as for methods
                kwargs = {**kwargs, "inplace": False}
            return _functional(node.target)(*args, **kwargs)
        if node.op == "method":
            receiver, *rest = args
            method = str(node.target)
            if method.endswith("_") and not method.startswith("__"):
                method = method[:-1]  # re-run in-place methods out of place: recorded values must not change
            return getattr(receiver, method)(*rest, **kwargs)
        raise NotAChainError(f"cannot evaluate node {node.label!r} ({node.op})")

    def records(self) -> list[LayerRecord]:
        """The module nodes as layer records, in topological order."""
        return [node.record() for node in self.nodes.values() if node.op == "module"]


#: In-place operators re-run out of place (the recorded values must not change).
_OUT_OF_PLACE: dict[object, Callable[..., object]] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def _functional(fn: object) -> Callable[..., object]:
    replacement = _OUT_OF_PLACE.get(fn)
    if replacement is not None:
        return replacement
    if not callable(fn):
        raise NotAChainError(f"expected a callable, got {fn!r}")
    function: Callable[..., object] = fn
    name = getattr(fn, "__name__", "")
    if _in_place_name(name) and getattr(torch, name, None) is fn:  # torch.relu_ -> torch.relu
        twin = getattr(torch, name[:-1], None)
        if callable(twin):
            function = twin
    return function


#: Functions that change their first argument in place (besides the operators above and ``torch.*_``).
_IN_PLACE_FUNCTIONS: tuple[object, ...] = (*_OUT_OF_PLACE, operator.ipow, operator.ifloordiv)


def _in_place_name(name: str) -> bool:
    """``mul_``, ``relu_``: torch's spelling of an in-place method (not ``__add__``, not ``_private``)."""
    return name.endswith("_") and not name.startswith("_") and len(name) > 1


def is_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` changes its first argument in place.

    ``x.mul_(2)``, ``torch.relu_(x)``, ``x += 1``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``.

    Examples
    --------
    >>> import torch
    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         x.mul_(2)
    ...         return torch.relu(x)
    >>> traced = torch.fx.symbolic_trace(M())
    >>> [n.name for n in traced.graph.nodes if is_in_place(n, dict(traced.named_modules()))]
    ['mul_']
    """
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        return _in_place_name(str(node.target))
    if node.op == "call_function":
        if node.target in _IN_PLACE_FUNCTIONS or node.kwargs.get("inplace") is True:
            return True
        name = getattr(node.target, "__name__", "")
        return _in_place_name(name) and getattr(torch, name, None) is node.target
    if node.op == "call_module":
        return getattr(modules.get(str(node.target)), "inplace", False) is True
    return False


def _redirect_in_place(graph_module: fx.GraphModule, values: dict[str, object], dependent: set[str]) -> list[fx.Node]:
    """Point the readers of a value changed in place, after the change, at the in-place node; return those nodes.

    fx records ``h.mul_(2); act(h)`` as ``act`` reading ``h``: the recorded values are right (the model ran), the
    edges are not, so a walk would invert ``act`` into ``h`` as it was before the change. An in-place node returns
    the tensor it changed, so its later readers read it instead. (``h[i] = v`` does not trace: such a forward is
    walked as a hook-traced chain, which refuses it.)
    """
    modules = dict(graph_module.named_modules())
    nodes = [n for n in graph_module.graph.nodes if n.name in values]
    position = {n: i for i, n in enumerate(nodes)}
    changed = []
    for n in nodes:
        if not is_in_place(n, modules) or not isinstance(n.args[0], fx.Node) or n.args[0].name not in dependent:
            continue
        source = n.args[0]
        later = [u for u in list(source.users) if u is not n and position.get(u, -1) > position[n]]
        for user in later:
            user.replace_input_with(source, n)
        changed.append(n)
    return changed


def _stack_keys(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    keys = []
    for key, value in stack.items():
        path = value[0] if isinstance(value, tuple) and value and isinstance(value[0], str) else str(key)
        keys.append(path.split("@")[0])
    return keys


#: Predicates of the modules the tracer keeps whole (see :func:`keep_whole`).
_KEEP_WHOLE: list[Callable[[nn.Module], bool]] = []


def keep_whole(is_leaf: Callable[[nn.Module], bool]) -> None:
    """Make the tracer keep every module for which ``is_leaf`` is true whole, as one node.

    :mod:`invertnet.inverses` registers its registry's test (a module with a registered inverse: CReLU, AVR,
    users' own), so the capture reads the layer types the walks can invert without importing them.

    Examples
    --------
    >>> import torch
    >>> class Block(torch.nn.Sequential):
    ...     pass
    >>> keep_whole(lambda m: isinstance(m, Block))
    >>> net = torch.nn.Sequential(Block(torch.nn.Conv2d(1, 1, 1)), torch.nn.ReLU())
    >>> [n.target for n in _symbolic_trace(net).graph.nodes if n.op == "call_module"]
    ['0', '1']
    >>> _KEEP_WHOLE.pop() and None
    """
    if is_leaf not in _KEEP_WHOLE:
        _KEEP_WHOLE.append(is_leaf)


class _Tracer(fx.Tracer):
    """fx's tracer, with every module a :func:`keep_whole` predicate accepts kept whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return any(test(m) for test in _KEEP_WHOLE) or super().is_leaf_module(m, module_qualified_name)


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    name = model.__class__.__name__ if isinstance(model, nn.Module) else "module"
    return fx.GraphModule(tracer.root, graph, name)


def _resolve(graph_module: fx.GraphModule, model: nn.Module, layer: str) -> fx.Node:
    nodes: list[fx.Node] = [n for n in graph_module.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    by_name = {n.name: n for n in nodes}
    if layer in by_name:
        return by_name[layer]
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if len(calls) == 1:
        return calls[0]
    if len(calls) > 1:
        raise LayerNotFoundError(
            f"expected a layer that runs once, got {layer!r}, which runs {len(calls)} times; name one call by its "
            f"node: {', '.join(n.name for n in calls)}"
        )
    modules = dict(model.named_modules())
    if layer and layer in modules:
        inside = [n for n in nodes if layer in _stack_keys(n)]
        if inside:
            return inside[-1]
        raise LayerNotFoundError(f"layer {layer!r} did not run in the forward pass of {type(model).__name__}")
    names = [name for name in modules if name]
    shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
    raise LayerNotFoundError(
        f"expected a layer of the model (a module name, or a node name from 'invertnet layers'), got {layer!r}; "
        f"module names: {shown}"
    )


class _Recorder(fx.Interpreter):
    """Run the graph, keep a copy of every value, stop after the target node."""

    def __init__(self, module: fx.GraphModule, target: fx.Node) -> None:
        super().__init__(module)
        self.target = target
        self.values: dict[str, object] = {}
        self.running = ""

    def run_node(self, n: fx.Node) -> object:
        if n.op == "call_module":
            self.running = f"{n.target!r} ({type(self.module.get_submodule(str(n.target))).__name__})"
        else:
            self.running = f"{getattr(n.target, '__name__', n.target)} (node {n.name!r})"
        result = super().run_node(n)
        self.values[n.name] = result.detach().clone() if isinstance(result, torch.Tensor) else result
        if n is self.target:
            raise _ReachedError
        return result


class _ReachedError(Exception):
    """Raised after the target node to end the run."""


def _run(recorder: _Recorder, model: nn.Module, image: torch.Tensor) -> None:
    """Run the recorder to its target; a failure of the forward pass names the node."""
    try:
        with torch.no_grad():
            recorder.run(image)
    except _ReachedError:
        pass
    except InvertnetError:
        raise
    except SystemExit as err:  # user code calling sys.exit() must not end the caller's program silently
        raise ForwardError(
            f"expected {type(model).__name__}'s forward pass to return a value, but it called sys.exit({err.code!r}) "
            f"at {recorder.running}; remove the exit from the model's code"
        ) from None
    except Exception as err:  # the model's code may raise anything; shapes and dtypes raise these four
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        shapes = isinstance(err, (RuntimeError, ValueError, IndexError, TypeError))
        raise ForwardError(
            f"expected {type(model).__name__} to run on an input of shape {tuple(image.shape)}, but its forward "
            f"pass failed at {recorder.running}: {first if shapes else f'{type(err).__name__}: {first}'}; "
            + ("check the input size and channels" if shapes else "fix the model's code")
        ) from err


def _hooked(model: nn.Module, image: torch.Tensor, run: Callable[[], T]) -> T:
    """``run()`` (a hook-traced forward of ``model``), with whatever else the model's code raises as a ForwardError."""
    try:
        return run()
    except InvertnetError:
        raise
    except Exception as err:  # trace() names the shape errors itself; the rest is the model's code
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ForwardError(
            f"expected {type(model).__name__} to run on an input of shape {tuple(image.shape)}, but its forward "
            f"pass raised {type(err).__name__}{': ' + first if first else ''}; fix the model's code"
        ) from err


def _labels(nodes: Iterable[fx.Node]) -> dict[str, str]:
    calls: dict[str, int] = {}
    labels = {}
    for n in nodes:
        if n.op == "call_module":
            count = calls[str(n.target)] = calls.get(str(n.target), 0) + 1
            labels[n.name] = str(n.target) if count == 1 else f"{n.target}@{count}"
        elif n.op == "call_function":
            labels[n.name] = f"{getattr(n.target, '__name__', str(n.target))} ({n.name})"
        elif n.op == "call_method":
            labels[n.name] = f".{n.target}() ({n.name})"
        else:
            labels[n.name] = n.name
    return labels


_OPS = {"placeholder": "input", "call_module": "module", "call_function": "function", "call_method": "method"}


@contextlib.contextmanager
def _exits_are_errors(model: nn.Module) -> Iterator[None]:
    """``sys.exit()`` in a model's code (while fx traces it, or while it runs) as a :class:`ForwardError`."""
    try:
        yield
    except SystemExit as err:
        raise ForwardError(
            f"expected {type(model).__name__}'s forward pass to return, but it called sys.exit({err.code!r}); remove "
            "the exit from the model's code"
        ) from None


def capture(model: nn.Module, image: torch.Tensor, layer: str) -> Graph:
    """Trace ``model``, run it on ``image`` up to ``layer`` and keep the nodes that value depends on.

    Parameters
    ----------
    model : nn.Module
    image : torch.Tensor
        ``(N, C, H, W)``, floating point; moved to the model's device and dtype.
    layer : str
        A node name, a module's qualified name, or a container's (see the module docstring).

    Returns
    -------
    Graph

    Raises
    ------
    LayerNotFoundError
        Unknown name (the message lists the node names), or a module that runs several times.
    NotAChainError
        fx cannot trace the forward and it is not a chain of modules either (the message gives both reasons).
    ForwardError
        The forward pass fails on the image (the message names the node).

    Examples
    --------
    >>> import torch
    >>> class Skip(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    ...     def forward(self, x):
    ...         return torch.relu(self.conv(x)) + x
    >>> graph = capture(Skip(), torch.rand(1, 3, 8, 8), "add")
    >>> [(node.label, node.parents) for node in graph.nodes.values()]
    [('x', ()), ('conv', ('x',)), ('relu (relu)', ('conv',)), ('add (add)', ('relu', 'x'))]
    """
    model = require_module(model)
    with _exits_are_errors(model):
        graph = _capture(model, image, layer)
    graph.model, graph.layer = model, layer
    return graph


def _capture(model: nn.Module, image: torch.Tensor, layer: str) -> Graph:
    _require_name(layer)
    image = model_input(model, image)
    _require_finite_image(image)
    try:
        graph_module = _symbolic_trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, AttributeError, ... on untraceable code
        graph = _chain_graph(model, image, layer, f"{type(err).__name__}: {str(err).strip().splitlines()[0]}")
        _require_weights((node.label, node.module) for node in graph.nodes.values() if node.module is not None)
        return graph
    target = _resolve(graph_module, model, layer)
    modules = dict(graph_module.named_modules())
    if any(is_in_place(n, modules) for n in graph_module.graph.nodes):
        image = image.clone()  # the model changes values in place: not the caller's tensor
    recorder = _Recorder(graph_module, target)
    _run(recorder, model, image)
    executed = [n for n in graph_module.graph.nodes if n.name in recorder.values]
    in_place = _redirect_in_place(graph_module, recorder.values, _depends_on_input(executed))
    order = [n for n in graph_module.graph.nodes if n.name in recorder.values]
    dependent = _depends_on_input(order)
    needed = _ancestors(target)
    labels = _labels(order)
    _require_weights(
        (labels[n.name], modules[str(n.target)]) for n in order if n.name in needed and n.op == "call_module"
    )
    _require_weights((str(n.target), recorder.values[n.name]) for n in order if n.name in needed and n.op == "get_attr")
    nodes: dict[str, Node] = {}
    for n in order:
        if n.name not in needed or n.op in ("get_attr", "output"):
            continue
        value = recorder.values[n.name]
        # tensors, and the tuples of ``chunk``/``split`` (their parts are read by ``getitem`` nodes)
        parents = tuple(
            a.name
            for a in n.all_input_nodes
            if a.name in dependent and isinstance(recorder.values.get(a.name), (torch.Tensor, tuple, list))
        )
        module = modules[str(n.target)] if n.op == "call_module" else None
        first = recorder.values[parents[0]] if parents else torch.empty(0)
        nodes[n.name] = Node(
            n.name,
            _OPS[n.op],
            str(n.target) if n.op in ("call_module", "call_method") else n.target,
            labels[n.name],
            module,
            parents,
            value,
            n,
            first if isinstance(first, torch.Tensor) else torch.empty(0),
        )
    placeholder = next(n for n in order if n.op == "placeholder")
    features = recorder.values[target.name]
    if not isinstance(features, torch.Tensor):
        raise LayerNotFoundError(f"expected layer {layer!r} to output a tensor, got {type(features).__name__}")
    if target.name not in dependent:
        raise LayerNotFoundError(f"layer {layer!r} does not depend on the input; pick a layer on the image's path")

    def attribute(path: str) -> object:
        value: object = graph_module
        for part in path.split("."):
            value = getattr(value, part)
        return value

    graph = Graph(nodes, placeholder.name, target.name, features, True, {}, modules, attribute)
    if in_place:  # also those off the path: a change through a view reaches values on it
        _require_reproduced(graph, [labels.get(n.name, n.name) for n in in_place])
    return graph


def _require_name(layer: object) -> None:
    if not isinstance(layer, str):
        hint = f"pass {str(layer)!r}" if isinstance(layer, int) and not isinstance(layer, bool) else "pass its name"
        raise ArgumentTypeError(
            f"layer: expected a node or module name as a str (see 'invertnet layers'), got {type(layer).__name__} "
            f"{layer!r}; {hint}"
        )


def _require_finite_image(image: torch.Tensor) -> None:
    bad = ~torch.isfinite(image)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(
            f"image: expected finite pixel values, got {int(bad.sum())} NaN or infinite entries (the first at index "
            f"{first}); fix or drop them before inverting"
        )


def _require_weights(named: Iterable[tuple[str, object]]) -> None:
    """Refuse NaN or infinite weights, and a weight tensor of all zeros, naming the layer (``named``: modules, tensors).

    A layer whose weights are all zero outputs its bias alone: nothing of its input is left to invert.
    """
    for label, owner in named:
        if isinstance(owner, nn.Module):
            tensors = [
                *owner.named_parameters(),
                *((n, b) for n, b in owner.named_buffers() if b.is_floating_point()),
            ]
            where = f"layer {label!r} ({type(owner).__name__})"
        elif isinstance(owner, torch.Tensor) and owner.is_floating_point():
            tensors, where = [("", owner)], f"attribute {label!r}"
        else:
            continue
        for name, tensor in tensors:
            what = f"{name} of {where}" if name else where
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                raise NonFiniteError(
                    f"expected finite weights, got {bad} of {tensor.numel()} entries of the {what} NaN or infinite; "
                    "the training diverged or the weights are damaged: load other weights"
                )
            weight = name.rsplit(".", 1)[-1] == "weight" or (not name and label.rsplit(".", 1)[-1] == "weight")
            if weight and tensor.ndim >= 2 and tensor.numel() and not bool(tensor.detach().any()):
                raise WeightsError(
                    f"expected weights that read the input, got the {what}, {tuple(tensor.shape)}, all zeros: the "
                    "layer outputs its bias alone and keeps nothing of its input; load trained weights or "
                    "initialise the layer"
                )


def check_weights(model: nn.Module) -> None:
    """Refuse a model with NaN or infinite weights, or a weight tensor of all zeros, naming the layer.

    :func:`capture` checks the layers a value depends on; this checks every layer (for analyses of the whole
    model, such as :func:`invertnet.analysis.injectivity.injectivity_report`).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1))
    >>> _ = torch.nn.init.zeros_(model[1].weight)
    >>> check_weights(model)
    Traceback (most recent call last):
    ...
    invertnet.errors.WeightsError: expected weights that read the input, got the weight of layer '1' (Conv2d), ...
    """
    model = require_module(model)
    _require_weights((name or type(model).__name__, m) for name, m in model.named_modules() if not list(m.children()))


def _require_reproduced(graph: Graph, in_place: list[str]) -> None:
    """Refuse a graph that, run again out of place, does not give the model's value (an in-place change fx missed)."""
    with torch.no_grad():
        again = graph.evaluate({graph.input: graph.image})
    features = graph.features
    scale = float(features.abs().max()) if features.numel() else 0.0
    difference = float((again - features).abs().max()) if again.shape == features.shape else float("inf")
    tolerance = float(torch.finfo(features.dtype).eps) ** 0.5 * max(scale, 1.0)
    if not difference <= tolerance:
        raise UnsupportedLayerError(
            f"expected a forward pass whose in-place operations the graph can follow, got {', '.join(in_place)}, "
            f"and the graph run out of place differs from the model's value by {difference:.2g} (an in-place change "
            "through a view or an index); write it out of place (e.g. h = h * 2), or reconstruct from a node before it"
        )


def _depends_on_input(order: list[fx.Node]) -> set[str]:
    dependent: set[str] = set()
    for n in order:
        if n.op == "placeholder" or any(a.name in dependent for a in n.all_input_nodes):
            dependent.add(n.name)
    return dependent


def _ancestors(target: fx.Node) -> set[str]:
    seen = {target.name}
    stack = [target]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent.name not in seen:
                seen.add(parent.name)
                stack.append(parent)
    return seen


def _chain_graph(model: nn.Module, image: torch.Tensor, layer: str, why: str) -> Graph:
    """The hook-traced chain as a graph (fx could not trace the forward: ``why``)."""
    try:
        recorded: Trace = _hooked(model, image, lambda: trace(model, image, layer))
    except NotAChainError as err:
        raise NotAChainError(f"torch.fx could not trace the forward ({why}), and {err}") from None
    nodes = {"input": Node("input", "input", "input", "input", None, (), recorded.records[0].input)}
    previous = "input"
    for i, record in enumerate(recorded.records):
        output = recorded.records[i + 1].input if i + 1 < len(recorded.records) else recorded.features
        name = f"{record.name}#{i}"
        nodes[name] = Node(name, "module", record.name, record.name, record.module, (previous,), output, None)
        nodes[name].first_input = record.input
        previous = name
    return Graph(nodes, "input", previous, recorded.features, False)


def check_layer(model: nn.Module, layer: str) -> None:
    """Refuse a name that is neither a node nor a module of ``model`` (:class:`LayerNotFoundError`), cheaply.

    Used to check names before any work; the forward pass is not run.
    """
    model = require_module(model)
    _require_name(layer)
    with _exits_are_errors(model):
        try:
            graph_module = _symbolic_trace(model)
        except Exception:  # fx cannot trace: module names only
            from invertnet.capture.chain import find_layer

            find_layer(model, layer)
            return
    _resolve(graph_module, model, layer)


def graph_layers(model: nn.Module, image: torch.Tensor) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """Every node of the forward pass: (node name, label, kind, output shape of one sample).

    Falls back to the modules that run (hooks) when fx cannot trace the forward.
    """
    model = require_module(model)
    with _exits_are_errors(model):
        return _graph_layers(model, model_input(model, image))


def _graph_layers(model: nn.Module, image: torch.Tensor) -> list[tuple[str, str, str, tuple[int, ...]]]:
    try:
        graph_module = _symbolic_trace(model)
    except Exception:  # fx cannot trace: list modules instead
        from invertnet.capture.chain import list_layers

        infos = _hooked(model, image, lambda: list_layers(model, image))
        return [(i.name, i.name, i.kind, i.output_shape) for i in infos]
    nodes = [n for n in graph_module.graph.nodes if n.op not in ("output", "get_attr")]
    last = nodes[-1]
    recorder = _Recorder(graph_module, last)
    _run(recorder, model, image)
    labels = _labels(nodes)
    modules = dict(graph_module.named_modules())
    out = []
    for n in nodes:
        value = recorder.values.get(n.name)
        shape = tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else ()
        kind = type(modules[str(n.target)]).__name__ if n.op == "call_module" else _OPS.get(n.op, n.op)
        out.append((n.name, labels[n.name], kind, shape))
    return out


def last_module_node(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> str | None:
    """The node name of the last call of a module of one of ``kinds`` in the forward pass (torch.fx), or ``None``.

    ``None`` when fx cannot trace the forward, or no such module is called; the analyses then stop at the last
    such module by name (the hook-traced chain of :func:`capture`'s fallback).

    Examples
    --------
    >>> conv, relu = torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()
    >>> net = torch.nn.Sequential(conv, relu, torch.nn.Conv2d(4, 4, 1), torch.nn.Flatten())
    >>> last_module_node(net, (torch.nn.Conv2d,))
    '_2'
    """
    model = require_module(model)
    try:
        graph_module = _symbolic_trace(model)
    except Exception:  # fx cannot trace: the caller falls back to module names
        return None
    modules = dict(graph_module.named_modules())
    calls = [
        n.name
        for n in graph_module.graph.nodes
        if n.op == "call_module" and isinstance(modules.get(str(n.target)), kinds)
    ]
    return calls[-1] if calls else None


def layer_values(model: nn.Module, images: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """The values of ``layers`` (node, module or container names) on ``images``, through :func:`capture` (any network).

    One capture per layer, each run only as far as its layer.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> layer_values(net, torch.rand(2, 3, 8, 8), ["1"])["1"].shape
    torch.Size([2, 4, 6, 6])
    """
    return {layer: capture(model, images, layer).features for layer in layers}
