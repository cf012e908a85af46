"""llamantino: declarative, reproducible, sweepable LLaMAntino training pipelines for Italian LLMs.

compose (Hydra, ``conf/``) -> render (``render/``) -> validate (Axolotl, ``validate.py``)
-> write (``rundir.py``) -> launch (``launch/``: local or SLURM).
"""

__version__ = "0.1.0"
