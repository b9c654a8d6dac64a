"""The registry of layer inverses: what an inverse receives and returns, and how one is registered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from invertnet.activeset import Constraints
from invertnet.capture.chain import LayerRecord
from invertnet.capture.graph import keep_whole
from invertnet.errors import OptionError, TrainingModeError, UnsupportedLayerError
from invertnet.pinv import SolveOptions

__all__ = [
    "MAXPOOL_MODES",
    "RELU_MODES",
    "InversionContext",
    "LayerInverse",
    "StepResult",
    "has_inverse",
    "inverse_for",
    "register_inverse",
    "require_eval",
    "supported_layers",
]

#: How max-pooling is undone: with the forward pass's switches, or by a guess without them.
MAXPOOL_MODES = ("switches", "guess")

#: How ReLU, ReLU6 and Hardtanh are undone: through their active set (their output read as equations and
#: inequalities, solved with the layer below), or as the identity (the paper's baseline).
RELU_MODES = ("active_set", "identity")


@dataclass(frozen=True)
class InversionContext:
    """Settings handed to every layer inverse.

    Attributes
    ----------
    method : str
        The convolution route (``"auto"`` or a name of :data:`invertnet.pinv.ROUTES`).
    maxpool : str
        One of :data:`MAXPOOL_MODES`.
    options : SolveOptions
        Cutoffs and tolerances of the convolution routes.
    top : bool
        Whether the layer is the top one, whose output are the true features (CReLU outputs are then checked).
    relu : str, default "active_set"
        One of :data:`RELU_MODES`.
    exact : bool, default True
        ``y`` is proven exact (the features, or an estimate every step above returned exactly). A clipping
        activation reads its zeros as facts (inequalities) only then.
    constraints : Constraints, optional
        What the step above (a clipping activation read through its active set) knows of this layer's output:
        equations and inequalities. A layer that can solve them (Conv2d, Linear) does, and says so
        (:attr:`StepResult.resolves`); one that can carry them to its input (BatchNorm2d, Identity) hands them
        down (:attr:`StepResult.constraints`); any other ignores them and inverts ``y``.
    regularise : bool, default False
        ``y`` is not exact: a layer with a null space or small singular values solves a damped problem rather
        than amplifying the error of ``y`` (:func:`invertnet.reconstruct` with ``method="layers"``).
    probe : bool, default False
        Only a proven step is worth its full cost (the default's walk): an iterative route that cannot prove its
        result exact stops at a few iterations (an estimate for the completion's start).
    """

    method: str
    maxpool: str
    options: SolveOptions
    top: bool
    relu: str = "active_set"
    exact: bool = True
    constraints: Constraints | None = None
    regularise: bool = False
    probe: bool = False


@dataclass(frozen=True)
class StepResult:
    """What a layer inverse returns.

    Attributes
    ----------
    estimate : torch.Tensor
        The estimate of the layer's input.
    route : str
        How it was inverted (``"invert_crelu"``, ``"patch"``, ``"switches"``, ...).
    exact : bool
        The step returns the layer's input from its exact output (proven for this layer).
    closed_form : bool
        Computed without iteration (required: a new inverse says how it computes, nothing is assumed).
    note : str
        What is lost, or how the route was chosen.
    constraints : Constraints, optional
        Constraints on the layer's input handed to the layer below; ``estimate`` is then provisional (the walk
        replaces it once a layer below solves them).
    resolves : bool, default False
        The step solved the constraints of :attr:`InversionContext.constraints`: its estimate is consistent
        with every step that handed them down, and ``exact`` holds for that whole chain.
    determined : torch.Tensor, optional
        Where the step is not ``exact`` but returns part of its input exactly (e.g. a convolution that is injective
        on the pixels it reads and leaves others unread): a boolean mask, broadcastable to the estimate, of the
        entries it returns exactly from an exact output.
    """

    estimate: torch.Tensor
    route: str
    exact: bool
    closed_form: bool
    note: str = ""
    constraints: Constraints | None = None
    resolves: bool = False
    determined: torch.Tensor | None = None


LayerInverse = Callable[[nn.Module, LayerRecord, torch.Tensor, InversionContext], StepResult]
_INVERSES: dict[type[nn.Module], LayerInverse] = {}


def register_inverse(*types: type[nn.Module], replace: bool = False) -> Callable[[LayerInverse], LayerInverse]:
    """Register ``fn(module, record, y, ctx) -> StepResult`` as the inverse of modules of ``types``.

    Parameters
    ----------
    *types : type
        Module classes (subclasses inherit the inverse unless they have their own).
    replace : bool, default False
        Replace an inverse that is already registered for one of ``types``; without it that is refused.

    Examples
    --------
    >>> import torch
    >>> class Double(torch.nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> @register_inverse(Double)
    ... def _invert_double(module, record, y, ctx):
    ...     return StepResult(y / 2, "halve", exact=True, closed_form=True)
    >>> "Double" in supported_layers()
    True
    """
    taken = [t.__name__ for t in types if t in _INVERSES]
    if taken and not replace:
        raise OptionError(
            f"register_inverse: expected module types without an inverse, got {', '.join(taken)}, which have one; "
            "pass replace=True to replace it"
        )

    def decorate(fn: LayerInverse) -> LayerInverse:
        for t in types:
            _INVERSES[t] = fn
        return fn

    return decorate


def supported_layers() -> list[str]:
    """Class names of the modules the walks can invert."""
    return sorted(t.__name__ for t in _INVERSES)


def has_inverse(module: nn.Module) -> bool:
    """Whether ``module``'s class (or a base class) has a registered inverse."""
    return any(cls in _INVERSES for cls in type(module).__mro__)


def inverse_for(module: nn.Module, name: str = "") -> LayerInverse:
    """The registered inverse of ``module`` (by its class or the nearest base class that has one)."""
    for cls in type(module).__mro__:
        if cls in _INVERSES:
            return _INVERSES[cls]
    where = f" {name!r}" if name else ""
    raise UnsupportedLayerError(
        f"expected a layer invertnet can invert ({', '.join(supported_layers())}), got {type(module).__name__}"
        f"{where}; reconstruct from a layer below it, or register an inverse with invertnet.register_inverse"
    )


def require_eval(module: nn.Module, name: str) -> None:
    if module.training:
        raise TrainingModeError(
            f"expected {type(module).__name__} {name!r} in eval mode (in training mode it depends on the batch or "
            "on chance), got training mode; call model.eval() before reconstructing"
        )


keep_whole(has_inverse)  # the capture keeps every layer with an inverse whole (CReLU, AVR, users' own)
