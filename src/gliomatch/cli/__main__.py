"""``python -m gliomatch.cli``: the same as the ``gliomatch`` command."""

from gliomatch.cli import main

main()
