"""Run a model once and record the chain of leaf modules it executes.

:func:`trace` registers hooks on every leaf module (and on the requested layer, which may be a
container such as ``conv3`` or ``features``), runs the forward pass, and stops as soon as the
requested layer has produced its output, so the rest of the network is never evaluated. It
records, per leaf, the module, a copy of its input and the shape of its output: what inversion
needs. It then checks that the leaves form a chain, and refuses, naming the place, what a chain
walk cannot follow:

- a module whose input is not the previous module's output (a functional operation between
  modules, a skip connection, a branch);
- a module's output changed in place before the next module read it (``out += identity`` in a
  residual block: the tensor is the same object, its values are not);
- a module called twice in one forward pass (a reused activation);
- a requested layer whose output is not its last submodule's output.

A forward pass that fails on the input (e.g. an image smaller than a kernel) is reported with the
name of the module that was running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from invertnet._checks import require_4d
from invertnet.errors import (
    DTypeError,
    ForwardError,
    InvertnetError,
    LayerNotFoundError,
    ModelError,
    NotAChainError,
    ShapeError,
)

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


def require_module(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise :class:`ModelError` saying what came."""
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model: expected a torch.nn.Module, got {type(model).__name__}"
            + (f" {model!r}" if isinstance(model, str) else "")
            + "; build it first, e.g. invertnet.zoo.models.build_model('all-cnn-b-crelu')"
        )
    return model


def model_input(model: object, image: object) -> torch.Tensor:
    """The image, checked and moved to the model's device and dtype."""
    model = require_module(model)
    image = require_4d(image, "image")
    if not image.is_floating_point():
        raise DTypeError(
            f"image: expected a floating-point tensor, got {image.dtype}; convert it, e.g. image.double() / 255 for "
            "8-bit data, and pass the matching data_range"
        )
    if image.shape[0] == 0:
        raise ShapeError(f"image: expected at least one image, got a batch of 0 {tuple(image.shape)}")
    param = next(model.parameters(), None)
    if param is not None:
        image = image.to(device=param.device, dtype=param.dtype)
    return image


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named ``layer``; :class:`LayerNotFoundError` listing the valid names otherwise."""
    model = require_module(model)
    modules: dict[str, nn.Module] = dict(model.named_modules())
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
    >>> from invertnet.capture.chain import trace
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), CReLU())
    >>> [r.name for r in trace(net, torch.rand(1, 3, 8, 8), "1").records]
    ['0', '1']
    """
    model = require_module(model)
    target = find_layer(model, layer)
    image = model_input(model, image)
    records: list[LayerRecord] = []
    outputs: list[tuple[object, int]] = []  # each leaf's output and its version when produced
    inputs: list[tuple[object, int]] = []  # each leaf's input and its version when read
    names = {module: name for name, module in model.named_modules()}

    def pre_hook(module: nn.Module, args: tuple[object, ...]) -> None:
        first = args[0] if args else None
        inputs.append((first, _version(first)))
        copy = first.detach().clone() if isinstance(first, torch.Tensor) else torch.empty(0)
        records.append(LayerRecord(names[module], module, copy, ()))

    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if not list(module.children()):
            outputs.append((output, _version(output)))
            if isinstance(output, torch.Tensor):
                records[len(outputs) - 1].output_shape = tuple(output.shape[1:])
        if module is target:
            raise _LayerReachedError(output, _version(output))

    leaves = [m for m in model.modules() if not list(m.children())]
    hooked = leaves if target in leaves else [*leaves, target]
    target_output: object = None
    target_version = -1
    try:
        _run(model, image, {m: (pre_hook if m in leaves else None, hook) for m in hooked})
    except _LayerReachedError as stop:
        target_output, target_version = stop.args
    if target_output is None:
        raise LayerNotFoundError(f"layer {layer!r} did not run in the forward pass of {type(model).__name__}")
    _check_chain(records, inputs, outputs, image)
    expected: object = outputs[-1][0] if outputs else image
    version = outputs[-1][1] if outputs else _version(image)
    if target_output is not expected or not isinstance(expected, torch.Tensor):
        raise NotAChainError(
            f"expected {layer!r} to output the tensor its last submodule {records[-1].name!r} produced, got "
            f"{type(target_output).__name__} from elsewhere (a skip connection or a functional operation at the end "
            f"of {layer!r}); pick a layer whose forward is a chain of modules"
        )
    if target_version != version:
        raise NotAChainError(
            f"expected {layer!r} to output what its last submodule {records[-1].name!r} produced, but the tensor "
            f"was changed in place after it (e.g. 'out += identity' in a residual block); invertnet cannot follow "
            "in-place operations between modules: reconstruct from a layer inside the block"
        )
    return Trace(records, expected.detach().clone())


def _version(value: object) -> int:
    """The in-place version counter of a tensor (-1 for anything else, or tensors without one)."""
    if not isinstance(value, torch.Tensor) or value.is_inference():
        return -1
    return int(value._version)


def _check_chain(
    records: list[LayerRecord],
    inputs: list[tuple[object, int]],
    outputs: list[tuple[object, int]],
    image: torch.Tensor,
) -> None:
    """Refuse, naming the module, what a chain walk cannot follow (see the module docstring)."""
    seen: dict[nn.Module, str] = {}
    for record in records:
        if record.module in seen:
            raise NotAChainError(
                f"expected every module to run once, but {record.name!r} ({type(record.module).__name__}) ran twice "
                "(a module reused in the forward pass, as ResNet blocks reuse their ReLU); a chain walk cannot tell "
                "its two uses apart: give each use its own module, or reconstruct from a layer before the second use"
            )
        seen[record.module] = record.name
    expected: object = image
    version = _version(image)
    for i, (record, (given, given_version)) in enumerate(zip(records, inputs, strict=False)):
        before = "the image" if i == 0 else f"the output of {records[i - 1].name!r}"
        if given is not expected:
            raise NotAChainError(
                f"expected the forward pass to feed {before} into {record.name!r}, but something else came (a "
                "functional operation, a skip connection or a branch); invertnet inverts chains of modules: wrap "
                "such operations in modules, or pass a model with a sequential forward"
            )
        if given_version != version:
            raise NotAChainError(
                f"expected {record.name!r} to read {before} as it was produced, but it was changed in place in "
                "between (e.g. 'out += identity' or 'x.relu_()' in the forward); invertnet cannot follow in-place "
                "operations between modules: wrap them in modules, or reconstruct from a layer before them"
            )
        if i < len(outputs):
            expected, version = outputs[i]


def _run(
    model: nn.Module,
    image: torch.Tensor,
    hooks: dict[nn.Module, tuple[Callable[..., None] | None, Callable[..., None] | None]],
) -> None:
    """Run ``model(image)`` without gradients, with the given (pre-hook, hook) per module.

    A failure of the forward pass (not one of invertnet's own errors) becomes a :class:`ForwardError` naming
    the module that was running.
    """
    names = {module: name for name, module in model.named_modules() if name}
    running: list[str] = []
    handles = []

    def push(module: nn.Module, args: tuple[object, ...]) -> None:
        running.append(names[module])

    def pop(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if running:
            running.pop()

    for module in names:
        pre, post = hooks.get(module, (None, None))
        handles.append(module.register_forward_pre_hook(push))
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre))
        if post is not None:
            handles.append(module.register_forward_hook(post))
        handles.append(module.register_forward_hook(pop))
    if model in hooks:  # the model itself may be the target
        pre, post = hooks[model]
        if post is not None:
            handles.append(model.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(image)
    except (_LayerReachedError, InvertnetError):
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        where = f"in {running[-1]!r} ({type(dict(model.named_modules())[running[-1]]).__name__})" if running else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ForwardError(
            f"expected {type(model).__name__} to run on an input of shape {tuple(image.shape)}, but its forward "
            f"pass failed {where or 'outside its submodules'}: {first}; check the input size and channels"
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def list_layers(model: nn.Module, image: torch.Tensor) -> list[LayerInfo]:
    """Every named module that runs on ``image``, in the order it starts, with its output shape.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> [(i.name, i.output_shape) for i in list_layers(net, torch.rand(1, 3, 8, 8))]
    [('0', (4, 6, 6)), ('1', (4, 6, 6))]
    """
    image = model_input(model, image)
    started: list[nn.Module] = []
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def pre_hook(module: nn.Module, args: tuple[object, ...]) -> None:
        if module not in shapes:
            started.append(module)
            shapes[module] = ()

    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if isinstance(output, torch.Tensor):
            shapes[module] = tuple(output.shape[1:])

    named = [(name, module) for name, module in model.named_modules() if name]
    _run(model, image, {m: (pre_hook, hook) for _, m in named})
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
    images = model_input(model, images)
    modules = {name: find_layer(model, name) for name in layers}
    captured: dict[str, torch.Tensor] = {}

    def catcher(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            if isinstance(output, torch.Tensor):
                captured[name] = output.detach()

        return hook

    _run(model, images, {module: (None, catcher(name)) for name, module in modules.items()})
    missing = [name for name in layers if name not in captured]
    if missing:
        raise LayerNotFoundError(f"expected layers {missing} to output a tensor in the forward pass, got none")
    return captured
