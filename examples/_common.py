"""What every figure script shares: its command line (``--out DIR``, ``--small``) and the bundled photographs.

The scripts are sphinx-gallery examples: the documentation runs each with ``--small`` and shows the PNG files it
writes into ``--out`` (``docs/_ext/gallery.py``); run from the command line they make the full-size figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: The bundled photographs (``assets/``), found from any working directory.
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def arguments(description: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``--out DIR`` (created if missing) and ``--small``, plus whatever ``parser`` already declares."""
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the PNG [default: .]")
    parser.add_argument("--small", action="store_true", help="a small, fast run (what CI and the docs do)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args
