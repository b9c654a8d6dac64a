"""``python -m invertnet.cli``: the ``invertnet`` command."""

from invertnet.cli.app import main

main()
