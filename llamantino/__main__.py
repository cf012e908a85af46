"""``python -m llamantino``: the one command (llamantino/cli/main.py)."""

from llamantino.cli.main import main

main()
