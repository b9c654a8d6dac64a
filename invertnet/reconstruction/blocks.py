r"""Joins of a graph solved as blocks: residual fixed points (i-ResNet) and joint solves.

When a value depends on the image through several inputs (``y = x + F(x)``, ``y = g(x) * h(x)``), no single
layer inverse applies. The walk (:mod:`invertnet.reconstruction.walk`) takes the smallest block that encloses the join:
from the join's immediate dominator :math:`d` (every path from the image to the join passes through it) to the
join, :math:`y = f_B(u)` with :math:`u` the value at :math:`d`, and recovers :math:`u`:

- **residual with an identity skip**, :math:`y = u + F(u)`: when a Lipschitz bound of :math:`F` (the product of
  its layers' bounds: :math:`\sigma_{\max}` of convolutions, :math:`\max |\gamma| / \sqrt{v + \epsilon}` of
  BatchNorm, 1 for ReLU-like activations) is below 1, :math:`u \mapsto u + F(u)` is injective and the fixed
  point :math:`u_{k+1} = y - F(u_k)` converges to the unique preimage linearly at rate :math:`\mathrm{Lip}(F)`
  (Behrmann et al., ICML 2019, i-ResNet): exact, to the tolerance;
- **otherwise** a joint solve of the block (:func:`invertnet.reconstruction.joint.match_features`: L-BFGS, then
  Gauss-Newton with the activation pattern fixed), from :math:`u_0 = y` for a residual, else from zero: it matches
  :math:`f_B(u) = y`, which determines :math:`u` only where the block is injective, so it is never called exact.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import nn

from invertnet.capture.graph import Graph, Node
from invertnet.linalg.spectrum import sigma_max
from invertnet.nn.activations import CReLU
from invertnet.operators import ConvOperator
from invertnet.pinv import SolveOptions
from invertnet.reconstruction.joint import JointOptions, match_features

__all__ = ["BlockResult", "branch_lipschitz", "solve_block"]

_ADDS = (operator.add, operator.iadd, torch.add, "add")
#: Lipschitz bound 1: activations and identities.
_ONE_LIPSCHITZ = (nn.ReLU, nn.ReLU6, nn.Hardtanh, CReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Tanh)


@dataclass(frozen=True)
class BlockResult:
    """The solved value at the block's start, and how it was found."""

    estimate: torch.Tensor
    route: str
    exact: bool
    note: str


def _node_lipschitz(node: Node) -> float | None:
    module = node.module
    if module is None:
        return None
    if isinstance(module, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(float(module.negative_slope)))
    if isinstance(module, nn.BatchNorm2d) and not module.training and module.running_var is not None:
        scale = (module.running_var.double() + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach().double().abs()
        return float(scale.max())
    if isinstance(module, nn.Conv2d):
        h, w = node.first_input.shape[-2:]
        op = ConvOperator.from_conv(module, (h, w))
        double = ConvOperator(op.weight.detach().double(), op.input_size, op.stride, op.pad.pads, op.dilation,
                              op.groups, op.pad.mode)  # fmt: skip
        return sigma_max(double) * (1 + 1e-6)  # Lanczos converges from below: a margin for a bound
    return None


def branch_lipschitz(graph: Graph, start: str, end: str) -> float | None:
    """A Lipschitz bound of the map from node ``start`` to node ``end``, when it is a chain of known layers."""
    bound = 1.0
    name = end
    while name != start:
        node = graph.nodes[name]
        if len(node.parents) != 1:
            return None
        factor = _node_lipschitz(node)
        if factor is None:
            return None
        bound *= factor
        name = node.parents[0]
    return bound


def _fixed_point(
    graph: Graph, start: str, branch: str, y: torch.Tensor, bound: float, options: SolveOptions
) -> BlockResult:
    x = y.clone()
    cap = options.maxiter or 1000
    y_norm = float(y.norm()) or 1.0
    previous = math.inf
    rate = 0.0
    for iteration in range(1, cap + 1):
        step = y - graph.evaluate({start: x}, until=branch)
        change = float((step - x).norm()) / y_norm
        x = step
        if math.isfinite(previous) and previous > 0:
            rate = max(rate, change / previous)
        previous = change
        if change <= options.atol:
            note = (
                f"i-ResNet fixed point u = y - F(u): Lipschitz bound of F {bound:.3g}, observed rate {rate:.3g}, "
                f"{iteration} iterations"
            )
            return BlockResult(x, "fixed point", True, note)
    note = (
        f"i-ResNet fixed point u = y - F(u) not converged after {cap} iterations (last change {previous:.2g}, "
        f"Lipschitz bound {bound:.3g})"
    )
    return BlockResult(x, "fixed point", False, note)


def solve_block(
    graph: Graph, join: Node, start: str, y: torch.Tensor, options: SolveOptions, joint: JointOptions
) -> BlockResult:
    """Recover the value at node ``start`` from the value ``y`` of the node ``join`` it dominates."""
    residual_of = None
    bound = None
    if join.target in _ADDS and len(join.parents) == 2 and start in join.parents:
        others = [p for p in join.parents if p != start]
        residual_of = others[0] if others else None
    if residual_of is not None:
        bound = branch_lipschitz(graph, start, residual_of)
        if bound is not None and bound < 1:
            return _fixed_point(graph, start, residual_of, y, bound, options)
    value = graph.nodes[start].tensor
    x0 = y.clone() if residual_of is not None and y.shape == value.shape else torch.zeros_like(value)

    def block(u: torch.Tensor) -> torch.Tensor:
        return graph.evaluate({start: u}, until=join.name)

    result = match_features(block, y, x0, joint)
    residual = float(result.residual.max())
    why = (
        f"Lipschitz bound of the residual branch {bound:.3g} >= 1"
        if residual_of is not None and bound is not None
        else "no contractive residual form"
    )
    responses, unknowns = y[0].numel(), value[0].numel()
    determined = (
        f"the block has fewer responses ({responses}) than unknowns ({unknowns}): this is one of many preimages"
        if responses < unknowns
        else "the block determines its input only where it is injective (not proven)"
    )
    note = (
        f"joint solve of the block from {graph.nodes[start].label!r} ({why}): relative residual {residual:.2g} "
        f"after {int(result.evaluations.max())} L-BFGS evaluations and {int(result.iterations.max())} Gauss-Newton "
        f"steps; {determined}"
    )
    return BlockResult(result.image, "joint block", False, note)
