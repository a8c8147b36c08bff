"""`python -m streamav` is the same as the `streamav` command."""

from streamav.cli import main

main()
