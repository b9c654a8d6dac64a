"""The API reference, driven by ``invertnet.__all__`` and one list of modules in ``docs/api.rst``.

Two directives and two hooks:

- ``.. api-modules::`` with one module or package a line (the only list to keep up to date). Before Sphinx reads
  the sources, :func:`write_module_pages` reads that list back from ``api.rst`` and writes one page per module
  (packages recursively, every submodule) into ``docs/api/``: the module's docstring, a table of its public names
  and each name documented once, in the module that defines it (``obj.__module__``; constants in the deepest
  module whose ``__all__`` names them). The directive itself renders the table of modules and a toctree.
- ``.. api-namespace:: invertnet`` renders the table of every name in ``invertnet.__all__``, by kind, each
  linking to where its module page documents it.
- :func:`resolve_alias` (``missing-reference``): a cross-reference to a re-exported name (``invertnet.crelu``,
  ``invertnet.pinv.SolveOptions``) resolves to the object's documented home.

After the package is reorganised, only the list in ``api.rst`` changes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

OUT = "api"  # folder of the generated module pages, under docs/ (git-ignored)
HOMES: dict[int, str] = {}  # id(obj) -> its documented name, filled before reading
LIST = re.compile(r"^\.\. api-modules::[^\n]*\n((?:\n|[ \t]+\S[^\n]*\n)*)", re.MULTILINE)


def listed_modules(srcdir: Path) -> list[str]:
    """The modules named under ``.. api-modules::`` in ``api.rst``."""
    match = LIST.search((srcdir / "api.rst").read_text())
    if match is None:
        raise RuntimeError("docs/api.rst: expected a '.. api-modules::' directive listing modules")
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith(":")]


def expand(names: list[str]) -> list[str]:
    """Every module named, and every submodule of a package named (``_private`` and ``__main__`` left out)."""
    out: list[str] = []
    for name in names:
        module = importlib.import_module(name)
        out.append(name)
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, name + "."):
                if not any(part.startswith("_") for part in info.name.split(".")):
                    out.append(info.name)
    return out


def summary(obj: Any) -> str:
    """The first line of a docstring."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return list(names)


def homes(modules: list[str]) -> dict[int, tuple[str, str]]:
    """``id(obj) -> (module, name)``: where each public object is documented."""
    found: dict[int, tuple[str, str]] = {}
    for name in sorted(modules, key=lambda m: -m.count(".")):  # deepest first: constants land where defined
        module = importlib.import_module(name)
        for attr in public_names(module):
            obj = getattr(module, attr)
            # classes and functions say where they are defined; any other object (a constant) does not
            defined = obj.__module__ if inspect.isclass(obj) or inspect.isroutine(obj) else None
            if inspect.ismodule(obj) or id(obj) in found:
                continue
            if defined == name or (defined is None and hasattr(module, "__all__") and attr in module.__all__):
                found[id(obj)] = (name, attr)
    return found


def kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def module_page(name: str, found: dict[int, tuple[str, str]]) -> str:
    module = importlib.import_module(name)
    here = [(attr, getattr(module, attr)) for attr in public_names(module)]
    elsewhere = [(a, found[id(o)]) for a, o in here if id(o) in found and found[id(o)] != (name, a)]
    here = [(a, o) for a, o in here if found.get(id(o)) == (name, a)]
    lines = [
        f".. This page is written by docs/_ext/apiref.py from {name}; edit the docstrings, not this file.",
        "",
        name,
        "=" * len(name),
        "",
        f".. automodule:: {name}",
        "   :no-members:",
        "",
        f".. currentmodule:: {name}",
        "",
    ]
    if here:
        lines += [".. autosummary::", ""] + [f"   {a}" for a, _ in here] + [""]
    if elsewhere:
        lines += [".. rubric:: Imported here", "", ".. list-table::", "   :widths: 30 70", ""]
        for attr, (module_name, home) in elsewhere:
            obj = getattr(importlib.import_module(module_name), home)
            lines += [
                f"   * - :py:obj:`{attr} <{module_name}.{home}>`",
                f"     - {summary(obj) if kind(obj) != 'data' else ''}",
            ]
        lines += [""]
    directive = {
        "class": "autoclass",
        "exception": "autoexception",
        "function": "autofunction",
        "data": "autodata",
    }
    for attr, obj in here:
        lines += [f".. {directive[kind(obj)]}:: {attr}"]
        if kind(obj) in ("class", "exception"):
            lines += ["   :members:", "   :show-inheritance:"]
        if kind(obj) == "data":
            lines += ["   :no-value:"]
        lines += [""]
    return "\n".join(lines)


def write_module_pages(app: Sphinx) -> None:
    """Write ``docs/api/<module>.rst`` for every listed module (only the pages whose text changed)."""
    srcdir = Path(app.srcdir)
    modules = expand(listed_modules(srcdir))
    found = homes(modules)
    folder = srcdir / OUT
    folder.mkdir(exist_ok=True)
    keep = set()
    for name in modules:
        path = folder / f"{name}.rst"
        keep.add(path)
        text = module_page(name, found)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for stale in folder.glob("*.rst"):
        if stale not in keep:
            stale.unlink()
    HOMES.clear()
    HOMES.update({key: f"{mod}.{attr}" for key, (mod, attr) in found.items()})


class ApiModules(SphinxDirective):
    """The table of listed modules (with their submodules) and a hidden toctree of their pages."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        modules = expand([line.strip() for line in self.content if line.strip()])
        rows = [".. list-table::", "   :widths: 35 65", ""]
        for name in modules:
            depth = name.count(".") - 1
            label = ("\u2003" * depth) + f":doc:`{name} <{OUT}/{name}>`"
            rows += [f"   * - {label}", f"     - {summary(importlib.import_module(name))}"]
        rows += ["", ".. toctree::", "   :hidden:", ""] + [f"   {OUT}/{name}" for name in modules]
        return self.parse_text_to_nodes("\n".join(rows))


class ApiNamespace(SphinxDirective):
    """Every name of ``package.__all__``, by kind, linking to where it is documented."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        groups: dict[str, list[str]] = {"class": [], "function": [], "exception": [], "data": []}
        for attr in package.__all__:
            obj = getattr(package, attr)
            role = {"class": "class", "exception": "exc", "function": "func", "data": "data"}[kind(obj)]
            target = f"{self.arguments[0]}.{attr}"
            text = summary(obj) if kind(obj) != "data" else ""
            groups[kind(obj)].append(f"   * - :py:{role}:`{attr} <{target}>`\n     - {text}")
        titles = {"class": "Classes", "function": "Functions", "exception": "Errors", "data": "Constants"}
        rows: list[str] = []
        for key, entries in groups.items():
            if entries:
                rows += [f".. rubric:: {titles[key]}", "", ".. list-table::", "   :widths: 30 70", ""]
                rows += [*entries, ""]
        return self.parse_text_to_nodes("\n".join(rows))


def resolve_alias(app: Sphinx, env: Any, node: Any, contnode: nodes.Node) -> nodes.Node | None:
    """Resolve ``invertnet.X`` (or any re-export, or an attribute of one) to the documented home of the object."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("invertnet."):
        return None
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        try:
            objects: list[Any] = [importlib.import_module(".".join(parts[:cut]))]
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(objects[-1], attr):
                return None
            objects.append(getattr(objects[-1], attr))
        for i in range(len(objects) - 1, 0, -1):
            home = HOMES.get(id(objects[i]))
            if home is not None:
                resolved = ".".join([home, *parts[cut + i :]])
                if resolved == target:
                    return None
                domain = env.get_domain("py")
                return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], resolved, node, contnode)
        return None
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", write_module_pages)
    app.connect("missing-reference", resolve_alias)
    app.add_directive("api-modules", ApiModules)
    app.add_directive("api-namespace", ApiNamespace)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
