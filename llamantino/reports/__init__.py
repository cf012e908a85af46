"""What a user reads back from runs: status rows, a sweep's losses, evaluation scores, offline W&B runs."""
