"""The one command: the verb table and Hydra composition (llamantino/cli/main.py); argument parsing only."""
