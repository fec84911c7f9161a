"""`python -m kdsearch ...`: the same CLI as the `kdsearch` command."""

from .cli import main

main()
