"""Cross-batch memory for small-batch contrastive training: a FIFO queue of past embeddings and their labels, and the momentum (EMA) key networks that can fill it.

SupCon improves with the number of contrast entries per anchor (Khosla et
al. 2020, Sec. 4: batch sizes up to 6144). A memory queue makes that number
independent of the batch: the last `size` embeddings (and their labels) are
kept in non-trainable variables and join every anchor's contrast set A(i),
as positives when their label matches and as negatives otherwise
(`losses.supcon_per_anchor_loss(queue_features=..., queue_labels=...)`),
without gradient. The queue entries come either from the online network
itself (cross-batch memory, XBM: Wang et al., CVPR 2020) or from a momentum
copy of encoder + head (MoCo: He et al., CVPR 2020), whose weights follow the
online weights as an exponential moving average, so that entries written at
different steps stay consistent with each other.

`MemoryQueue` is the one object a contrastive model needs: the queue and,
optionally, the momentum key networks, behind `read()` and `update()`.
Everything here is state of a Keras layer or model (plain variables), so it
is saved and restored by `.keras` files, `save_weights` and the step-level backups
and `tf.train.Checkpoint` like any other weight.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from supcon_tf import distribute
from supcon_tf._checks import is_int, non_negative_int, positive_int

# Label of a slot that was never written (the slots are excluded anyway; see MemoryQueue.entries).
EMPTY_LABEL = -1
# The label rows a queue keeps (`MemoryQueue(label_dtype=...)`): class ids, or float rows (multi-hot, continuous).
LABEL_DTYPES = ("int64", "float32")


def check_label_layout(label_shape, label_dtype):
    """A queue's label rows: `(label_shape tuple of ints >= 1, label_dtype)`; ValueError naming the argument.

    `()` and "int64": one class id per entry (the default); `(classes,)` and "float32": multi-hot rows;
    `()` or `(k,)` and "float32": continuous values. Integer multi-hot `(classes,)` "int64" rows are taken too.
    """
    if label_dtype not in LABEL_DTYPES:
        raise ValueError(f"`label_dtype` must be one of {LABEL_DTYPES}, received: label_dtype={label_dtype!r}")
    if not isinstance(label_shape, (tuple, list)) or len(label_shape) > 1 or not all(
        is_int(d) and d >= 1 for d in label_shape
    ):
        raise ValueError(
            "`label_shape` must be () (one id or value per entry) or (k,) with k >= 1 (multi-hot or vector rows), "
            f"received: label_shape={label_shape!r}"
        )
    return tuple(int(d) for d in label_shape), label_dtype


def check_momentum(momentum, name="momentum"):
    """Returns `momentum` as a float in [0, 1); ValueError naming `name` otherwise."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating, np.integer)):
        raise ValueError(f"`{name}` must be a number in [0, 1), received: {name}={momentum!r}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), received: {name}={momentum!r}")
    return float(momentum)


def check_queue_options(queue_size, queue_warmup_steps, key_momentum):
    """The memory queue's options, checked together: `(queue_size, queue_warmup_steps, key_momentum)`.

    `queue_size` and `queue_warmup_steps` are ints >= 0; `key_momentum` is None or in [0, 1) and needs a queue
    (the momentum encoder only fills it). A ValueError names the argument and the value otherwise; `RunConfig`
    and `SupConModel` both check through here.
    """
    if not is_int(queue_size) or queue_size < 0:
        raise ValueError(f"`queue_size` must be an int >= 0, received: queue_size={queue_size!r}")
    if not is_int(queue_warmup_steps) or queue_warmup_steps < 0:
        raise ValueError(
            f"`queue_warmup_steps` must be an int >= 0, received: queue_warmup_steps={queue_warmup_steps!r}"
        )
    if key_momentum is not None:
        key_momentum = check_momentum(key_momentum, "key_momentum")
        if queue_size == 0:
            raise ValueError(
                "`key_momentum` sets the encoder that fills the memory queue; it needs queue_size > 0. "
                f"Received: key_momentum={key_momentum!r} with queue_size=0"
            )
    return int(queue_size), int(queue_warmup_steps), key_momentum


def flatten_views(views):
    """`[batch, views, H, W, C]` -> `([batch * views, H, W, C]` sample-major, the original shape as a tensor)."""
    views = tf.convert_to_tensor(views)
    if views.shape.rank != 5:
        raise ValueError(
            f"`views` must be [batch, views, height, width, channels], received: views with shape {views.shape}"
        )
    shape = tf.shape(views)
    return tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0)), shape


@keras.saving.register_keras_serializable(package="supcon_tf")
class MemoryQueue(keras.layers.Layer):
    """A FIFO memory of the last `size` embeddings and their labels, optionally filled by momentum key networks.

    State (non-trainable variables, created by `build((None, dim))`):
      `features` `[size, dim]` float32, `labels` `[size, *label_shape]` of
      `label_dtype` (`[size]` int64 class ids by default; `[size, classes]`
      float32 multi-hot rows for `positive_weighting="jaccard"` or
      `multi_label="per_label"`; `[size]` or `[size, k]` float32 continuous
      values for `label_kernel="gaussian"`),
      `position` (next slot to write), `filled` (number of valid slots,
      `min(size, entries written so far)`) and `steps` (number of `enqueue`
      calls), all int64 scalars.

    The queue is a ring buffer: until it is full, the valid entries are the
    slots `[0, filled)`; after that, every slot is valid and `position` is
    the oldest. `entries()` returns only valid slots, so empty slots never
    reach a loss; `contents()` returns them oldest first (for inspection and
    tests). An enqueue of `n >= size` entries keeps only the last `size`.

    A contrastive model uses two calls:
      `read()`: `(features, labels)` to contrast with, as constants; nothing
        during the warm-up.
      `update(embeddings, views, labels)`: after the optimizer step, writes
        the step's *global* batch (gathered over replicas, all views of each
        sample, sample-major, with its sample's label or `EMPTY_LABEL`), so
        every replica writes the same entries. Without key networks it writes
        `embeddings` (cross-batch memory, XBM); with them it first moves the
        key networks towards the online ones and writes their embeddings of
        `views` (MoCo).

    Momentum key networks (`key_momentum=m`, with the online `encoder` and
    `head`): copies of the online networks, made at construction (same
    architecture, from their configs) and given the online weights at
    `build`, after which their variables are non-trainable (`freeze_keys`).
    `update` sets each key weight to `m * key + (1 - m) * online` (trainable
    weights only: the key networks' batch-norm statistics are their own),
    then embeds the views in training mode (batch statistics, like the
    online networks on the same batch). The queue holds the key networks
    (`key_encoder`, `key_head`, saved with it) but not the online ones, which
    belong to its owner; `build` needs the online networks built.

    Under a distribution strategy the variables are mirrored and every
    replica writes its own copy; write the same values on every replica
    (`update` does) and the copies stay identical.

    Args:
      size: int >= 1, the number of entries K kept.
      warmup_steps: int >= 0; `in_use()` is False for the first
        `warmup_steps` enqueue calls (the queue still records them, so it is
        full of recent entries when it starts being used).
      key_momentum: None (default, no key networks) or m in [0, 1).
      encoder: with `key_momentum`, the online encoder (images to
        `[batch, rep_dim]`).
      head: with `key_momentum`, the online projection head.
      label_shape: `()` (default: one label per entry) or `(k,)`: the shape
        of one entry's label row (k classes of a multi-hot row, or k values).
      label_dtype: "int64" (default, class ids) or "float32" (multi-hot or
        continuous rows). A slot never written holds `EMPTY_LABEL` (-1) in
        every component, and so does an entry written without labels.
      **kwargs: forwarded to `keras.layers.Layer` (e.g. `name`).

    A momentum queue's config holds `key_momentum` but not the networks:
    its owner (e.g. `SupConModel`) re-creates it from the owner's config.

    Example:

    >>> queue = MemoryQueue(4096)
    >>> queue.build((None, 128))
    >>> queue.enqueue(embeddings, labels)   # [n, 128] float, [n] int
    >>> features, labels = queue.entries()  # [filled, 128], [filled]
    >>> multi_hot = MemoryQueue(4096, label_shape=(20,), label_dtype="float32")  # [filled, 20] label rows

    Reference:
      Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020;
      He et al., "Momentum Contrast for Unsupervised Visual Representation
      Learning", CVPR 2020.
    """

    def __init__(self, size, warmup_steps=0, key_momentum=None, encoder=None, head=None, label_shape=(),
                 label_dtype="int64", **kwargs):
        super().__init__(**kwargs)
        self.size = positive_int(size, "size")
        self.label_shape, self.label_dtype = check_label_layout(label_shape, label_dtype)
        self.warmup_steps = non_negative_int(warmup_steps, "warmup_steps")
        self.key_momentum = None if key_momentum is None else check_momentum(key_momentum, "key_momentum")
        self.key_encoder = self.key_head = None
        if self.key_momentum is not None:
            if not isinstance(encoder, keras.layers.Layer) or not isinstance(head, keras.layers.Layer):
                raise ValueError(
                    "`key_momentum` needs the online `encoder` and `head` (Keras layers) to copy, "
                    f"received: encoder={encoder!r}, head={head!r}"
                )
            self.key_encoder = momentum_copy(encoder, f"{encoder.name}_key")
            self.key_head = momentum_copy(head, f"{head.name}_key")
            # The online networks belong to the owner: kept out of this layer's tracking (and saving).
            self.__dict__["_online"] = (encoder, head)

    def build(self, input_shape):
        dim = input_shape[-1]
        if not is_int(dim) or dim < 1:
            raise ValueError(f"`input_shape` must end in the embedding dim, received: input_shape={input_shape!r}")
        self.dim = int(dim)
        # autocast=False: the queue keeps float32 under mixed precision.
        self.features = self.add_weight(
            shape=(self.size, self.dim), initializer="zeros", dtype="float32",
            trainable=False, autocast=False, name="features",
        )
        self.labels = self.add_weight(
            shape=(self.size, *self.label_shape), initializer=keras.initializers.Constant(EMPTY_LABEL),
            dtype=self.label_dtype, trainable=False, autocast=False, name="labels",
        )
        # int64 counters (int32 variables do not live on GPUs).
        self.position = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="position")
        self.filled = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="filled")
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="steps")
        if self.key_momentum is not None:
            for key, online in zip((self.key_encoder, self.key_head), self._online):
                if not key.built:  # a functional encoder's copy is built already
                    key.build_from_config(online.get_build_config())
                freeze_for_momentum(key, online)
        self.built = True

    def freeze_keys(self):
        """Marks every key-network variable non-trainable again (after e.g. `model.trainable = True`)."""
        for key in (self.key_encoder, self.key_head):
            for variable in [] if key is None else key.weights:
                variable.trainable = False

    def momentum_pairs(self):
        """`(online, key)` variable pairs of encoder and head, in matching order (needs `key_momentum`)."""
        encoder, head = self._online
        return list(zip(encoder.weights, self.key_encoder.weights)) + list(zip(head.weights, self.key_head.weights))

    def in_use(self):
        """Bool scalar: True once `warmup_steps` enqueue calls have happened."""
        return self.steps.value >= self.warmup_steps

    def entries(self, only_in_use=True):
        """The valid entries: `(features [filled, dim] float32, labels [filled, *label_shape] label_dtype)`.

        Args:
          only_in_use: if True (default), zero entries during the warm-up.

        The number of rows is dynamic; slot order (not chronological).
        """
        count = self.filled.value
        if only_in_use:
            count = tf.where(self.in_use(), count, tf.zeros_like(count))
        return self.features.value[:count], self.labels.value[:count]

    def read(self):
        """The entries a loss contrasts with: `entries()` (none during the warm-up)."""
        return self.entries(only_in_use=True)

    def contents(self):
        """`(features, labels)` of the valid entries, oldest first."""
        features, labels = self.features.value, self.labels.value
        full = self.filled.value >= self.size
        shift = tf.where(full, self.position.value, tf.zeros_like(self.position.value))
        count = self.filled.value
        return tf.roll(features, -shift, axis=0)[:count], tf.roll(labels, -shift, axis=0)[:count]

    def enqueue(self, features, labels):
        """Writes `features` `[n, dim]` and `labels` `[n, *label_shape]` as the newest entries; no gradient.

        Returns the new `filled` count.
        """
        features = tf.stop_gradient(tf.cast(features, self.features.dtype))
        if features.shape.rank != 2 or (features.shape[-1] is not None and features.shape[-1] != self.dim):
            raise ValueError(
                f"`features` must be [n, {self.dim}], received: features with shape {features.shape}"
            )
        labels = tf.convert_to_tensor(labels)
        if self.label_dtype == "int64" and not (labels.dtype.is_integer or labels.dtype.is_bool):
            raise ValueError(
                f"`labels` must be integer class ids for a queue of label_dtype 'int64', received: labels of dtype "
                f"{labels.dtype.name} (make the queue with label_dtype='float32' for continuous labels)"
            )
        labels = tf.cast(labels, self.labels.dtype)
        if labels.shape.rank != 1 + len(self.label_shape) or (
            self.label_shape and labels.shape[-1] is not None and labels.shape[-1] != self.label_shape[0]
        ):
            expected = "[n]" if not self.label_shape else f"[n, {self.label_shape[0]}]"
            raise ValueError(
                f"`labels` must be {expected} (the queue's label_shape {self.label_shape}), received: labels with "
                f"shape {labels.shape}"
            )
        n = tf.shape(features, out_type=tf.int64)[0]
        keep = tf.minimum(n, self.size)
        skipped = n - keep  # entries that would be overwritten within this same call
        slots = (self.position.value + skipped + tf.range(keep, dtype=tf.int64)) % self.size
        self.features.assign(tf.tensor_scatter_nd_update(self.features.value, slots[:, None], features[skipped:]))
        self.labels.assign(tf.tensor_scatter_nd_update(self.labels.value, slots[:, None], labels[skipped:]))
        self.position.assign((self.position.value + n) % self.size)
        self.filled.assign(tf.minimum(self.filled.value + n, self.size))
        self.steps.assign_add(tf.ones_like(self.steps.value))
        return self.filled.value

    def embed_keys(self, views):
        """Key-network embeddings of every view, `[batch, views, dim]`, in training mode, without gradient.

        Training mode: batch normalisation uses the batch statistics, as the
        online network does on the same batch (and updates the key
        network's own moving statistics). Needs `key_momentum`.
        """
        if self.key_momentum is None:
            raise ValueError("`embed_keys` needs a momentum encoder: construct the model with key_momentum=m")
        flat, shape = flatten_views(views)
        keys = self.key_head(self.key_encoder(flat, training=True), training=True)
        return tf.stop_gradient(tf.reshape(keys, [shape[0], shape[1], -1]))

    def update(self, embeddings, views=None, labels=None):
        """Writes this step's global batch; call after the optimizer step, in a replica context.

        Args:
          embeddings: `[local_batch, views, dim]` this replica's online
            embeddings (written without key networks; no gradient).
          views: `[local_batch, views, H, W, C]` the step's images (needed
            with key networks: first the EMA step, then their embeddings are
            written instead).
          labels: `[local_batch, *label_shape]` labels, or None (`EMPTY_LABEL`).

        Returns the new `filled` count.
        """
        if self.key_momentum is not None:
            ema_update(self.momentum_pairs(), self.key_momentum)
            embeddings = self.embed_keys(views)
        embeddings = tf.stop_gradient(tf.convert_to_tensor(embeddings))
        if labels is None:
            labels = tf.fill(
                tf.concat([tf.shape(embeddings)[:1], self.label_shape], axis=0),
                tf.constant(EMPTY_LABEL, self.labels.dtype),
            )
        labels = tf.convert_to_tensor(labels)
        if self.label_dtype == "int64" and labels.dtype.is_floating:
            raise ValueError(
                f"`labels` must be integer class ids for a queue of label_dtype 'int64', received: labels of dtype "
                f"{labels.dtype.name} (make the queue with label_dtype='float32' for continuous labels)"
            )
        gathered = distribute.gather_global(embeddings, tf.cast(labels, self.labels.dtype))
        num_views = tf.shape(gathered.features)[1]
        features = tf.reshape(gathered.features, [-1, tf.shape(gathered.features)[-1]])
        return self.enqueue(features, tf.repeat(gathered.labels, num_views, axis=0))

    def call(self, inputs):
        raise NotImplementedError("MemoryQueue is state, not a transformation: use read() and update().")

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, warmup_steps=self.warmup_steps)
        if self.label_shape or self.label_dtype != "int64":
            config.update(label_shape=list(self.label_shape), label_dtype=self.label_dtype)
        if self.key_momentum is not None:
            config["key_momentum"] = self.key_momentum
        return config


def momentum_copy(layer, name):
    """A new, unbuilt layer with `layer`'s architecture (from its config) and name `name`.

    Args:
      layer: a serialisable Keras layer or model (e.g. a functional encoder).
      name: the copy's name.
    """
    serialized = keras.saving.serialize_keras_object(layer)
    if isinstance(serialized.get("config"), dict) and "name" in serialized["config"]:
        serialized["config"]["name"] = name
    return keras.saving.deserialize_keras_object(serialized)


def freeze_for_momentum(key, online):
    """Makes `key` a momentum copy of `online`: copies the weights, takes its variables away from the optimizer.

    The key network stays `trainable` as a *layer*, so that its batch
    normalisation uses batch statistics in `training=True` calls (like the
    online network on the same batch; MoCo does the same), but each of its
    variables is marked non-trainable, so it never appears in
    `trainable_variables` and never gets a gradient or optimizer state.

    Returns the `(online_variable, key_variable)` pairs, in matching order.
    """
    online_weights, key_weights = online.weights, key.weights
    if len(online_weights) != len(key_weights) or any(
        tuple(o.shape) != tuple(k.shape) for o, k in zip(online_weights, key_weights)
    ):
        raise ValueError(
            f"The momentum copy of `{online.name}` does not match it weight for weight; "
            "the layer must be re-creatable from its config."
        )
    for online_variable, key_variable in zip(online_weights, key_weights):
        key_variable.assign(online_variable.value)
        key_variable.trainable = False
    return list(zip(online_weights, key_weights))


def ema_update(pairs, momentum):
    """`key <- momentum * key + (1 - momentum) * online` for every pair whose online variable is trainable.

    Non-trainable online state (batch-norm moving statistics, frozen layers)
    is left to the key network itself. Under a distribution strategy each
    replica updates its own copy from identical values.
    """
    for online_variable, key_variable in pairs:
        if online_variable.trainable:
            key_variable.assign(
                momentum * key_variable.value + (1.0 - momentum) * tf.cast(online_variable.value, key_variable.dtype)
            )
