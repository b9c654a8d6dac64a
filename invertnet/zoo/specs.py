"""Models named by a string: the zoo, your own code, or torchvision (what ``--model`` accepts).

- ``"all-cnn-b-crelu"``, ``"resnet18"``, ...: a built-in model (:data:`invertnet.zoo.models.MODELS`), Gaussian
  filters from the seed;
- ``"package.module:callable"`` or ``"path/to/file.py:callable"``: a function (or class) of your own that
  returns an ``nn.Module``, called without arguments, like uvicorn's ``module:app``. A dotted module is looked
  up in the current directory first, as ``python -m`` does; a file's folder is on ``sys.path`` while it imports
  (its siblings import), and both are taken off ``sys.path`` again once the model is built. Whatever the user's
  code raises while importing or building, ``sys.exit()`` included, is a :class:`ModelSpecError` naming it;
- ``"torchvision:NAME"``: ``torchvision.models.NAME(weights=None)`` when torchvision imports (an optional
  extra: ``pip install invertnet[torchvision]``).

``weights`` then loads a state dict into it (``torch.load(weights_only=True)`` or safetensors; strict: every
name and shape must match, and the error lists what does not).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from torch import nn

from invertnet.errors import ModelSpecError
from invertnet.io.files import load_weights
from invertnet.zoo.models import MODELS, build_model

__all__ = ["check_spec", "describe_spec", "load_model"]


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the block (as when a file runs as a script, or under ``python -m``).

    Taken off again after it (unless it was there before), so that a sibling folder named like a dependency
    (``safetensors/``) does not shadow it for the rest of the process.
    """
    if folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _raised(spec: str, what: str, err: BaseException) -> ModelSpecError:
    """The one-line error for user code that raised (or called ``sys.exit``) while ``what``."""
    if isinstance(err, SystemExit):
        return ModelSpecError(
            f"--model {spec!r}: expected {what} to return, but it called sys.exit({err.code!r}); remove the exit "
            "(guard script code with if __name__ == '__main__':)"
        )
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return ModelSpecError(f"--model {spec!r}: {what} raised {type(err).__name__}{': ' + first if first else ''}")


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
        try:
            loader_spec.loader.exec_module(module)
        except (Exception, SystemExit) as err:  # the user's code may raise anything while importing
            sys.modules.pop(loader_spec.name, None)
            raise _raised(spec, f"importing {module_name!r}", err) from None
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        where = (
            f"neither the current directory ({os.getcwd()}) nor the installed packages have {missing!r}"
            if missing.split(".")[0] == module_name.split(".")[0]
            else f"it imports {missing!r}, which is not installed"
        )
        raise ModelSpecError(
            f"--model {spec!r}: expected an importable module before the colon, got {module_name!r}: {where}; check "
            "the name, run from the folder that holds it, or give the file: --model path/to/file.py:callable"
        ) from None
    except (Exception, SystemExit) as err:  # the user's code may raise anything while importing
        raise _raised(spec, f"importing {module_name!r}", err) from None


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
    try:
        model = builder(weights=None)
    except Exception as err:  # torchvision's builders raise what their constructors raise
        raise _raised(spec, f"torchvision's {name}(weights=None)", err) from None
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
        Unknown zoo name, missing module or file, missing attribute, not a callable, a callable that needs
        arguments or does not return an ``nn.Module``, or user code that raised (or called ``sys.exit``) while
        importing or building the model; the message says which and how to fix it.
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
            built = _user_model(module_name, attribute, spec)
            if not isinstance(built, nn.Module):
                raise ModelSpecError(
                    f"--model {spec!r}: expected {attribute}() to return a torch.nn.Module, got {type(built).__name__}"
                )
            model = built
    if weights is not None:
        load_weights(model, weights)
    return model


def _user_model(module_name: str, attribute: str, spec: str) -> object:
    """Import ``module_name`` and call its ``attribute``; every failure of the user's code is the user's.

    A file's folder (or, for a dotted name, the current directory, as ``python -m`` has it) is on ``sys.path``
    while the module imports and the factory runs, and taken off after.
    """
    is_file = module_name.endswith(".py") or os.sep in module_name or "/" in module_name
    folder = str(Path(module_name).resolve().parent) if is_file else os.getcwd()
    with _on_path(folder):
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
        _require_no_arguments(factory, attribute, spec)
        try:
            return factory()
        except (Exception, SystemExit) as err:  # the user's code may raise anything
            raise _raised(spec, f"{attribute}()", err) from None


def _require_no_arguments(factory: Callable[..., object], attribute: str, spec: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: calling them says the rest
        return
    needed = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if needed:
        raise ModelSpecError(
            f"--model {spec!r}: expected {attribute!r} to be callable without arguments, got one that needs "
            f"{', '.join(needed)}; give them defaults, or add a function that calls it with yours, e.g. "
            f"def make(): return {attribute}(...)"
        )


def describe_spec(spec: str) -> str:
    """One line for reports: the zoo's description, or the spec itself."""
    return MODELS[spec].description if spec in MODELS else spec
