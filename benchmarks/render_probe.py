"""Benchmark 4 probe: compose and render the default job in-process; report whether torch got imported.

    python benchmarks/render_probe.py [--no-validate]
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamantino.config.compose import compose_config  # noqa: E402
from llamantino.stages import stage_for  # noqa: E402

validate = "--no-validate" not in sys.argv
cfg = compose_config(["launcher=dry"])
with tempfile.TemporaryDirectory() as tmp:
    stage_for(cfg).build(cfg, Path(tmp) / "run", overrides=[], choices={}, validate=validate)
print(json.dumps({"validate": validate, "torch_imported": "torch" in sys.modules}))
