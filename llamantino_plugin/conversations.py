"""Axolotl loader for the ``conversations`` format: ``type: llamantino_plugin.conversations`` (see ``loading.py``)."""

from llamantino_plugin.formats import DataFormat
from llamantino_plugin.loading import loader

load = loader(DataFormat.conversations)
