"""``python -m llamantino``: see llamantino/app.py."""

from llamantino.app import main

main()
