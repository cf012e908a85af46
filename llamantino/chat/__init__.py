"""Talking to a trained model: in the terminal (terminal.py) or in a browser (web.py), one model class (model.py)."""
