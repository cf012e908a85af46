"""Axolotl loader for the ``text`` format: ``type: llamantino_plugin.text`` (see ``loading.py``)."""

from llamantino_plugin.formats import DataFormat
from llamantino_plugin.loading import loader

load = loader(DataFormat.text)
