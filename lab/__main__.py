"""`python -m lab`: the same as `drbook-lab`."""

from lab.cli import main

main()
