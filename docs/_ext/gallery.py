"""How the gallery runs the scripts of ``examples/``: small, and showing the PNG files they write.

Each script takes ``--out DIR`` and ``--small`` (``examples/_common.py``), writes its figures as PNG files into
``DIR`` and returns its data. The gallery passes ``--small --out`` a scratch folder (:func:`reset_argv`), and
:func:`scrape_pngs`, sphinx-gallery's image scraper, shows every PNG that a code cell wrote there. Run from the
command line, the same scripts make the full-size figures that the pages show.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sphinx_gallery.scrapers import figure_rst

OUT = Path(tempfile.mkdtemp(prefix="invertnet-gallery-"))
atexit.register(shutil.rmtree, OUT, True)
_seen: dict[Path, int] = {}


def reset_argv(gallery_conf: dict[str, Any], script_vars: dict[str, Any]) -> list[str]:
    """The command line every example runs with in the gallery."""
    return ["--small", "--out", str(OUT)]


def scrape_pngs(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any], **kwargs: Any) -> str:
    """Show the PNG files written (or rewritten) into :data:`OUT` by the cell that just ran."""
    new = []
    for path in sorted(OUT.glob("*.png")):
        stamp = path.stat().st_mtime_ns
        if _seen.get(path) != stamp:
            _seen[path] = stamp
            new.append(path)
    names = []
    for path, target in zip(new, block_vars["image_path_iterator"], strict=False):
        shutil.copyfile(path, target)
        names.append(target)
    return figure_rst(names, gallery_conf["src_dir"])


#: The gallery's order: the paper's figure first, then the analyses, then the tools.
ORDER = (
    "reconstruction_row",
    "spectra",
    "relu_information",
    "trained_mobilenet",
    "evaluate_folder",
    "pairing_histograms",
    "train_pairing",
    "rademacher_table",
)


def order(filename: str) -> tuple[int, str]:
    """Sort key of an example file: its place in :data:`ORDER` (others after, by name)."""
    stem = Path(filename).stem
    return (ORDER.index(stem) if stem in ORDER else len(ORDER), stem)
