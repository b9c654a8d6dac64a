"""The house's layers: every room (a folder, or one of the few top-level modules) imports only from rooms below it.

The map is the package docstring's (``invertnet/__init__.py``) and ``docs/user_guide/library.md``'s; keep the three
in step. Within a layer the rooms are ordered too (``capture`` < ``inverses`` < ``reconstruction``), so no two
rooms import each other: every import, read from the source with :mod:`ast`, points down this order or stays in
its room.
"""

import ast
from pathlib import Path

import pytest

import invertnet

PACKAGE = Path(__file__).resolve().parents[1] / "invertnet"

#: Every room, bottom up: (layer, rank in the layer).
ROOMS = {
    # 0: what every layer uses
    "errors": (0, 0),
    "_checks": (0, 1),
    # 1: pure tensor code
    "nn": (1, 0),
    "operators": (1, 1),
    "metrics": (1, 2),
    # 2: linear algebra and routes
    "linalg": (2, 0),
    "pinv": (2, 1),
    "activeset": (2, 2),
    # 3: capture and reconstruction
    "capture": (3, 0),
    "inverses": (3, 1),
    "reconstruction": (3, 2),
    # 4: analyses, the zoo, evaluation, files, figures
    "io": (4, 0),
    "zoo": (4, 1),
    "analysis": (4, 2),
    "evaluation": (4, 3),
    "plotting": (4, 4),
    # 5: the command line
    "cli": (5, 0),
    "__main__": (5, 1),
    # the namespace: it imports every room, so no room may import it (``from invertnet import x``)
    "__init__": (6, 0),
}


def _room(module: str) -> str:
    """``invertnet.pinv.proofs.local`` -> ``pinv``."""
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The invertnet modules a source file imports (``from invertnet import x`` counts as the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "invertnet":
            found.add("invertnet.__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("invertnet."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("invertnet.")}
    return found


SOURCES = [p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    room = _room(_module_name(path))
    assert room in ROOMS, f"{room} has no place: add it to ROOMS, the package docstring and library.md"
    upward = {m for m in _imports(path) if ROOMS[_room(m)] > ROOMS[room]}
    assert not upward, f"{_module_name(path)} (room {room}, {ROOMS[room]}) imports from above: {sorted(upward)}"


def test_no_room_is_a_flat_module_but_the_base():
    """Folders by layer: the only top-level modules are the package's base (errors, checks, metrics, __main__)."""
    flat = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert flat == ["__main__", "_checks", "errors", "metrics"]
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(r for r in ROOMS if r not in [*flat, "__init__"])


def test_the_package_docstring_maps_every_room():
    doc = invertnet.__doc__ or ""
    missing = [room for room in ROOMS if room not in ("__main__", "__init__") and f"invertnet.{room}" not in doc]
    assert not missing, f"the package docstring leaves out {missing}"


def test_every_module_is_in_the_api_reference():
    """docs/api.rst lists the rooms; a package brings its submodules, so every module is documented."""
    listed = (PACKAGE.parent / "docs" / "api.rst").read_text()
    missing = [r for r in ROOMS if r not in ("__main__", "__init__", "_checks") and f"invertnet.{r}\n" not in listed]
    assert not missing, f"docs/api.rst leaves out {missing}"
