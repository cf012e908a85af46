"""Site config folders for every Hydra composition: ``$LLAMANTINO_CONFIG_PATH``."""
