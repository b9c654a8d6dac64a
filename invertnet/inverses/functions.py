r"""Inverses of functional calls in a traced forward: shapes, arithmetic with constants, functional forms.

A node of :mod:`invertnet.capture.graph` that calls a function or a method (``torch.flatten``, ``x.view``,
``x * 2``, ``F.relu``, ``F.conv2d``, ...) is inverted here:

- shape changes (``flatten``, ``view``, ``reshape``, ``squeeze``, ``unsqueeze``, ``contiguous``, ``permute``,
  ``transpose``) are undone exactly;
- an in-place method or function (``h.mul_(2)``, ``torch.relu_(h)``, ``F.relu(h, inplace=True)``) is inverted as
  its out-of-place twin (:mod:`invertnet.capture.graph` points the readers of ``h`` after the change at it);
- ``getitem`` is refused naming the node: the parts of a ``chunk``/``split`` (the walk cannot join them back yet;
  ``method="joint"`` can) or an index into a tensor (the entries left out are lost);
- arithmetic with a value that does not depend on the image (``x + b``, ``x - b``, ``b - x``, ``x * s``,
  ``x / s``, ``-x``) is undone exactly (a zero factor loses its entries, said);
- functional forms of layers (``F.relu``, ``F.conv2d``, ``F.max_pool2d``, ``F.adaptive_avg_pool2d``, ``F.linear``,
  ``F.batch_norm``, ``x.mean((2, 3))``, ...) become the equivalent module, inverted by the module's registered
  inverse (:func:`as_module`).

Nodes with several inputs that depend on the image (``x + f(x)``, ``torch.cat``) are the walk's business
(:mod:`invertnet.reconstruction.api`): ``cat`` is split, other joins are solved as a block.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from invertnet._checks import pair
from invertnet.capture.graph import Graph, Node
from invertnet.errors import OptionError, UnsupportedLayerError
from invertnet.inverses.registry import InversionContext, StepResult

__all__ = ["FunctionInverse", "as_module", "function_inverse_for", "register_function_inverse"]

FunctionInverse = Callable[[Node, Graph, torch.Tensor, InversionContext], StepResult]
_FUNCTIONS: dict[object, FunctionInverse] = {}


def register_function_inverse(*targets: object, replace: bool = False) -> Callable[[FunctionInverse], FunctionInverse]:
    """Register ``fn(node, graph, y, ctx) -> StepResult`` for functions (callables) or methods (their names)."""
    taken = [str(t) for t in targets if t in _FUNCTIONS]
    if taken and not replace:
        raise OptionError(
            f"register_function_inverse: expected targets without an inverse, got {', '.join(taken)}, which have "
            "one; pass replace=True to replace it"
        )

    def decorate(fn: FunctionInverse) -> FunctionInverse:
        for target in targets:
            _FUNCTIONS[target] = fn
        return fn

    return decorate


def _out_of_place(target: object) -> object:
    """``"mul_"`` -> ``"mul"``, ``torch.relu_`` -> ``torch.relu``: the twin of an in-place method or function."""
    if isinstance(target, str):
        return target[:-1] if target.endswith("_") and not target.startswith("_") else target
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_") and getattr(torch, name, None) is target:
        return getattr(torch, name[:-1], target)
    return target


def function_inverse_for(node: Node) -> FunctionInverse | None:
    """The registered inverse of a function or method node, if any (an in-place one takes its twin's: ``mul_``)."""
    if node.op not in ("function", "method"):
        return None
    found = _FUNCTIONS.get(node.target)
    return found if found is not None else _FUNCTIONS.get(_out_of_place(node.target))


def _dependent_position(node: Node, args: tuple[object, ...]) -> int:
    """Index of the argument that carries the image (the node's one dependent parent)."""
    parent = node.parents[0]
    if node.fx_node is None:
        return 0
    for i, arg in enumerate(node.fx_node.args):
        if getattr(arg, "name", None) == parent:
            return i
    raise UnsupportedLayerError(f"expected node {node.label!r} to take the image's value as an argument")


@register_function_inverse(
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "clone",
    "view_as",
    "reshape_as",
)
def _invert_reshape(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    shape = graph.nodes[node.parents[0]].tensor.shape[1:]
    return StepResult(y.reshape(y.shape[0], *shape), "reshape", True, closed_form=True)


@register_function_inverse(torch.permute, "permute")
def _invert_permute(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    args, kwargs = graph.arguments(node)
    dims = kwargs.get("dims", args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1])
    order = [int(str(d)) % y.ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    inverse = [order.index(i) for i in range(len(order))]
    return StepResult(y.permute(*inverse), "permute back", True, closed_form=True)


@register_function_inverse(torch.transpose, "transpose")
def _invert_transpose(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    args, _ = graph.arguments(node)
    return StepResult(y.transpose(int(str(args[1])), int(str(args[2]))), "transpose back", True, closed_form=True)


def _constant(node: Node, graph: Graph) -> tuple[object, int]:
    """The argument that does not depend on the image, and the position of the one that does."""
    args, kwargs = graph.arguments(node)
    position = _dependent_position(node, args)
    others = [a for i, a in enumerate(args) if i != position]
    other: object = others[0] if others else kwargs.get("other", kwargs.get("alpha", 0))
    if "alpha" in kwargs and position == 0:  # torch.add(x, c, alpha=a) adds a * c
        other = other * kwargs["alpha"]  # type: ignore[operator]  # a number or a tensor
    return other, position


@register_function_inverse(operator.add, torch.add, "add", operator.iadd)
def _invert_add(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    other, _ = _constant(node, graph)
    return StepResult(y - other, "subtract the constant", True, closed_form=True)  # type: ignore[operator]


@register_function_inverse(operator.sub, torch.sub, "sub", operator.isub)
def _invert_sub(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    other, position = _constant(node, graph)
    return StepResult((y + other) if position == 0 else (other - y), "undo the subtraction", True, closed_form=True)  # type: ignore[operator]


@register_function_inverse(operator.mul, torch.mul, "mul", operator.imul)
def _invert_mul(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    other, _ = _constant(node, graph)
    factor = torch.as_tensor(other, dtype=y.dtype, device=y.device)
    zero = factor == 0
    x = y / torch.where(zero, 1.0, factor)
    if bool(zero.any()):
        return StepResult(
            torch.where(zero, 0.0, x), "divide", False, closed_form=True, note="entries multiplied by zero are lost"
        )
    return StepResult(x, "divide", True, closed_form=True)


@register_function_inverse(operator.truediv, torch.div, "div", operator.itruediv)
def _invert_div(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    other, position = _constant(node, graph)
    if position != 0:
        return StepResult(
            torch.as_tensor(other, dtype=y.dtype, device=y.device) / y, "invert the quotient", True, closed_form=True
        )
    return StepResult(y * torch.as_tensor(other, dtype=y.dtype, device=y.device), "multiply", True, closed_form=True)


@register_function_inverse(operator.neg, torch.neg, "neg")
def _invert_neg(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    return StepResult(-y, "negate", True, closed_form=True)


@register_function_inverse(operator.getitem)
def _refuse_getitem(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    source = graph.nodes[node.parents[0]]
    if isinstance(source.value, (tuple, list)):
        raise UnsupportedLayerError(
            f"expected a value the layer-by-layer walk can follow, got node {source.label!r}, which splits a tensor "
            f"into {len(source.value)} parts that the walk cannot join back yet; use method='joint' (it matches "
            "the features of the whole forward pass), or reconstruct from a node before the split"
        )
    raise UnsupportedLayerError(
        f"expected a layer or function invertnet can invert, got {node.label!r}, which indexes a tensor (the entries "
        "it leaves out are lost); reconstruct from a node below it, or use method='joint'"
    )


@register_function_inverse(F.dropout, F.dropout2d, "dropout")
def _invert_dropout(node: Node, graph: Graph, y: torch.Tensor, ctx: InversionContext) -> StepResult:
    _, kwargs = graph.arguments(node)
    args, _ = graph.arguments(node)
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    if training:
        raise UnsupportedLayerError(
            f"expected dropout {node.label!r} with training=False, got training=True (it zeroes entries by chance); "
            "call it with training=self.training and put the model in eval mode"
        )
    return StepResult(y, "identity", True, closed_form=True)


def _arg(args: tuple[object, ...], kwargs: dict[str, object], i: int, name: str, default: object) -> object:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _int_pair(value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return pair(tuple(int(v) for v in value), "size")
    return pair(int(str(value)), "size")


def as_module(node: Node, graph: Graph) -> nn.Module | None:
    """The module equivalent of a functional call (``F.relu`` -> ``nn.ReLU()``, ``F.conv2d`` -> ``nn.Conv2d``), or None.

    The module is built once per node and kept on it, so factorisations cached per module are reused.
    """
    if node.op not in ("function", "method"):
        return None
    built = graph.functional_modules.get(node.name)
    if built is not None:
        return built
    module = _build_module(node, graph)
    if module is not None:
        graph.functional_modules[node.name] = module
    return module


def _build_module(node: Node, graph: Graph) -> nn.Module | None:
    target = _out_of_place(node.target)
    args, kwargs = graph.arguments(node)
    simple: dict[object, Callable[[], nn.Module]] = {
        F.relu: nn.ReLU,
        torch.relu: nn.ReLU,
        "relu": nn.ReLU,
        F.relu6: nn.ReLU6,
        torch.tanh: nn.Tanh,
        F.tanh: nn.Tanh,
        "tanh": nn.Tanh,
        torch.sigmoid: nn.Sigmoid,
        F.sigmoid: nn.Sigmoid,
        "sigmoid": nn.Sigmoid,
        F.silu: nn.SiLU,
        F.hardswish: nn.Hardswish,
    }
    if target in simple:
        return simple[target]()
    if target is F.leaky_relu:
        return nn.LeakyReLU(float(str(_arg(args, kwargs, 1, "negative_slope", 0.01))))
    if target is F.hardtanh:
        low = float(str(_arg(args, kwargs, 1, "min_val", -1.0)))
        return nn.Hardtanh(low, float(str(_arg(args, kwargs, 2, "max_val", 1.0))))
    if target is F.gelu:
        return nn.GELU(approximate=str(kwargs.get("approximate", "none")))
    if target is F.elu:
        return nn.ELU(float(str(_arg(args, kwargs, 1, "alpha", 1.0))))
    if target is F.max_pool2d:
        kernel = _int_pair(_arg(args, kwargs, 1, "kernel_size", 1))
        stride = _arg(args, kwargs, 2, "stride", None)
        return nn.MaxPool2d(
            kernel,
            _int_pair(stride) if stride not in (None, (), []) else None,
            _int_pair(_arg(args, kwargs, 3, "padding", 0)),
            _int_pair(_arg(args, kwargs, 4, "dilation", 1)),
            ceil_mode=bool(_arg(args, kwargs, 5, "ceil_mode", False)),
        )
    if target is F.avg_pool2d:
        stride = _arg(args, kwargs, 2, "stride", None)
        return nn.AvgPool2d(
            _int_pair(_arg(args, kwargs, 1, "kernel_size", 1)),
            _int_pair(stride) if stride not in (None, (), []) else None,
            _int_pair(_arg(args, kwargs, 3, "padding", 0)),
            bool(_arg(args, kwargs, 4, "ceil_mode", False)),
            bool(_arg(args, kwargs, 5, "count_include_pad", True)),
        )
    if target is F.adaptive_avg_pool2d:
        return nn.AdaptiveAvgPool2d(_int_pair(_arg(args, kwargs, 1, "output_size", 1)))
    if target is F.adaptive_max_pool2d:
        return nn.AdaptiveMaxPool2d(_int_pair(_arg(args, kwargs, 1, "output_size", 1)))
    if target is F.conv2d:
        return _conv_module(args, kwargs)
    if target is F.linear:
        weight = _arg(args, kwargs, 1, "weight", None)
        bias = _arg(args, kwargs, 2, "bias", None)
        if not isinstance(weight, torch.Tensor):
            return None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=isinstance(bias, torch.Tensor))
        linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
        if isinstance(bias, torch.Tensor):
            linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
        return linear.to(weight)
    return None


def _conv_module(args: tuple[object, ...], kwargs: dict[str, object]) -> nn.Module | None:
    x, weight = args[0], _arg(args, kwargs, 1, "weight", None)
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return None
    bias = _arg(args, kwargs, 2, "bias", None)
    padding = _arg(args, kwargs, 4, "padding", 0)
    groups = int(str(_arg(args, kwargs, 6, "groups", 1)))
    conv = nn.Conv2d(
        x.shape[1],
        weight.shape[0],
        pair(tuple(weight.shape[2:]), "kernel_size"),
        _int_pair(_arg(args, kwargs, 3, "stride", 1)),
        padding if isinstance(padding, str) else _int_pair(padding),
        _int_pair(_arg(args, kwargs, 5, "dilation", 1)),
        groups,
        bias=isinstance(bias, torch.Tensor),
    )
    conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if isinstance(bias, torch.Tensor):
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return conv.to(weight)
