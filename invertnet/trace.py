"""Run a model once and record the chain of leaf modules it executes.

:func:`trace` registers hooks on every leaf module (and on the requested layer, which may be a
container such as ``conv3`` or ``features``), runs the forward pass, and stops as soon as the
requested layer has produced its output, so the rest of the network is never evaluated. It
records, per leaf, the module, a copy of its input and the shape of its output: what inversion
needs. It then checks that the leaves form a chain (each one's input is the previous one's
output, the first one's input is the image): a forward pass with functional operations between
modules, skips or branches cannot be inverted layer by layer, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invertnet._checks import require_4d
from invertnet.errors import LayerNotFoundError, NotAChainError

__all__ = [
    "LayerInfo",
    "LayerRecord",
    "Trace",
    "find_layer",
    "layer_names",
    "layer_outputs",
    "list_layers",
    "trace",
]


@dataclass
class LayerRecord:
    """One executed leaf module: its qualified name, the module, a copy of its input, its output shape."""

    name: str
    module: nn.Module
    input: torch.Tensor
    output_shape: tuple[int, ...]


@dataclass
class Trace:
    """The chain of leaves up to the requested layer, and that layer's output (``features``)."""

    records: list[LayerRecord]
    features: torch.Tensor


@dataclass(frozen=True)
class LayerInfo:
    """A named module that ran: name, class name, output shape (one sample), whether it is a leaf."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    leaf: bool


class _LayerReachedError(Exception):
    """Raised by the hook of the requested layer to end the forward pass early."""


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule of ``model`` (containers and leaves), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def _model_input(model: nn.Module, image: object) -> torch.Tensor:
    """The image, checked and moved to the model's device and dtype."""
    image = require_4d(image, "image")
    param = next(model.parameters(), None)
    if param is not None:
        image = image.to(device=param.device, dtype=param.dtype)
    return image


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named ``layer``; :class:`LayerNotFoundError` listing the valid names otherwise."""
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        names = layer_names(model)
        shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
        raise LayerNotFoundError(f"expected a layer name of the model, got {layer!r}; valid names: {shown}")
    return modules[layer]


def trace(model: nn.Module, image: torch.Tensor, layer: str) -> Trace:
    """Run ``model`` on ``image`` up to (and including) ``layer`` and record the chain of leaves.

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential`` or any module whose forward is a chain of named submodules.
    image : torch.Tensor
        ``(N, C, H, W)``; moved to the model's device and dtype.
    layer : str
        A qualified module name (``"conv3"``, ``"conv3.act"``, ``"features.6"``).

    Returns
    -------
    Trace

    Raises
    ------
    LayerNotFoundError
        Unknown name (the message lists the valid ones) or a layer that did not run.
    NotAChainError
        The forward pass is not a chain of modules up to ``layer``.

    Examples
    --------
    >>> import torch
    >>> from invertnet import CReLU
    >>> from invertnet.trace import trace
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), CReLU())
    >>> [r.name for r in trace(net, torch.rand(1, 3, 8, 8), "1").records]
    ['0', '1']
    """
    target = find_layer(model, layer)
    image = _model_input(model, image)
    records: list[LayerRecord] = []
    outputs: list[object] = []
    inputs: list[object] = []
    names = {module: name for name, module in model.named_modules()}

    def pre_hook(module: nn.Module, args: tuple) -> None:
        first = args[0] if args else None
        inputs.append(first)
        copy = first.detach().clone() if isinstance(first, torch.Tensor) else torch.empty(0)
        records.append(LayerRecord(names[module], module, copy, ()))

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if not list(module.children()):
            outputs.append(output)
            if isinstance(output, torch.Tensor):
                records[len(outputs) - 1].output_shape = tuple(output.shape[1:])
        if module is target:
            raise _LayerReachedError(output)

    handles = []
    leaves = [m for m in model.modules() if not list(m.children())]
    for module in leaves:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(hook))
    if target not in leaves:
        handles.append(target.register_forward_hook(hook))
    target_output: object = None
    try:
        with torch.no_grad():
            model(image)
    except _LayerReachedError as stop:
        target_output = stop.args[0]
    finally:
        for handle in handles:
            handle.remove()
    if target_output is None:
        raise LayerNotFoundError(f"layer {layer!r} did not run in the forward pass of {type(model).__name__}")
    expected: object = image
    for record, given, produced in zip(records, inputs, outputs, strict=True):
        if given is not expected:
            before = (
                "the image" if record is records[0] else f"the output of {records[records.index(record) - 1].name!r}"
            )
            raise NotAChainError(
                f"expected the forward pass to feed {before} into {record.name!r}, but something else came (a "
                "functional operation, a skip connection or a branch); invertnet inverts chains of modules: wrap "
                "such operations in modules, or pass a model with a sequential forward"
            )
        expected = produced
    if target_output is not expected or not isinstance(expected, torch.Tensor):
        raise NotAChainError(
            f"expected {layer!r} to output the tensor its last submodule produced, got "
            f"{type(target_output).__name__} from elsewhere; pick a layer whose forward is a chain of modules"
        )
    return Trace(records, expected.detach().clone())


def list_layers(model: nn.Module, image: torch.Tensor) -> list[LayerInfo]:
    """Every named module that runs on ``image``, in the order it starts, with its output shape.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> [(i.name, i.output_shape) for i in list_layers(net, torch.rand(1, 3, 8, 8))]
    [('0', (4, 6, 6)), ('1', (4, 6, 6))]
    """
    image = _model_input(model, image)
    started: list[nn.Module] = []
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if module not in shapes:
            started.append(module)
            shapes[module] = ()

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            shapes[module] = tuple(output.shape[1:])

    named = [(name, module) for name, module in model.named_modules() if name]
    handles = [h for _, m in named for h in (m.register_forward_pre_hook(pre_hook), m.register_forward_hook(hook))]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    names = {module: name for name, module in named}
    return [LayerInfo(names[m], type(m).__name__, shapes[m], not list(m.children())) for m in started if m in names]


def layer_outputs(
    model: nn.Module, images: torch.Tensor, layers: list[str] | tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The outputs of the named ``layers`` on ``images`` (one forward pass, no gradients; any architecture).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> layer_outputs(net, torch.rand(2, 3, 8, 8), ["1"])["1"].shape
    torch.Size([2, 4, 6, 6])
    """
    images = _model_input(model, images)
    modules = {name: find_layer(model, name) for name in layers}
    captured: dict[str, torch.Tensor] = {}

    def catcher(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                captured[name] = output.detach()

        return hook

    handles = [module.register_forward_hook(catcher(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in captured]
    if missing:
        raise LayerNotFoundError(f"expected layers {missing} to output a tensor in the forward pass, got none")
    return captured
