"""Layer 5: the command line (click): parse, call the library, print, write files; no mathematics."""

from invertnet.cli.app import cli, main

__all__ = ["cli", "main"]
