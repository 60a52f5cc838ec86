# Makes the configs importable as vae_compare.conf, so Hydra finds them from any folder.
