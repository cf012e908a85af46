"""A run, a pipeline, a sweep turned into one launch plan; recipes shared as files; cost plans; offline prep."""
