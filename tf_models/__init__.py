"""TensorFlow side of compnn: the networks the paper explains (``pix2pix``: U-net generator and
PatchGAN; ``segnet``: SegNet-basic and full SegNet), their training loops and checkpoints (``train``),
and the export of their per-layer activations into compnn_py's ActivationStore (``export``).
Custom layers shared by the networks live in ``layers``."""
