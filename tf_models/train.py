"""Training of Pix2Pix and SegNet on numpy arrays: the tf.data input pipelines (Pix2Pix jitter),
tf.function train steps, checkpoints with resume in a run directory, SegNet validation metrics, and
`load_model` that rebuilds a trained network from its run directory.

A run directory holds ``config.json`` (architecture, builder arguments, training settings),
``checkpoints/`` (tf.train.CheckpointManager: the network under the key ``model``, plus the
discriminator and optimizer states), ``history.json`` (logged losses, validation scores) and
``tensorboard/`` (the same numbers as TensorBoard scalars: ``train/<loss>``, ``val/<score>``). A
checkpoint is written every ``checkpoint_every`` steps or ``checkpoint_secs`` seconds, whichever comes
first, and at the end. The data order and every random draw of the input pipeline are functions of
(seed, sample number), so a resumed run sees exactly the batches an uninterrupted one would have seen.
"""

import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from compnn_py.metrics import evaluate_segmentation
from compnn_py.progress import Progress

from . import pix2pix, segnet

CONFIG = "config.json"
HISTORY = "history.json"
CKPT_DIR = "checkpoints"
TENSORBOARD = "tensorboard"
MODEL_FILE = "model.keras"
CHECKPOINT_SECS = 60.0
JITTER_SCALE = 286 / 256  # the reference resizes 256 -> 286 before cropping back


# ---- input checks -------------------------------------------------------------------------------
def _images(a, name, channels=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {a.dtype}")
    if a.ndim != 4 or (channels is not None and a.shape[3] != channels) or len(a) == 0:
        raise ValueError(f"{name} must be a non-empty (N, H, W, {channels or 'C'}) array, got {a.shape}")
    return a


def _labels(a, name, num_classes, like):
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array of class ids (255 = ignore)")
    if a.shape != like.shape[:3]:
        raise ValueError(f"{name} must have shape {like.shape[:3]} to match the images, got {a.shape}")
    bad = (a >= num_classes) & (a != segnet.IGNORE)
    if bad.any():
        raise ValueError(f"{name} holds ids {np.unique(a[bad])[:5].tolist()} outside 0..{num_classes - 1} "
                         f"and {segnet.IGNORE} (ignore)")
    return a


def _check_checkpointing(checkpoint_every, checkpoint_secs):
    if not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if not isinstance(checkpoint_secs, (int, float)) or not checkpoint_secs > 0:
        raise ValueError(f"checkpoint_secs must be positive, got {checkpoint_secs!r}")


def _num_steps(steps, epochs, n, batch_size):
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    if steps is not None:
        if int(steps) <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        return int(steps)
    if int(epochs) <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    return int(epochs) * max(1, n // batch_size)


def sample_order(n, count, seed):
    """The first ``count`` image indices of an endless sequence of seeded per-epoch shuffles."""
    rng = np.random.default_rng(seed)
    reps = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count].astype(np.int32)


# ---- pipelines ----------------------------------------------------------------------------------
def jitter_pair(a, b, seed):
    """The reference's random jitter with one draw for both images: area-resize to 286/256 of the
    size, random crop back, random left-right flip. ``seed`` is a stateless seed (2 int32/int64)."""
    size = a.shape[0]
    scale = int(round(size * JITTER_SCALE))
    ab = tf.concat([tf.cast(a, tf.float32), tf.cast(b, tf.float32)], axis=-1)
    ab = tf.image.resize(ab, [scale, scale], method="area")
    off = tf.random.stateless_uniform([2], seed, 0, scale - size + 1, dtype=tf.int32)
    ab = ab[off[0]: off[0] + size, off[1]: off[1] + size]
    flip = tf.random.stateless_uniform([], tf.stack([seed[1], seed[0]]), 0, 1) < 0.5
    ab = tf.cond(flip, lambda: tf.reverse(ab, [1]), lambda: ab)
    return ab[..., : a.shape[-1]], ab[..., a.shape[-1]:]


def pix2pix_dataset(inputs, targets, *, batch_size=1, seed=0, jitter=True, start_step=0, num_steps):
    """Batches (input, target) as float32 in 0..255 for steps start_step..start_step+num_steps-1."""
    first, last = start_step * batch_size, (start_step + num_steps) * batch_size
    order = sample_order(len(inputs), last, seed)[first:]
    a, b = tf.constant(inputs), tf.constant(targets)

    def load(i, sample):
        x, y = tf.gather(a, i), tf.gather(b, i)
        if jitter:
            return jitter_pair(x, y, tf.stack([tf.constant(seed, tf.int64), sample]))
        return tf.cast(x, tf.float32), tf.cast(y, tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((order, np.arange(first, last, dtype=np.int64)))
    return ds.map(load, num_parallel_calls=2, deterministic=True).batch(batch_size).prefetch(2)


def augment_pair(image, labels, seed, *, flip=True, zoom=1.0, brightness=0.0):
    """One draw of SegNet's cheap augmentation for an (H, W, 3) float image and its (H, W) labels,
    from a stateless ``seed`` (2 ints): a random zoom in by a factor in [1, ``zoom``] (the image
    bilinear, the labels nearest-neighbour, then a random crop back to H x W), a left-right flip with
    probability 1/2 (image and labels together), and a brightness/contrast change of up to
    ``brightness`` (a fraction: x -> mean + c (x - mean) + b, clipped to 0..255; the labels keep)."""
    seed = tf.cast(seed, tf.int64)
    draw = lambda k, shape=(): tf.random.stateless_uniform(shape, seed + tf.constant([0, 1], tf.int64) * k)
    h, w = image.shape[0], image.shape[1]
    if zoom > 1.0:
        s = 1.0 + (zoom - 1.0) * draw(1)
        zh = tf.cast(tf.math.ceil(h * s), tf.int32)
        zw = tf.cast(tf.math.ceil(w * s), tf.int32)
        big = tf.image.resize(image, [zh, zw], method="bilinear")
        lab = tf.image.resize(labels[..., None], [zh, zw], method="nearest")[..., 0]
        oy = tf.cast(draw(2) * tf.cast(zh - h + 1, tf.float32), tf.int32)
        ox = tf.cast(draw(3) * tf.cast(zw - w + 1, tf.float32), tf.int32)
        image = tf.ensure_shape(big[oy: oy + h, ox: ox + w], [h, w, 3])
        labels = tf.ensure_shape(lab[oy: oy + h, ox: ox + w], [h, w])
    if flip:
        f = draw(4) < 0.5
        image = tf.cond(f, lambda: tf.reverse(image, [1]), lambda: image)
        labels = tf.cond(f, lambda: tf.reverse(labels, [1]), lambda: labels)
    if brightness > 0:
        c = 1.0 + brightness * (2.0 * draw(5) - 1.0)
        b = 255.0 * brightness * (2.0 * draw(6) - 1.0)
        mean = tf.reduce_mean(image)
        image = tf.clip_by_value(mean + c * (image - mean) + b, 0.0, 255.0)
    return image, labels


def segnet_dataset(inputs, labels, *, batch_size=4, seed=0, start_step=0, num_steps, flip=False, zoom=1.0,
                   brightness=0.0):
    """Shuffled (image float32 0..255, labels uint8) batches; with ``flip``/``zoom``/``brightness``
    each sample is augmented (augment_pair) by draws keyed by (seed, sample number), so a resumed
    run sees the batches an uninterrupted one would have seen. No augmentation: the tutorial's
    data layer."""
    first, last = start_step * batch_size, (start_step + num_steps) * batch_size
    order = sample_order(len(inputs), last, seed)[first:]
    a, b = tf.constant(inputs), tf.constant(labels)
    if not (flip or zoom > 1.0 or brightness > 0):
        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return ds.map(lambda i: (tf.cast(tf.gather(a, i), tf.float32), tf.gather(b, i))).prefetch(2)

    def load(i, sample):
        return augment_pair(tf.cast(tf.gather(a, i), tf.float32), tf.gather(b, i),
                            tf.stack([tf.constant(seed, tf.int64), sample]), flip=flip, zoom=zoom,
                            brightness=brightness)

    ds = tf.data.Dataset.from_tensor_slices((order, np.arange(first, last, dtype=np.int64)))
    return ds.map(load, num_parallel_calls=2, deterministic=True).batch(batch_size).prefetch(2)


def median_frequency_weights(labels, num_classes, ignore=None):
    """SegNet's class balancing (median frequency, Eigen & Fergus 2015): ``w_c = median(f) / f_c`` with
    ``f_c`` = pixels of class c / all labelled (non-ignore) pixels of the images in which c appears.
    ``labels`` uint8 (N, H, W). A class that never appears gets weight 0 and is left out of the median.
    Returns (weights list, {"pixels": per-class counts, "frequency": f}) so a run can record both."""
    ignore = segnet.IGNORE if ignore is None else ignore
    labels = np.asarray(labels)
    pixels = np.zeros(num_classes, np.int64)
    present_total = np.zeros(num_classes, np.int64)
    for img in labels.reshape(len(labels), -1):
        counts = np.bincount(img[img != ignore], minlength=num_classes)[:num_classes]
        pixels += counts
        present_total[counts > 0] += int(counts.sum())
    seen = pixels > 0
    if not seen.any():
        raise ValueError("labels hold no labelled pixel: cannot compute class frequencies")
    freq = np.where(seen, pixels / np.maximum(present_total, 1), 0.0)
    med = float(np.median(freq[seen]))
    weights = np.where(seen, med / np.where(seen, freq, 1.0), 0.0)
    return [float(w) for w in weights], {"pixels": pixels.tolist(), "frequency": freq.tolist()}


# ---- run directory --------------------------------------------------------------------------------
def _prepare_run(run_dir, config, resume, same=()):
    """Writes config.json for a fresh run, or checks that a resumed run is the same experiment
    (architecture, builder, seed, batch size and the ``same`` keys of ``config``)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if path.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run; pass resume=True or use a new run_dir")
        try:
            old = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: corrupt training config ({err}); delete {run_dir} to train afresh") from None
        # (A run written before a ``same`` key existed has none to compare.)
        for key in ("arch", "builder", "seed", "batch_size", *(k for k in same if k in old)):
            if old.get(key) != config[key]:
                raise ValueError(f"cannot resume {run_dir}: its {key} is {old.get(key)!r}, "
                                 f"this call asks for {config[key]!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, path)
    return run_dir


def _load_history(run_dir, step):
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return {"train": [], "val": []}
    hist = json.loads(path.read_text())
    # Entries logged after the restored checkpoint belong to work that was lost.
    return {k: [e for e in v if e["step"] <= step] for k, v in hist.items()}


def _save(manager, ckpt, run_dir, history):
    manager.save(checkpoint_number=int(ckpt.step.numpy()))
    tmp = Path(run_dir) / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, Path(run_dir) / HISTORY)


def _restore(ckpt, manager, resume, desc, total):
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        step = int(ckpt.step.numpy())
        if step < total:
            logging.info("%s: resuming at step %d of %d (%s)", desc, step, total, manager.latest_checkpoint)
        else:
            logging.info("%s: already trained to step %d (asked for %d)", desc, step, total)
    return int(ckpt.step.numpy())


# TensorBoard's scalar plugin reads a float32 scalar tensor summary tagged with this metadata; writing it
# with core tf.summary.write keeps the logs readable by TensorBoard without the tensorboard package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


def _log_scalars(writer, prefix, values, step):
    with writer.as_default():
        for key, value in values.items():
            tf.summary.write(f"{prefix}/{key}", tf.constant(float(value), tf.float32), step=int(step),
                             metadata=_SCALAR_METADATA)


def _set_seed(seed):
    """Seeds Python, numpy and TensorFlow, and asks TensorFlow for deterministic kernels (process-wide),
    so the same seed trains the same network on the same machine and thread count."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


# ---- Pix2Pix ------------------------------------------------------------------------------------
def train_pix2pix(inputs, targets, run_dir, *, steps=None, epochs=None, seed=0, ngf=64, ndf=64,
                  depth=None, batch_size=1, lr=2e-4, beta1=0.5, l1_weight=100.0, gan_weight=1.0,
                  jitter=True, innermost_norm=False, bn_inference="image", dropout_at_inference=False,
                  checkpoint_every=1000, checkpoint_secs=CHECKPOINT_SECS, log_every=50, resume=True,
                  progress=True, jit_compile=False):
    """Trains the Pix2Pix generator and PatchGAN on uint8 (N, S, S, C) pairs; returns
    (generator, history). ``steps`` or ``epochs`` is the total for the run (a resumed run continues
    to it). history["train"]: mean discrim/GAN/L1 losses and steps/s per ``log_every`` steps.
    Checkpoints every ``checkpoint_every`` steps or ``checkpoint_secs`` seconds, and at the end."""
    _check_checkpointing(checkpoint_every, checkpoint_secs)
    inputs = _images(inputs, "inputs")
    targets = _images(targets, "targets")
    n, size = len(inputs), inputs.shape[1]
    if inputs.shape[2] != size or targets.shape[:3] != inputs.shape[:3]:
        raise ValueError(f"inputs must be square and targets the same size: {inputs.shape} vs {targets.shape}")
    total = _num_steps(steps, epochs, n, batch_size)
    builder = dict(image_size=int(size), in_channels=int(inputs.shape[3]),
                   out_channels=int(targets.shape[3]), ngf=int(ngf),
                   depth=int(depth or pix2pix.default_depth(size)), innermost_norm=bool(innermost_norm),
                   bn_inference=bn_inference, dropout_at_inference=bool(dropout_at_inference))
    config = dict(arch="pix2pix", builder=builder, seed=int(seed), batch_size=int(batch_size),
                  discriminator=dict(ndf=int(ndf)), lr=lr, beta1=beta1, l1_weight=l1_weight,
                  gan_weight=gan_weight, jitter=bool(jitter), steps=total)
    run_dir = _prepare_run(run_dir, config, resume)

    _set_seed(seed)
    gen = pix2pix.build_generator(**builder, seed=int(seed))
    disc = pix2pix.build_discriminator(size, builder["in_channels"], builder["out_channels"], ndf=int(ndf),
                                       bn_inference=bn_inference)
    g_opt = keras.optimizers.Adam(lr, beta_1=beta1)
    d_opt = keras.optimizers.Adam(lr, beta_1=beta1)
    g_opt.build(gen.trainable_variables)
    d_opt.build(disc.trainable_variables)
    ckpt = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), model=gen, discriminator=disc,
                               g_opt=g_opt, d_opt=d_opt)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / CKPT_DIR), max_to_keep=2)
    start = _restore(ckpt, manager, resume, "pix2pix", total)
    history = _load_history(run_dir, start)
    if start >= total:
        return gen, history

    @tf.function(jit_compile=jit_compile)
    def train_step(x, t):
        x_pre = x / 127.5 - 1.0
        t_pre = t / 127.5 - 1.0
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            out = gen(x, training=True)
            p_real = disc([x_pre, t_pre], training=True)
            p_fake = disc([x_pre, out], training=True)
            d_loss = pix2pix.discriminator_loss(p_real, p_fake)
            g_loss, gan, l1 = pix2pix.generator_losses(p_fake, out, t_pre, l1_weight, gan_weight)
        d_opt.apply_gradients(zip(d_tape.gradient(d_loss, disc.trainable_variables),
                                  disc.trainable_variables))
        g_opt.apply_gradients(zip(g_tape.gradient(g_loss, gen.trainable_variables),
                                  gen.trainable_variables))
        return tf.stack([d_loss, gan, l1])

    data = pix2pix_dataset(inputs, targets, batch_size=batch_size, seed=seed, jitter=jitter,
                           start_step=start, num_steps=total - start)
    keys = ("discrim_loss", "gen_loss_GAN", "gen_loss_L1")
    _loop(data, train_step, ckpt, manager, run_dir, history, start, total, keys, checkpoint_every,
          checkpoint_secs, log_every, progress, "pix2pix")
    return gen, history


def _loop(data, train_step, ckpt, manager, run_dir, history, start, total, keys, checkpoint_every,
          checkpoint_secs, log_every, progress, desc, validate=None, val_every=None, on_validate=None):
    """Runs the steps, logging mean losses and training steps/s (validation and checkpoint time
    excluded) every ``log_every`` steps, validating every ``val_every`` steps and at the end, and
    checkpointing every ``checkpoint_every`` steps or ``checkpoint_secs`` seconds of wall time."""
    acc, count, busy = np.zeros(len(keys)), 0, 0.0
    bar = Progress(total=total, initial=start, desc=desc, disable=not progress, unit="step")
    writer = tf.summary.create_file_writer(str(Path(run_dir) / TENSORBOARD))
    last_save = time.monotonic()
    batches = iter(data)
    try:
        while int(ckpt.step.numpy()) < total:
            t0 = time.perf_counter()
            losses = train_step(*next(batches)).numpy()
            busy += time.perf_counter() - t0
            if not np.isfinite(losses).all():
                raise FloatingPointError(f"{desc}: non-finite loss {dict(zip(keys, losses))} at step "
                                         f"{int(ckpt.step.numpy()) + 1}; lower the learning rate")
            ckpt.step.assign_add(1)
            step = int(ckpt.step.numpy())
            acc += losses
            count += 1
            bar.update(1)
            if count == log_every or step == total:
                entry = {"step": step, **{k: float(v) for k, v in zip(keys, acc / count)},
                         "steps_per_sec": count / busy}
                history["train"].append(entry)
                _log_scalars(writer, "train", {k: v for k, v in entry.items() if k != "step"}, step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k != "step"})
                acc, count, busy = np.zeros(len(keys)), 0, 0.0
            if validate is not None and (step % val_every == 0 or step == total):
                history["val"].append({"step": step, **validate()})
                if on_validate is not None:
                    on_validate(history["val"][-1])
                _log_scalars(writer, "val", {k: v for k, v in history["val"][-1].items() if k != "step"}, step)
                bar.write(f"{desc} step {step}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in history["val"][-1].items() if k != "step"))
            # Wall time as well as steps: a slow run (large images, CPU) must not lose more than about
            # checkpoint_secs of work to an interrupt.
            if step % checkpoint_every == 0 or step == total or time.monotonic() - last_save >= checkpoint_secs:
                _save(manager, ckpt, run_dir, history)
                writer.flush()
                last_save = time.monotonic()
    finally:
        writer.close()
        bar.close()


# ---- SegNet -------------------------------------------------------------------------------------
_SEGNET_BUILDERS = {"basic": segnet.build_segnet_basic, "vgg16": segnet.build_segnet_vgg16}
_SEGNET_LR = {"basic": 0.1, "vgg16": 0.001}  # the tutorial's solver base_lr


def recompute_bn_statistics(model, inputs, *, batch_size=4, progress=True):
    """Replaces every BatchNorm's moving mean/variance by the average of its batch statistics over
    ``inputs`` (uint8 (N, H, W, 3)), as SegNet's compute_bn_statistics step does after training:
    moving averages taken while the weights were still changing fast (SGD at lr 0.1) are a poor
    estimate of the population statistics. Batches run in training mode; no weight changes.

    Each batch runs as one traced call with the layers' momentum at 0 (so a layer's moving values
    become that batch's statistics), and the batch statistics are averaged in float64 outside."""
    from .layers import BatchNorm

    layers = [layer for layer in model.layers if isinstance(layer, BatchNorm)]
    if not layers:
        raise ValueError(f"model {model.name!r} has no BatchNorm layers")
    saved = [layer.momentum for layer in layers]
    starts = range(0, len(inputs) - batch_size + 1, batch_size) if len(inputs) >= batch_size else [0]
    sums = [[np.zeros(layer.moving_mean.shape, np.float64) for _ in range(2)] for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # read when the call is traced: moving = this batch's statistics
        forward = tf.function(lambda x: model(x, training=True))
        count = 0
        for start in Progress(starts, desc="BN statistics", unit="batch", disable=not progress):
            forward(tf.constant(inputs[start: start + batch_size], tf.float32))
            for layer, (mean, var) in zip(layers, sums):
                mean += layer.moving_mean.numpy()
                var += layer.moving_variance.numpy()
            count += 1
        for layer, (mean, var) in zip(layers, sums):
            layer.moving_mean.assign((mean / count).astype(np.float32))
            layer.moving_variance.assign((var / count).astype(np.float32))
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m
    return model


def label_predictor(model, batch_size=8):
    """A function: uint8 images (N, H, W, 3) -> uint8 (N, H, W) argmax labels of a SegNet in
    inference mode (traced once, so it is cheap to call repeatedly, e.g. for validation)."""
    infer = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32))

    def predict(inputs):
        return np.concatenate([infer(tf.constant(inputs[i: i + batch_size], tf.float32)).numpy()
                               for i in range(0, len(inputs), batch_size)]).astype(np.uint8)
    return predict


BEST_DIR = "best"          # the checkpoint with the best validation score (train_segnet(keep="best_val"))
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
KEEP = ("last", "best_val")
BEST_KEY = "mean_iou"


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps, then a cosine decay to ``lr * floor`` at
    ``total`` steps (a function of the optimizer's step count, so it resumes with the checkpoint)."""

    def __init__(self, lr, total, warmup=0, floor=0.0):
        self.lr, self.total, self.warmup, self.floor = float(lr), int(total), int(warmup), float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.lr * (step + 1.0) / max(self.warmup, 1)
        t = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        cos = self.lr * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(np.pi * t)))
        return tf.where(step < self.warmup, warm, cos)

    def get_config(self):
        return dict(lr=self.lr, total=self.total, warmup=self.warmup, floor=self.floor)


def _segnet_optimizer(optimizer, lr, schedule, total, warmup, momentum):
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    rate = lr if schedule == "constant" else WarmupCosine(lr, total, warmup=min(int(warmup), total))
    if optimizer == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.SGD(rate, momentum=momentum)


def train_segnet(inputs, labels, run_dir, *, val=None, arch="basic", num_classes=11,
                 class_weights=segnet.CAMVID_CLASS_WEIGHTS, steps=None, epochs=None, batch_size=4,
                 lr=None, momentum=0.9, weight_decay=5e-4, optimizer="sgd", lr_schedule="constant",
                 warmup_steps=0, flip=False, zoom=1.0, brightness=0.0, keep="last", val_bn_images=0, seed=0,
                 bn_inference="moving", val_every=None, checkpoint_every=1000,
                 checkpoint_secs=CHECKPOINT_SECS, log_every=20, resume=True, progress=True,
                 jit_compile=False):
    """Trains SegNet (``arch`` "basic" or "vgg16") with the class-weighted loss and L2 weight decay
    on conv kernels. Defaults are the tutorial's solver (SGD with momentum at its base_lr, constant
    rate, no augmentation, the last checkpoint kept); ``optimizer="adam"``, ``lr_schedule="cosine"``
    (linear warmup over ``warmup_steps``, cosine decay to 0 at the end), ``flip``/``zoom``/
    ``brightness`` (augment_pair) and ``keep="best_val"`` (the checkpoint with the best validation
    mIoU is kept in ``best/`` and is the network returned and loaded) and ``val_bn_images`` form
    the camvid preset's recipe. ``val_bn_images`` > 0: before each validation the BN statistics are
    recomputed (recompute_bn_statistics) over that many evenly spaced training images, so the
    network is scored (and the best one picked) as it will be used after finish_training; moving
    averages taken while Adam moves the weights score it far lower (measured on CamVid at
    90x120: val mIoU 0.21 with them, 0.36 recomputed, same weights). Training itself only
    uses batch statistics, so this changes no weight. ``class_weights``: per-class loss weights, or "median_frequency" to compute them from
    ``labels`` (median_frequency_weights; recorded in config.json). ``labels`` uint8 (N, H, W),
    255 = ignore. With ``val=(images, labels)`` scores pixel accuracy, mean class accuracy and mIoU
    (void ignored) every ``val_every`` steps (default: every epoch) and at the end.
    Returns (model, history)."""
    if arch not in _SEGNET_BUILDERS:
        raise ValueError(f"arch must be one of {sorted(_SEGNET_BUILDERS)}, got {arch!r}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if keep == "best_val" and val is None:
        raise ValueError('keep="best_val" needs val=(images, labels)')
    if not (float(zoom) >= 1.0 and 0.0 <= float(brightness) < 1.0):
        raise ValueError(f"zoom must be >= 1 and brightness in [0, 1), got {zoom!r}, {brightness!r}")
    _check_checkpointing(checkpoint_every, checkpoint_secs)
    inputs = _images(inputs, "inputs", 3)
    labels = _labels(labels, "labels", num_classes, inputs)
    if val is not None:
        if len(val) != 2:
            raise ValueError("val must be a pair (images, labels) or None")
        val = (_images(val[0], "val[0]", 3), _labels(val[1], "val[1]", num_classes, val[0]))
    balancing = None
    if isinstance(class_weights, str):
        if class_weights != "median_frequency":
            raise ValueError(f'class_weights must be numbers or "median_frequency", got {class_weights!r}')
        class_weights, balancing = median_frequency_weights(labels, num_classes)
    if len(class_weights) != num_classes or not np.all(np.isfinite(class_weights)):
        raise ValueError(f"class_weights must be {num_classes} finite numbers, got {class_weights!r}")
    total = _num_steps(steps, epochs, len(inputs), batch_size)
    lr = _SEGNET_LR[arch] if lr is None else float(lr)
    builder = dict(input_shape=[int(s) for s in inputs.shape[1:]], num_classes=int(num_classes),
                   bn_inference=bn_inference)
    config = dict(arch=f"segnet_{arch}", builder=builder, seed=int(seed), batch_size=int(batch_size),
                  lr=lr, momentum=momentum, weight_decay=weight_decay, optimizer=optimizer,
                  lr_schedule=lr_schedule, warmup_steps=int(warmup_steps),
                  augment=dict(flip=bool(flip), zoom=float(zoom), brightness=float(brightness)), keep=keep,
                  val_bn_images=int(val_bn_images),
                  class_weights=[float(w) for w in class_weights], steps=total)
    if balancing is not None:
        config["class_balancing"] = dict(method="median_frequency", **balancing)
    # A recipe run resumes only as the same recipe; a decaying schedule fixes the length as well.
    same = ("optimizer", "lr_schedule", "augment", "keep", "class_weights")
    run_dir = _prepare_run(run_dir, config, resume, same + (("steps",) if lr_schedule != "constant" else ()))

    _set_seed(seed)
    model = _SEGNET_BUILDERS[arch](**builder)
    opt = _segnet_optimizer(optimizer, lr, lr_schedule, total, warmup_steps, momentum)
    opt.build(model.trainable_variables)
    ckpt = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), model=model, opt=opt)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / CKPT_DIR), max_to_keep=2)
    best_ckpt = tf.train.Checkpoint(step=ckpt.step, model=model)
    best_manager = tf.train.CheckpointManager(best_ckpt, str(run_dir / BEST_DIR), max_to_keep=1)
    start = _restore(ckpt, manager, resume, f"segnet_{arch}", total)
    history = _load_history(run_dir, start)
    if start < total:
        weights = [float(w) for w in class_weights]
        variables = model.trainable_variables
        decays = [weight_decay if v.name == "kernel" else 0.0 for v in variables]

        @tf.function(jit_compile=jit_compile)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = segnet.weighted_cross_entropy(model(x, training=True), y, weights)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients([(g + d * v, v) if d else (g, v) for g, v, d in zip(grads, variables, decays)])
            return tf.stack([loss])

        predict = label_predictor(model)

        bn_rows = (np.unique(np.linspace(0, len(inputs) - 1, min(int(val_bn_images), len(inputs))).round()
                             .astype(int)) if val_bn_images else None)

        def validate():
            if bn_rows is not None:
                recompute_bn_statistics(model, inputs[bn_rows], batch_size=batch_size, progress=False)
            pred = predict(val[0])
            s = evaluate_segmentation(pred, val[1], num_classes)
            return {k: s[k] for k in ("pixel_accuracy", "mean_class_accuracy", BEST_KEY)}

        def keep_best(entry):
            # Ties keep the earlier network; the step is the checkpoint's number, so best/ names it.
            if all(entry[BEST_KEY] > e[BEST_KEY] for e in history["val"][:-1]):
                best_manager.save(checkpoint_number=int(entry["step"]))

        data = segnet_dataset(inputs, labels, batch_size=batch_size, seed=seed, start_step=start,
                              num_steps=total - start, flip=flip, zoom=zoom, brightness=brightness)
        _loop(data, train_step, ckpt, manager, run_dir, history, start, total, ("loss",), checkpoint_every,
              checkpoint_secs, log_every, progress, f"segnet_{arch}",
              validate=validate if val is not None else None,
              val_every=int(val_every or max(1, len(inputs) // batch_size)),
              on_validate=keep_best if keep == "best_val" else None)
    if keep == "best_val":
        restore_best(model, run_dir)
        history["best"] = best_entry(history)
    return model, history


def best_entry(history):
    """The validation entry with the best mIoU (the first of equals), or None without validation."""
    best = None
    for e in history.get("val", []):
        if best is None or e[BEST_KEY] > best[BEST_KEY]:
            best = e
    return best


def restore_best(model, run_dir):
    """Restores the weights of ``run_dir``'s best-validation checkpoint into ``model``; returns its path."""
    path = tf.train.latest_checkpoint(str(Path(run_dir) / BEST_DIR))
    if path is None:
        raise FileNotFoundError(f"no best-validation checkpoint in {Path(run_dir) / BEST_DIR}")
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return path


# ---- the finished network ---------------------------------------------------------------------------
FINISHED_BN = "bn_statistics.npz"  # a run directory's recomputed BN statistics (finish_training)


def network_checkpoint(run_dir):
    """The checkpoint that holds ``run_dir``'s network: the best-validation one for a run trained with
    keep="best_val", else the latest. FileNotFoundError when there is none."""
    run_dir = Path(run_dir)
    keep = load_config(run_dir).get("keep", "last")
    where = run_dir / (BEST_DIR if keep == "best_val" else CKPT_DIR)
    path = tf.train.latest_checkpoint(str(where))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {where}")
    return path


def _bn_key(run_dir, inputs, batch_size):
    """What the recomputed statistics depend on: the network's checkpoint, the images and the batching."""
    import hashlib

    ckpt = Path(network_checkpoint(run_dir))
    digest = hashlib.sha1(np.ascontiguousarray(inputs).data).hexdigest()
    return json.dumps({"checkpoint": f"{ckpt.parent.name}/{ckpt.name}", "inputs": [list(inputs.shape), digest],
                       "batch_size": int(batch_size)}, sort_keys=True)


def _bn_layers(model):
    from .layers import BatchNorm

    return [layer for layer in model.layers if isinstance(layer, BatchNorm)]


def _load_bn_statistics(model, run_dir, key):
    """Sets the BN moving statistics stored in ``run_dir`` if they were computed for ``key``; True if so."""
    path = Path(run_dir) / FINISHED_BN
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            if str(f["key"]) != key:
                return False
            values = {name: f[name] for name in f.files if name != "key"}
    except (OSError, ValueError, KeyError, EOFError):
        logging.warning("%s is unreadable; recomputing the BN statistics", path)
        return False
    layers = _bn_layers(model)
    names = {f"{layer.name}/{v}" for layer in layers for v in ("moving_mean", "moving_variance")}
    if set(values) != names:
        return False
    for layer in layers:
        layer.moving_mean.assign(values[f"{layer.name}/moving_mean"])
        layer.moving_variance.assign(values[f"{layer.name}/moving_variance"])
    return True


def _save_bn_statistics(model, run_dir, key):
    arrays = {f"{layer.name}/{v}": getattr(layer, v).numpy() for layer in _bn_layers(model)
              for v in ("moving_mean", "moving_variance")}
    path = Path(run_dir) / FINISHED_BN
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, key=np.array(key), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finish_training(model, arch, inputs, *, batch_size=4, progress=True, run_dir=None):
    """What the architecture's recipe does once training is over, before the network is used
    (registry.Architecture.recompute_bn: SegNet's BN statistics over the training ``inputs``).

    With ``run_dir`` (the training run directory ``model`` was restored from, at its
    network_checkpoint) the statistics are computed once per network: the first call stores them in
    ``run_dir/bn_statistics.npz`` keyed by that checkpoint, the images and the batch size, and later
    calls with the same key (e.g. the export stage after the train stage) load them instead."""
    if not arch.recompute_bn:
        return model
    key = None
    if run_dir is not None:
        key = _bn_key(run_dir, np.asarray(inputs), batch_size)
        if _load_bn_statistics(model, run_dir, key):
            logging.info("BN statistics of %s reused from %s", model.name, Path(run_dir) / FINISHED_BN)
            return model
    recompute_bn_statistics(model, inputs, batch_size=batch_size, progress=progress)
    if key is not None:
        _save_bn_statistics(model, run_dir, key)
    return model


def save_network(model, path):
    """``model.save`` in Keras' native format, written beside ``path`` and renamed into place, so an
    interrupted save never leaves a truncated file under the final name. Reload with
    ``keras.models.load_model(path)`` once tf_models is imported (its layers are registered)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a Keras native file must end in .keras, got {path.name}")
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- loading ------------------------------------------------------------------------------------
_BUILDERS = {"pix2pix": pix2pix.build_generator, "segnet_basic": segnet.build_segnet_basic,
             "segnet_vgg16": segnet.build_segnet_vgg16}


def load_config(run_dir):
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a training run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt: {e}") from e


def load_model(run_dir, *, expect=None, **overrides):
    """Rebuilds the trained network of ``run_dir`` (the generator for Pix2Pix) from its config and
    restores its network_checkpoint (the best-validation one where the run kept it). ``expect`` ("pix2pix", "segnet_basic", "segnet_vgg16") guards
    against loading the wrong kind of run; ``overrides`` change inference-only builder options
    (bn_inference, dropout_at_inference)."""
    config = load_config(run_dir)
    arch = config.get("arch")
    if arch not in _BUILDERS:
        raise ValueError(f"{run_dir}: unknown architecture {arch!r} in {CONFIG}")
    if expect is not None and arch != expect:
        raise ValueError(f"{run_dir} holds a {arch} checkpoint, expected {expect}")
    allowed = {"bn_inference", "dropout_at_inference"}
    if set(overrides) - allowed:
        raise ValueError(f"only {sorted(allowed)} can be overridden at load, got {sorted(overrides)}")
    if arch.startswith("segnet") and "dropout_at_inference" in overrides:
        raise ValueError("SegNet has no dropout; dropout_at_inference does not apply")
    model = _BUILDERS[arch](**dict(config["builder"], **overrides))
    latest = network_checkpoint(run_dir)
    try:
        tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ValueError(f"checkpoint {latest} does not fit a {arch} built from {CONFIG} "
                         f"(another architecture?): {e}") from e
    return model
