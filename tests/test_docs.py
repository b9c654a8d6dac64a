"""The documentation's sources stay in step with the package: every module is in the API reference's one list,
and every relative link of the README and the user guide names a file that exists."""

import pkgutil
import re
from pathlib import Path

import invertnet

ROOT = Path(__file__).resolve().parents[1]


def _api_modules():
    text = (ROOT / "docs" / "api.rst").read_text()
    block = re.search(r"^\.\. api-modules::[^\n]*\n((?:\n|[ \t]+\S[^\n]*\n)*)", text, re.MULTILINE)
    assert block, "docs/api.rst: no '.. api-modules::' list"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_api_reference_lists_every_top_level_module():
    listed = _api_modules()
    modules = {f"invertnet.{m.name}" for m in pkgutil.iter_modules(invertnet.__path__) if not m.name.startswith("_")}
    assert sorted(modules - set(listed)) == [], "add them to the '.. api-modules::' list in docs/api.rst"
    assert sorted(set(listed) - modules) == [], "docs/api.rst lists modules that do not exist"
    assert len(listed) == len(set(listed))


def test_relative_links_name_files_that_exist():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    pages = [p for p in pages if "_build" not in p.parts and "_drafts" not in p.parts]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if not path or "://" in path or path.startswith("mailto:"):
                continue
            if "auto_examples/" in path:  # a gallery page, generated from examples/NAME.py
                name = path.rsplit("/", 1)[1]
                exists = name == "index" or (ROOT / "examples" / f"{name}.py").exists()
            else:
                exists = (page.parent / path).exists()
            if not exists:
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
