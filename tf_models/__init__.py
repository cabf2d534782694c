"""TensorFlow side of compnn: the networks the paper explains (``pix2pix``: U-net generator and
PatchGAN; ``segnet``: SegNet-basic and full SegNet), their training loops and checkpoints (``train``),
loading any trained network to explain (``loaders``: compnn run directories, Keras files,
pix2pix-tensorflow checkpoints), the architecture facts (``registry``) and the export of per-layer
activations into compnn_py's ActivationStore (``export``). Custom layers shared by the networks live
in ``layers``; importing this package registers them, so ``keras.models.load_model`` reloads a saved
compnn network with no ``custom_objects``."""

from . import layers  # noqa: F401  (registration of the custom layers is a side effect wanted here)
