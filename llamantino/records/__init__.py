"""Run, pipeline and sweep directories and the typed records in them: provenance, status, job states, curves."""
