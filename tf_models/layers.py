"""Custom Keras layers shared by the networks: batch norm with a choice of inference statistics,
dropout that can stay on at inference, and SegNet's max pooling / unpooling with switches.

Every layer is registered as Keras-serializable (package ``compnn``) and returns its constructor
arguments from ``get_config``, so a network saved with ``model.save("x.keras")`` reloads with plain
``keras.models.load_model`` (importing tf_models registers them), no ``custom_objects`` needed."""

import keras
import tensorflow as tf

BN_INFERENCE_MODES = ("image", "moving")
PACKAGE = "compnn"


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNorm(keras.layers.Layer):
    """Batch normalisation over NHWC whose inference statistics are selectable.

    Training always normalises with the statistics of the current batch and updates moving averages
    (``moving = momentum * moving + (1 - momentum) * batch``, the tf.layers/Keras convention).
    At inference ``inference_stats="moving"`` uses the moving averages (standard BN), and
    ``"image"`` uses each image's own spatial statistics: exactly what the Pix2Pix reference computes,
    since it keeps ``training=True`` at test time with batch size 1, yet independent of how a
    split is batched at export time.
    """

    def __init__(self, momentum=0.99, epsilon=1e-5, inference_stats="moving",
                 gamma_stddev=0.0, beta_init=0.0, **kwargs):
        super().__init__(**kwargs)
        if inference_stats not in BN_INFERENCE_MODES:
            raise ValueError(f"inference_stats must be one of {BN_INFERENCE_MODES}, got {inference_stats!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.inference_stats = inference_stats
        self.gamma_stddev = float(gamma_stddev)
        self.beta_init = float(beta_init)

    def get_config(self):
        return dict(super().get_config(), momentum=self.momentum, epsilon=self.epsilon,
                    inference_stats=self.inference_stats, gamma_stddev=self.gamma_stddev,
                    beta_init=self.beta_init)

    def build(self, input_shape):
        c = input_shape[-1]
        gamma_init = (keras.initializers.RandomNormal(1.0, self.gamma_stddev) if self.gamma_stddev > 0
                      else keras.initializers.Ones())
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer=gamma_init)
        self.beta = self.add_weight(name="beta", shape=(c,),
                                    initializer=keras.initializers.Constant(self.beta_init))
        self.moving_mean = self.add_weight(name="moving_mean", shape=(c,), initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(c,), initializer="ones",
                                               trainable=False)

    def call(self, x, training=False):
        if training:
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * var)
        elif self.inference_stats == "image":
            mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        else:
            mean, var = self.moving_mean, self.moving_variance
        return tf.nn.batch_normalization(x, mean, var, self.beta, self.gamma, self.epsilon)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dropout(keras.layers.Layer):
    """Dropout that is active in training and, when ``at_inference`` is set, also at inference
    (the Pix2Pix reference's behaviour, which makes its outputs random).

    Masks are stateless draws keyed by (seed, number of calls so far); the call counter is a layer
    weight, so it is checkpointed and a resumed training run draws the masks an uninterrupted one
    would have drawn."""

    def __init__(self, rate, at_inference=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.at_inference = bool(at_inference)
        self.seed = int(seed or 0)

    def get_config(self):
        return dict(super().get_config(), rate=self.rate, at_inference=self.at_inference, seed=self.seed)

    def build(self, input_shape):
        self.calls = self.add_weight(name="calls", shape=(), dtype="int64", initializer="zeros",
                                     trainable=False)

    def call(self, x, training=False):
        if not (training or self.at_inference):
            return x
        self.calls.assign_add(1)
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.calls, tf.int64)])
        keep = tf.random.stateless_uniform(tf.shape(x), key) >= self.rate
        return tf.where(keep, x / (1.0 - self.rate), tf.zeros_like(x))


def _pad_even(x):
    """Pads H and W up to even sizes with the most negative float, so that the last, clipped window
    of Caffe's ceil-mode pooling never selects a padded cell."""
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    return tf.pad(x, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]], constant_values=x.dtype.min)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxPoolWithSwitches(keras.layers.Layer):
    """2x2 stride-2 max pooling (Caffe ceil mode, so 45 -> 23) returning the pooled map and the
    switch of each window: 0..3 = the row-major offset of its maximum, the first one on ties."""

    def call(self, x):
        xp = _pad_even(x)
        n, h, w, c = tf.shape(xp)[0], tf.shape(xp)[1], tf.shape(xp)[2], tf.shape(xp)[3]
        win = tf.reshape(xp, [n, h // 2, 2, w // 2, 2, c])
        win = tf.reshape(tf.transpose(win, [0, 1, 3, 5, 2, 4]), [n, h // 2, w // 2, c, 4])
        switches = tf.argmax(win, axis=-1, output_type=tf.int32)
        # Selecting with the one-hot switch (not reduce_max) sends the gradient only to the argmax,
        # as Caffe does, even when a window holds ties.
        pooled = tf.reduce_sum(win * tf.one_hot(switches, 4, dtype=x.dtype), axis=-1)
        return pooled, switches


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxUnpool(keras.layers.Layer):
    """Inverse of MaxPoolWithSwitches: each value goes back to the cell its switch names, the other
    three cells of the window are zero; the result is cropped to the pre-pooling size."""

    def call(self, pooled, switches, like):
        n, h, w, c = tf.shape(pooled)[0], tf.shape(pooled)[1], tf.shape(pooled)[2], tf.shape(pooled)[3]
        win = pooled[..., None] * tf.one_hot(switches, 4, dtype=pooled.dtype)
        win = tf.transpose(tf.reshape(win, [n, h, w, c, 2, 2]), [0, 1, 4, 2, 5, 3])
        full = tf.reshape(win, [n, 2 * h, 2 * w, c])
        return full[:, : tf.shape(like)[1], : tf.shape(like)[2], :]


@keras.saving.register_keras_serializable(package=PACKAGE)
class LRN(keras.layers.Layer):
    """Caffe's across-channel local response normalisation: x / (1 + alpha/n * sum_n x^2)^beta."""

    def __init__(self, local_size=5, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        self.local_size, self.alpha, self.beta = int(local_size), float(alpha), float(beta)

    def get_config(self):
        return dict(super().get_config(), local_size=self.local_size, alpha=self.alpha, beta=self.beta)

    def call(self, x):
        return tf.nn.local_response_normalization(
            x, depth_radius=self.local_size // 2, bias=1.0, alpha=self.alpha / self.local_size,
            beta=self.beta)
