"""Models named by a string: the zoo, your own code, or torchvision (what ``--model`` accepts).

- ``"all-cnn-b-crelu"``, ``"resnet18"``, ...: a built-in model (:data:`invertnet.models.MODELS`), Gaussian
  filters from the seed;
- ``"package.module:callable"`` or ``"path/to/file.py:callable"``: a function (or class) of your own that
  returns an ``nn.Module``, called without arguments, like uvicorn's ``module:app``;
- ``"torchvision:NAME"``: ``torchvision.models.NAME(weights=None)`` when torchvision imports (an optional
  extra: ``pip install invertnet[torchvision]``).

``weights`` then loads a state dict into it (``torch.load(weights_only=True)`` or safetensors; strict: every
name and shape must match, and the error lists what does not).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from torch import nn

from invertnet.errors import ModelSpecError
from invertnet.io import load_weights
from invertnet.models import MODELS, build_model

__all__ = ["check_spec", "describe_spec", "load_model"]


def _import(module_name: str, spec: str) -> object:
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ModelSpecError(
                f"--model {spec!r}: expected a Python file before the colon, got {module_name!r}, which does not "
                "exist; give a path to a .py file or a dotted module name"
            )
        loader_spec = importlib.util.spec_from_file_location(f"_invertnet_user_{path.stem}", path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelSpecError(f"--model {spec!r}: expected an importable .py file, got {module_name!r}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[loader_spec.name] = module
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # as when the file runs as a script: its siblings import
            sys.path.insert(0, folder)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:  # the user's code may raise anything while importing
            raise ModelSpecError(
                f"--model {spec!r}: expected {module_name!r} to import, but it raised {type(err).__name__}: {err}"
            ) from None
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ModelSpecError(
            f"--model {spec!r}: expected an importable module before the colon, got {module_name!r}: {err}; "
            "check the name, or run from the directory that contains it"
        ) from None
    except Exception as err:  # the user's code may raise anything while importing
        raise ModelSpecError(
            f"--model {spec!r}: expected {module_name!r} to import, but it raised {type(err).__name__}: {err}"
        ) from None


def _torchvision(name: str, spec: str) -> nn.Module:
    try:
        import torchvision.models as models  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional
    except Exception as err:  # a CUDA build on a CPU torch fails with RuntimeError, not ImportError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelSpecError(
            f"--model {spec!r}: expected torchvision to import, but it does not here ({type(err).__name__}: "
            f"{first}); install the torchvision build that matches your torch, or use the built-in "
            f"definitions ({', '.join(n for n in MODELS if '_' in n or n.isalnum())})"
        ) from None
    builder = getattr(models, name, None)
    if not callable(builder):
        raise ModelSpecError(f"--model {spec!r}: expected a torchvision model name, got {name!r}")
    model = builder(weights=None)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"--model {spec!r}: torchvision's {name} returned {type(model).__name__}")
    return model


def check_spec(spec: str) -> None:
    """Refuse a zoo name that does not exist before any work (specs with a colon are checked when loaded)."""
    if ":" not in spec and spec not in MODELS:
        raise ModelSpecError(
            f"--model: expected a built-in model ({', '.join(MODELS)}), 'module:callable' or 'torchvision:NAME', "
            f"got {spec!r}"
        )


def load_model(spec: str, weights: str | os.PathLike[str] | None = None, seed: int = 0) -> nn.Module:
    """Build the model ``spec`` names (see the module docstring) and load ``weights`` into it.

    Raises
    ------
    ModelSpecError
        Unknown zoo name, missing module or file, missing attribute, not a callable, or a callable that
        does not return an ``nn.Module``; the message says which and how to fix it.
    WeightsError
        A weights file that cannot be read or does not fit (names and shapes listed).

    Examples
    --------
    >>> load_model("all-cnn-b-crelu").conv1.conv.out_channels
    96
    >>> load_model("torch.nn:Identity")
    Identity()
    """
    check_spec(spec)
    if ":" not in spec:
        model = build_model(spec, seed)
    else:
        module_name, _, attribute = spec.rpartition(":")
        if not module_name or not attribute:
            raise ModelSpecError(f"--model {spec!r}: expected 'module:callable', with both parts")
        if module_name == "torchvision":
            model = _torchvision(attribute, spec)
        else:
            module = _import(module_name, spec)
            factory = getattr(module, attribute, None)
            if factory is None:
                raise ModelSpecError(
                    f"--model {spec!r}: expected {module_name!r} to define {attribute!r}, got no such attribute"
                )
            if not callable(factory):
                raise ModelSpecError(
                    f"--model {spec!r}: expected {attribute!r} to be a callable that returns an nn.Module, got "
                    f"{type(factory).__name__}"
                )
            model = factory()
            if not isinstance(model, nn.Module):
                raise ModelSpecError(
                    f"--model {spec!r}: expected {attribute}() to return a torch.nn.Module, got {type(model).__name__}"
                )
    if weights is not None:
        load_weights(model, weights)
    return model


def describe_spec(spec: str) -> str:
    """One line for reports: the zoo's description, or the spec itself."""
    return MODELS[spec].description if spec in MODELS else spec
