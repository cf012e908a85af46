"""llamantino_plugin: the Italian Axolotl plugin of llamantino.

List it in a recipe as ``plugins: [llamantino_plugin.plugin.LlamantinoPlugin]``. It brings the
LLaMAntino prompt templates (``templates/``), Italian dataset loaders
(``type: llamantino_plugin.text | instructions | conversations`` for SFT and continued pretraining,
``type: llamantino_plugin.dpo`` for preference pairs) and data accounting.
Importing the package is cheap: nothing heavy is imported until a loader runs.
"""

__version__ = "0.1.0"


def dpo(cfg, dataset_idx=0, **kwargs):
    """DPO strategy entry point; Axolotl resolves external DPO strategies from top-level names only."""
    from llamantino_plugin.preferences import load

    return load(cfg, dataset_idx, **kwargs)
