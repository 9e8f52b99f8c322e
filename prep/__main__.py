"""``python -m prep``: the same as the ``prep`` command."""

from prep.cli import main

main()
