"""absl drivers that run the paper end to end: `python -m experiments.run --task=...`."""
