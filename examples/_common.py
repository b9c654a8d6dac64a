"""What every figure script shares: its command line (``--out DIR``, ``--small``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the PNG [default: .]")
    parser.add_argument("--small", action="store_true", help="a small, fast run (what CI does)")
    return parser.parse_args()
