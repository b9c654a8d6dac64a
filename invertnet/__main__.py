"""``python -m invertnet`` runs the command line."""

from invertnet.cli import main

main()
