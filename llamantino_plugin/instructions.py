"""Axolotl loader for the ``instructions`` format: ``type: llamantino_plugin.instructions`` (see ``loading.py``)."""

from llamantino_plugin.formats import DataFormat
from llamantino_plugin.loading import loader

load = loader(DataFormat.instructions)
