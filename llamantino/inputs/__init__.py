"""What a run reads: its base model, its data, the prepared corpus, the tiny model; checked, nothing written."""
