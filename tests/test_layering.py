"""The house's layers (design.md): every module imports only from its own layer or the layers below."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "invertnet"

#: Layer of every module (private helpers and errors are layer 0).
LAYERS = {
    "errors": 0,
    "_checks": 0,
    "activations": 1,
    "operators": 1,
    "spectral": 2,
    "solvers": 2,
    "preconditioners": 2,
    "windows": 2,
    "activeset": 2,
    "verified": 2,
    "proofs": 2,
    "pinv": 2,
    "spectrum": 2,
    "lbfgs": 2,
    "priors": 2,
    "absolute_value": 2,
    "joint": 2,
    "completion": 2,
    "metrics": 3,
    "trace": 3,
    "graph": 3,
    "blocks": 3,
    "walk": 3,
    "injectivity": 3,
    "inverses": 3,
    "reconstruct": 3,
    "compare": 3,
    "architectures": 4,
    "models": 4,
    "specs": 4,
    "pairing": 4,
    "information": 4,
    "bounds": 4,
    "invariance": 4,
    "sparsity": 4,
    "images": 4,
    "io": 4,
    "plotting": 4,
    "results": 4,
    "evaluate": 4,
    "cli": 5,
    "__main__": 5,
}


def _module_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("invertnet."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("invertnet.")}
    return found


SOURCES = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    module = _module_of(path)
    assert module in LAYERS, f"{module} has no layer: add it to LAYERS (and to the package docstring)"
    upward = {m: LAYERS[m] for m in _imports(path) if LAYERS.get(m, 0) > LAYERS[module]}
    assert not upward, f"invertnet.{module} (layer {LAYERS[module]}) imports from above: {upward}"
