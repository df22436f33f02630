"""`python -m luodi` is the `luodi` command."""

from luodi.cli.main import main

main()
