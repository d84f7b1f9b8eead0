"""``python -m tre.cli``."""

from tre.cli import main

main()
