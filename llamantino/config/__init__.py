"""The typed schema every module reads, composition with Hydra, the dataset registry, the training method."""
