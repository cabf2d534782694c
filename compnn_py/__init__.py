"""compnn: compositional nearest neighbours for pixel-level CNNs.

Framework-free side of the project: the matcher (`compnn_py.match`, over the C++ core), the on-disk
activation store (`compnn_py.store`), composition and analyses (`compnn_py.compose`), metrics
(`compnn_py.metrics`), pictures (`compnn_py.figures`) and datasets (`compnn_py.data`).
Nothing here imports TensorFlow.
"""

__version__ = "0.1.0"
