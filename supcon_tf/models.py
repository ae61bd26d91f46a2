"""Keras models of the two-stage protocol: SupConModel (pre-training), LinearProbe and CrossEntropyModel.

Stage 1, `SupConModel`: encoder + projection head trained with the SupCon (or
SimCLR) loss by a custom `train_step`, so plain `model.fit` works.
Stage 2, `LinearProbe`: the head is dropped, the encoder frozen and called
with `training=False`, and a linear classifier is trained with cross-entropy.
Baseline, `CrossEntropyModel`: the same encoder + a linear classifier trained
end to end with cross-entropy.
"""

from __future__ import annotations

import copy

import keras
import numpy as np
import tensorflow as tf

from supcon_tf import data as data_lib
from supcon_tf import distribute
from supcon_tf import losses as losses_lib
from supcon_tf import memory as memory_lib
from supcon_tf import online_eval as online_eval_lib
from supcon_tf._checks import is_int

# Output keys of SupConModel.call (STYLE.md 12).
REPRESENTATION = "representation"
EMBEDDING = "embedding"
# Output keys of the classifiers' `predict_all`.
LOGITS = "logits"
PROBABILITIES = "probabilities"

METHODS = ("supcon", "simclr")


def _check_model(name, value):
    if not isinstance(value, keras.layers.Layer):
        raise ValueError(f"`{name}` must be a Keras layer or model, received: {name}={value!r}")


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, received: num_classes={num_classes!r}")


def _check_compile_kwargs(model_name, kwargs, forbidden):
    for key in forbidden:
        if key in kwargs:
            raise ValueError(
                f"{model_name}.compile() computes its own {key}; do not pass it. "
                f"Received: {key}={kwargs[key]!r}"
            )


def _encoder_output_dim(encoder):
    shape = encoder.output_shape
    if isinstance(shape, list) or len(shape) != 2:
        raise ValueError(
            f"`encoder` must map images to a [batch, dim] representation, received: an encoder with output shape {shape}"
        )
    return int(shape[-1])


def build_optimizer_state(model):
    """Creates the optimizer variables of a built, compiled model, so that saved optimizer state can load.

    Each optimizer is built for exactly the variables it updates: a
    SupConModel's main optimizer for encoder + head, its online optimizer
    (if any) for the online classifier; any other model's for all its
    trainable variables.
    """
    if model.optimizer is None or not model.built:
        return
    variables = getattr(model, "contrastive_variables", None)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables if variables is None else variables)
    online = getattr(model, "online_optimizer", None)
    if online is not None and not online.built:
        online.build(model.online_classifier.trainable_variables)


def _compile_and_build_optimizer(model, config):
    """`model.compile(**config)`, then creates the optimizer variables so saved optimizer state can load."""
    model.compile(**config)
    build_optimizer_state(model)


def _build_from_encoder(model):
    """Builds `model` at construction when its encoder is a built functional model.

    A built model never needs Keras to trace it on a data batch to create
    its state (which would pass `[batch, views, ...]` training data to
    `call`, and which under multi-worker training goes through
    `MultiWorkerFitMixin`).
    """
    encoder = model.encoder
    if encoder.built and isinstance(getattr(encoder, "inputs", None), list) and len(encoder.inputs) == 1:
        model.build(tuple(encoder.inputs[0].shape))


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConModel(distribute.MultiWorkerFitMixin, keras.Model):
    """Encoder + projection head trained with a supervised (or self-supervised) contrastive loss.

    Args:
      encoder: a built Keras model from images `[batch, H, W, C]` to a
        representation `[batch, rep_dim]` (e.g. `encoders.build_encoder`).
      head: a layer from `[batch, rep_dim]` to L2-normalised embeddings
        `[batch, dim]` (e.g. `layers.ProjectionHead`).
      method: `"supcon"` (labels define positives) or `"simclr"` (labels
        ignored; positives are the other views of the same sample).
      temperature: tau > 0. The paper uses 0.1 for SupCon, SimCLR 0.5 on CIFAR.
      base_temperature: loss scale `temperature / base_temperature`; `None`
        (default) leaves eq. 2 unscaled.
      contrast_mode: `"all"` or `"one"` (see `losses.supcon_per_anchor_loss`).
      variant: `"out"` (eq. 2, default) or `"in"` (eq. 3).
      denominator: `"all"` (default, the paper), `"one_positive"` or
        `"only_negatives"`: which contrast entries form each positive's
        softmax denominator (google-research's `denominator_mode`; see
        `losses.supcon_per_anchor_loss`).
      positives_cap: -1 (default, no cap) or a non-negative multiple of the
        number of views: per anchor, only the first `positives_cap // views`
        same-class samples of the global batch (then matching queue entries)
        stay positives; the rest are left out of the loss.
      cross_replica: under a distribution strategy, contrast every replica's
        anchors against the gathered *global* batch (default True, the exact
        SupCon objective). False contrasts each replica's anchors with its own
        local batch only: a different, weaker objective, kept for comparisons.
      queue_size: int >= 0, entries K of a memory queue (`memory.MemoryQueue`)
        of past embeddings and labels that joins every anchor's contrast set
        as constants (positives by label; all negatives for SimCLR). 0
        (default) disables it: exactly the plain SupCon step. After each
        optimizer step the *global* batch (gathered over replicas) is
        written, all `views` embeddings of each sample (`global_batch *
        views` entries per step, sample-major), so every replica holds the
        same queue. Slots not yet written are never contrasted.
      queue_warmup_steps: int >= 0; the queue is written from the first step
        but joins the loss only from step `queue_warmup_steps` on (XBM's
        warm-up: the earliest embeddings drift too fast to be useful).
      key_momentum: `None` (default) or m in [0, 1). `None`: the queue entries
        are the online embeddings of the step (cross-batch memory). m: a
        momentum copy of encoder + head (MoCo) produces the queue entries and
        nothing else: after each optimizer step its weights become
        `m * key + (1 - m) * online` (trainable weights; its batch-norm
        statistics are its own), then it embeds the step's views in training
        mode (batch statistics) and those keys are enqueued. The current
        batch's contrast set stays the online embeddings. Needs
        `queue_size > 0`.
      online_eval_classes: None (default) or the number of classes C >= 2
        of an online linear classifier: trained jointly on the
        stop-gradient representation of every view, with its own optimizer
        (`compile(online_optimizer=...)`), logging `online_loss` and
        `online_top1` (train and validation). Its gradient never reaches
        the encoder. Needs labels in the data.
      contrast_metrics: log `contrast_top1` and `contrast_entropy`
        (`online_eval.contrast_statistics`) every step; they cost one
        `[local anchors, global contrast]` similarity matrix.
      **kwargs: forwarded to `keras.Model`.

    Call arguments:
      images: `[batch, H, W, C]` float images.
      training: bool.
    Returns a dict `{REPRESENTATION: [batch, rep_dim], EMBEDDING: [batch, dim]}`.

    Training data: `fit` expects `(views, labels)` with views
    `[batch, views, H, W, C]` and labels `[batch]` int (ignored for SimCLR),
    as produced by `data.make_multiview_dataset` or
    `data.make_class_balanced_dataset`. The logged `loss` is the SupCon
    batch loss (over batch and queue while the queue is in use), plus any
    regularisation losses of the layers. `evaluate` reports the plain batch
    loss: it neither reads nor writes the queue.

    State: the queue (`model.memory`) and the momentum networks
    (`model.key_encoder`, `model.key_head`) are variables of the model, so
    `.keras` files, `save_weights` (and `BackupAndRestore`) and
    `tf.train.Checkpoint` save and restore them. The key networks' variables
    are marked non-trainable (`compile` re-asserts it); `export` and
    `LinearProbe` use `model.encoder`, the online encoder.

    Example:

    >>> encoder = encoders.build_encoder("small_cnn", (8, 8, 1))
    >>> model = SupConModel(encoder, layers.ProjectionHead((128,), 64))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> model.fit(train_views_dataset, epochs=10)

    Small batches with a memory of 4096 embeddings filled by a momentum encoder:

    >>> model = SupConModel(encoder, head, queue_size=4096, key_momentum=0.99)

    Reference:
      Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
      Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
      He et al., "Momentum Contrast for Unsupervised Visual Representation
      Learning", CVPR 2020.
    """

    def __init__(
        self,
        encoder,
        head,
        method="supcon",
        temperature=0.1,
        base_temperature=None,
        contrast_mode="all",
        variant="out",
        denominator="all",
        positives_cap=-1,
        cross_replica=True,
        queue_size=0,
        queue_warmup_steps=0,
        key_momentum=None,
        online_eval_classes=None,
        contrast_metrics=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_model("encoder", encoder)
        _check_model("head", head)
        if not isinstance(cross_replica, bool):
            raise ValueError(f"`cross_replica` must be a bool, received: cross_replica={cross_replica!r}")
        if not is_int(queue_size) or queue_size < 0:
            raise ValueError(f"`queue_size` must be an int >= 0, received: queue_size={queue_size!r}")
        if not is_int(queue_warmup_steps) or queue_warmup_steps < 0:
            raise ValueError(
                f"`queue_warmup_steps` must be an int >= 0, received: queue_warmup_steps={queue_warmup_steps!r}"
            )
        if key_momentum is not None:
            key_momentum = memory_lib.check_momentum(key_momentum, "key_momentum")
            if queue_size == 0:
                raise ValueError(
                    "`key_momentum` only fills the memory queue; it needs queue_size > 0. "
                    f"Received: key_momentum={key_momentum!r} with queue_size=0"
                )
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, received: method={method!r}")
        # Validates temperature, base_temperature, contrast_mode, variant,
        # denominator and positives_cap with the loss's own messages.
        losses_lib.SupConLoss(
            temperature=temperature,
            base_temperature=base_temperature,
            contrast_mode=contrast_mode,
            variant=variant,
            use_labels=method == "supcon",
            denominator=denominator,
            positives_cap=positives_cap,
        )
        self.encoder = encoder
        self.head = head
        self.method = method
        self.temperature = float(temperature)
        self.base_temperature = None if base_temperature is None else float(base_temperature)
        self.contrast_mode = contrast_mode
        self.variant = variant
        self.denominator = denominator
        self.positives_cap = int(positives_cap)
        self.cross_replica = cross_replica
        self.queue_size = int(queue_size)
        self.queue_warmup_steps = int(queue_warmup_steps)
        self.key_momentum = key_momentum
        self.memory = None
        self.key_encoder = self.key_head = None
        self._momentum_copied = False
        if self.queue_size:
            self.memory = memory_lib.MemoryQueue(self.queue_size, self.queue_warmup_steps, name="memory_queue")
        if self.key_momentum is not None:
            self.key_encoder = memory_lib.momentum_copy(encoder, f"{encoder.name}_key")
            self.key_head = memory_lib.momentum_copy(head, f"{head.name}_key")
        if online_eval_classes is not None:
            _check_num_classes(online_eval_classes)
            online_eval_classes = int(online_eval_classes)
        if not isinstance(contrast_metrics, bool):
            raise ValueError(f"`contrast_metrics` must be a bool, received: contrast_metrics={contrast_metrics!r}")
        self.online_eval_classes = online_eval_classes
        self.contrast_metrics = contrast_metrics
        self.online_classifier = None
        self.online_optimizer = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        extra = []
        if contrast_metrics:
            extra += [keras.metrics.Mean(name="contrast_top1"), keras.metrics.Mean(name="contrast_entropy")]
        if online_eval_classes is not None:
            self.online_classifier = keras.layers.Dense(online_eval_classes, name="online_classifier", dtype="float32")
            extra += [keras.metrics.Mean(name="online_loss"), keras.metrics.SparseCategoricalAccuracy(name="online_top1")]
        self._extra_metrics = extra
        _build_from_encoder(self)

    def compile(self, optimizer="sgd", online_optimizer=None, **kwargs):
        """Configures the optimizer. The loss is the model's own.

        Args:
          optimizer: a Keras optimizer or its name.
          online_optimizer: the online classifier's own optimizer (only with
            `online_eval_classes`); default `keras.optimizers.Adam(1e-3)`.
          **kwargs: forwarded to `keras.Model.compile` (e.g. `jit_compile`,
            `steps_per_execution`, `run_eagerly`). `loss`, `metrics`,
            `loss_weights` are rejected with a `ValueError`.
        """
        _check_compile_kwargs(type(self).__name__, kwargs, ("loss", "loss_weights", "metrics", "weighted_metrics"))
        if online_optimizer is not None and self.online_classifier is None:
            raise ValueError(
                "`online_optimizer` needs an online classifier: construct the model with online_eval_classes=C. "
                f"Received: online_optimizer={online_optimizer!r}"
            )
        if self.online_classifier is not None:
            self.online_optimizer = keras.optimizers.get(online_optimizer or keras.optimizers.Adam(1e-3))
        if self.key_encoder is not None and self.built:
            # A `model.trainable = True` since the build would have handed the
            # key networks to the optimizer: take them back.
            for key in (self.key_encoder, self.key_head):
                for variable in key.weights:
                    variable.trainable = False
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded model (optimizer and its state) from its saved compile config."""
        config = keras.saving.deserialize_keras_object(config)
        for key in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            config.pop(key, None)
        _compile_and_build_optimizer(self, config)

    @property
    def metrics(self):
        return [self.loss_tracker] + list(self._extra_metrics)

    @property
    def contrastive_variables(self):
        """The variables the contrastive loss trains: encoder and projection head (not the online classifier)."""
        return self.encoder.trainable_variables + self.head.trainable_variables

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        rep_dim = _encoder_output_dim(self.encoder)
        if not self.head.built:
            self.head.build((None, rep_dim))
        if self.online_classifier is not None and not self.online_classifier.built:
            self.online_classifier.build((None, rep_dim))
        if self.memory is not None and not self.memory.built:
            embedding_dim = self.head.compute_output_shape((None, rep_dim))[-1]
            self.memory.build((None, embedding_dim))
        if self.key_encoder is not None and not self._momentum_copied:
            if not self.key_encoder.built:  # a functional encoder's copy is built already
                self.key_encoder.build(input_shape)
            if not self.key_head.built:
                self.key_head.build((None, rep_dim))
            memory_lib.freeze_for_momentum(self.key_encoder, self.encoder)
            memory_lib.freeze_for_momentum(self.key_head, self.head)
            self._momentum_copied = True
        self.built = True

    def call(self, images, training=False):
        representation = self.encoder(images, training=training)
        embedding = self.head(representation, training=training)
        return {REPRESENTATION: representation, EMBEDDING: embedding}

    @staticmethod
    def _flatten_views(views):
        """`[batch, views, H, W, C]` -> `[batch * views, H, W, C]` (sample-major) and the original shape."""
        views = tf.convert_to_tensor(views)
        if views.shape.rank != 5:
            raise ValueError(
                f"`views` must be [batch, views, height, width, channels], received: views with shape {views.shape}"
            )
        shape = tf.shape(views)
        return tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0)), shape

    def embed_views(self, views, training=False, return_representation=False):
        """Embeds every view: `[batch, views, H, W, C]` -> `[batch, views, dim]`.

        All views go through the encoder as one batch of `batch * views`
        images, so batch normalisation sees every view. With
        `return_representation`, also returns the encoder outputs
        `[batch * views, rep_dim]` (sample-major).
        """
        flat, shape = self._flatten_views(views)
        outputs = self(flat, training=training)
        embedding = tf.reshape(outputs[EMBEDDING], [shape[0], shape[1], -1])
        if return_representation:
            return embedding, outputs[REPRESENTATION]
        return embedding

    def embed_keys(self, views):
        """Momentum-network embeddings of every view, `[batch, views, dim]`, in training mode, without gradient.

        Training mode: batch normalisation uses the batch statistics, as the
        online network does on the same batch (and updates the key
        network's own moving statistics). Needs `key_momentum`.
        """
        if self.key_encoder is None:
            raise ValueError("`embed_keys` needs a momentum encoder: construct the model with key_momentum=m")
        flat, shape = self._flatten_views(views)
        keys = self.key_head(self.key_encoder(flat, training=True), training=True)
        return tf.stop_gradient(tf.reshape(keys, [shape[0], shape[1], -1]))

    def update_memory(self, embeddings, labels):
        """Writes this step's global batch into the queue: `[local_batch, views, dim]` per replica.

        The embeddings of all replicas are gathered (replica order), so every
        replica writes the same `global_batch * views` entries, sample-major
        (`[s0 v0, s0 v1, ..., s1 v0, ...]`), each with its sample's label
        (`memory.EMPTY_LABEL` when there are no labels). No gradient.
        """
        embeddings = tf.stop_gradient(tf.convert_to_tensor(embeddings))
        if labels is None:
            labels = tf.fill(tf.shape(embeddings)[:1], tf.constant(memory_lib.EMPTY_LABEL, tf.int64))
        gathered = distribute.gather_global(embeddings, tf.cast(labels, tf.int64))
        num_views = tf.shape(gathered.features)[1]
        features = tf.reshape(gathered.features, [-1, tf.shape(gathered.features)[-1]])
        return self.memory.enqueue(features, tf.repeat(gathered.labels, num_views))

    def _unpack(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.method == "supcon" and y is None:
            raise ValueError(
                "SupConModel(method='supcon') needs labels: feed (views, labels) pairs, "
                "or use method='simclr'. Received: data without labels"
            )
        return x, y

    def compute_contrastive_loss(self, embeddings, labels, use_queue=False):
        """Contrastive loss of this replica's anchors against the global batch (and the queue).

        Args:
          embeddings: `[local_batch, views, dim]` this replica's embeddings.
          labels: `[local_batch]` labels (ignored for SimCLR).
          use_queue: add the memory queue's valid entries to the contrast set
            (constants), once its warm-up is over. Needs `queue_size > 0`.

        Returns:
          `(replica_loss, global_loss)`: `replica_loss` is this replica's
          share, whose sum over replicas is the global-batch loss (so the
          cross-replica *sum* of gradients that Keras 3 applies is exactly the
          gradient of the global loss); `global_loss` is the global-batch loss
          itself, identical on every replica, for logging. With one replica
          both are the plain `supcon_loss`.
        """
        use_labels = self.method == "supcon"
        labels = labels if use_labels else None
        if self.cross_replica:
            gathered = distribute.gather_global(embeddings, labels)
        else:  # each replica contrasts only its own batch: a weaker objective, for comparison only
            gathered = distribute.GatheredBatch(embeddings, labels, tf.constant(0), tf.shape(embeddings)[0])
        queue = {}
        if use_queue:
            # Only the slots written so far (none during the warm-up): a dynamic
            # number of rows, which tf.function and XLA handle alike (the loss
            # picks its dense form for a queue of unknown length).
            queue_features, queue_labels = self.memory.entries()
            queue = dict(queue_features=queue_features, queue_labels=queue_labels if use_labels else None)
        per_anchor = losses_lib.supcon_per_anchor_loss(
            gathered.features,
            gathered.labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            variant=self.variant,
            denominator=self.denominator,
            positives_cap=self.positives_cap,
            anchor_offset=gathered.offset,
            num_anchor_samples=gathered.num_local,
            **queue,
        )
        local_sum = tf.reduce_sum(per_anchor.loss)
        local_count = tf.reduce_sum(tf.cast(per_anchor.has_positive, per_anchor.loss.dtype))
        # The global loss is the mean over *all* replicas' anchors with a
        # positive. Dividing the local sum by the global count is the one and
        # only 1/num_replicas scaling (global count = replicas x local count
        # when counts are equal), and it stays exact when they are not.
        global_count = distribute.all_reduce_sum(local_count)
        replica_loss = tf.math.divide_no_nan(local_sum, global_count)
        global_loss = distribute.all_reduce_sum(tf.stop_gradient(replica_loss))
        return replica_loss, global_loss

    def _regularization_loss(self):
        if not self.losses:
            return 0.0
        # Every replica adds the same weight penalty and Keras sums gradients
        # over replicas: divide by the replica count once.
        return tf.add_n(self.losses) / distribute.num_replicas_in_sync()

    def _check_batch(self, views):
        """Under several replicas, fails unless every replica got the same batch size.

        The gathered contrast set and the replica offsets assume equal local
        batches; a final short batch (no `drop_remainder=True`) splits unevenly.
        """
        if distribute.num_replicas_in_sync() == 1:
            return
        if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
            return  # TPUs need static, equal shapes anyway (drop_remainder=True); no Assert op in TPU graphs
        sizes = distribute.gather_global(tf.shape(views)[:1]).features
        tf.debugging.assert_equal(
            tf.reduce_min(sizes),
            tf.reduce_max(sizes),
            message=(
                "Under a distribution strategy every replica needs the same batch size: build the dataset "
                "with `drop_remainder=True` (data.make_multiview_dataset does by default). Received: "
                "unequal per-replica batch sizes"
            ),
        )

    def _online_loss(self, representation, labels, num_views):
        """Online classifier on the stop-gradient representation: `(logits [batch * views, C], mean CE loss)`."""
        if labels is None:
            raise ValueError("The online classifier (online_eval_classes) needs labels: feed (views, labels) pairs")
        logits = self.online_classifier(tf.stop_gradient(representation))
        targets = tf.repeat(tf.cast(labels, tf.int32), num_views)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))
        return logits, loss

    def _update_evaluation_metrics(self, embeddings, labels, online_logits, online_loss):
        if self.contrast_metrics:
            use_labels = self.method == "supcon"
            gathered = distribute.gather_global(tf.stop_gradient(embeddings), labels if use_labels else None)
            top1, entropy = online_eval_lib.contrast_statistics(
                gathered.features,
                gathered.labels,
                temperature=self.temperature,
                anchor_offset=gathered.offset,
                num_anchor_samples=gathered.num_local,
            )
            self._extra_metrics[0].update_state(top1)
            self._extra_metrics[1].update_state(entropy)
        if online_logits is not None:
            targets = tf.repeat(tf.cast(labels, tf.int32), tf.shape(embeddings)[1])
            self._extra_metrics[-2].update_state(online_loss)
            self._extra_metrics[-1].update_state(targets, online_logits)

    def train_step(self, data):
        views, labels = self._unpack(data)
        self._check_batch(views)
        online_logits = online_loss = None
        with tf.GradientTape() as tape, tf.GradientTape() as online_tape:
            embeddings, representation = self.embed_views(views, training=True, return_representation=True)
            loss, global_loss = self.compute_contrastive_loss(embeddings, labels, use_queue=self.memory is not None)
            regularization = self._regularization_loss()
            loss = loss + regularization
            # Identity unless the optimizer is a LossScaleOptimizer (mixed precision).
            scaled_loss = self.optimizer.scale_loss(loss)
            if self.online_classifier is not None:
                online_logits, online_loss = self._online_loss(representation, labels, tf.shape(views)[1])
                # Keras sums gradients over replicas: scale the replica mean once.
                online_scaled = online_loss / distribute.num_replicas_in_sync()
        variables = self.contrastive_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        if self.online_classifier is not None:
            online_variables = self.online_classifier.trainable_variables
            self.online_optimizer.apply(online_tape.gradient(online_scaled, online_variables), online_variables)
        if self.memory is not None:
            # After the optimizer step (the queue was read above, before this write).
            if self.key_encoder is not None:
                memory_lib.ema_update(self._momentum_pairs(), self.key_momentum)
                keys = self.embed_keys(views)
            else:
                keys = embeddings
            self.update_memory(keys, labels if self.method == "supcon" else None)
        self.loss_tracker.update_state(global_loss + regularization * distribute.num_replicas_in_sync())
        self._update_evaluation_metrics(embeddings, labels, online_logits, online_loss)
        return self._finalize_logs({m.name: m.result() for m in self.metrics})

    def _momentum_pairs(self):
        """`(online, key)` variable pairs of encoder and head, in matching order."""
        return list(zip(self.encoder.weights, self.key_encoder.weights)) + list(
            zip(self.head.weights, self.key_head.weights)
        )

    def test_step(self, data):
        views, labels = self._unpack(data)
        self._check_batch(views)
        embeddings, representation = self.embed_views(views, training=False, return_representation=True)
        _, global_loss = self.compute_contrastive_loss(embeddings, labels)
        self.loss_tracker.update_state(global_loss + self._regularization_loss() * distribute.num_replicas_in_sync())
        online_logits = online_loss = None
        if self.online_classifier is not None:
            online_logits, online_loss = self._online_loss(representation, labels, tf.shape(views)[1])
        self._update_evaluation_metrics(embeddings, labels, online_logits, online_loss)
        return self._finalize_logs({m.name: m.result() for m in self.metrics})

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            head=keras.saving.serialize_keras_object(self.head),
            method=self.method,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            variant=self.variant,
            denominator=self.denominator,
            positives_cap=self.positives_cap,
            cross_replica=self.cross_replica,
            queue_size=self.queue_size,
            queue_warmup_steps=self.queue_warmup_steps,
            key_momentum=self.key_momentum,
            online_eval_classes=self.online_eval_classes,
            contrast_metrics=self.contrast_metrics,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialisation consumes nested dicts
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


class _Classifier(distribute.MultiWorkerFitMixin, keras.Model):
    """Shared parts of the two classifiers: an encoder and a linear `Dense` head giving logits."""

    def __init__(self, encoder, num_classes, **kwargs):
        super().__init__(**kwargs)
        _check_model("encoder", encoder)
        _check_num_classes(num_classes)
        _encoder_output_dim(encoder)
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier", dtype="float32")
        _build_from_encoder(self)

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Cross-entropy on logits and accuracy by default.

        Args:
          optimizer: a Keras optimizer or its name.
          loss: default `SparseCategoricalCrossentropy(from_logits=True)`.
          metrics: default `["accuracy"]`.
          **kwargs: forwarded to `keras.Model.compile`.
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics is None:
            metrics = ["accuracy"]
        self._metric_specs = list(metrics)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded model (optimizer, loss, metrics) from its saved compile config."""
        _compile_and_build_optimizer(self, keras.saving.deserialize_keras_object(config))

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        if not self.classifier.built:
            self.classifier.build((None, _encoder_output_dim(self.encoder)))
        self.built = True

    def predict_all(self, images):
        """Returns `{LOGITS, PROBABILITIES, REPRESENTATION}` for `[batch, H, W, C]` images (inference mode)."""
        representation = self.encoder(images, training=False)
        logits = self.classifier(representation)
        return {LOGITS: logits, PROBABILITIES: tf.nn.softmax(logits), REPRESENTATION: representation}

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder), num_classes=self.num_classes)
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialisation consumes nested dicts
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="supcon_tf")
class LinearProbe(_Classifier):
    """Linear evaluation: a frozen encoder (called with `training=False`) and a trainable `Dense` classifier.

    The probe is its own model, so nothing of it leaks into pre-training
    (STYLE.md 8). Constructing it sets `encoder.trainable = False`: from this
    point the encoder is an evaluation-only feature extractor (also for any
    other model that shares it).

    Args:
      encoder: a built Keras model from images to `[batch, rep_dim]`.
      num_classes: int >= 2.
      **kwargs: forwarded to `keras.Model`.

    Call arguments:
      images: `[batch, H, W, C]` float images.
      training: bool; only affects the classifier (the encoder always runs
        in inference mode).
    Returns logits `[batch, num_classes]` float32.

    Example:

    >>> probe = LinearProbe(pretrained.encoder, num_classes=10)
    >>> probe.compile(keras.optimizers.Adam(1e-2))
    >>> probe.fit_cached(train_images_dataset, epochs=50)  # features computed once
    >>> probe.evaluate(test_images_dataset)
    """

    def __init__(self, encoder, num_classes, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.encoder.trainable = False

    def call(self, images, training=False):
        representation = tf.stop_gradient(self.encoder(images, training=False))
        return self.classifier(representation, training=training)

    def extract_features(self, dataset):
        """Runs the frozen encoder once over `(images, labels)` batches.

        Args:
          dataset: a `tf.data.Dataset` of `(images [B, H, W, C], labels [B])`.

        Returns:
          `(features [N, rep_dim] float32 NumPy, labels [N] NumPy)`.
        """
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError(f"`dataset` must be a tf.data.Dataset, received: dataset={dataset!r}")
        if getattr(self, "_encode_fn", None) is None:  # one traced function per probe, not one per call
            self._encode_fn = tf.function(lambda images: self.encoder(images, training=False), reduce_retracing=True)
        encode = self._encode_fn
        features, labels = [], []
        for images, batch_labels in dataset:
            features.append(encode(images).numpy())
            labels.append(np.asarray(batch_labels))
        if not features:
            raise ValueError("`dataset` must not be empty, received: a dataset with no batches")
        return np.concatenate(features).astype(np.float32), np.concatenate(labels)

    def fit_cached(self, dataset, *, epochs, batch_size=256, validation_data=None, shuffle_seed=0, **fit_kwargs):
        """Trains the classifier on features computed once (for un-augmented training data).

        The encoder is frozen and deterministic at inference, so with
        augmentation off the features of every epoch are the same: computing
        them once makes the probe orders of magnitude cheaper. Uses the
        optimizer, loss and metrics given to `compile`.

        Args:
          dataset: `tf.data.Dataset` of `(images, labels)` batches.
          epochs: positive int.
          batch_size: classifier batch size over the cached features.
          validation_data: optional dataset like `dataset`.
          shuffle_seed: seed of the per-epoch shuffling of the cached features.
          **fit_kwargs: forwarded to `keras.Model.fit` (callbacks, verbose).

        Returns:
          The `keras.callbacks.History` of the classifier training.
        """
        if not self.compiled:
            raise ValueError("Call `compile()` before `fit_cached()`. Received: an uncompiled LinearProbe")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"`epochs` must be a positive int, received: epochs={epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, received: batch_size={batch_size!r}")
        features, labels = self.extract_features(dataset)
        validation = None
        if validation_data is not None:
            validation = self.extract_features(validation_data)
        train = data_lib.make_feature_batches(features, labels, batch_size=int(batch_size), seed=shuffle_seed)
        fit_kwargs.setdefault("shuffle", False)  # `train` shuffles itself
        return self.cached_head().fit(
            train,
            epochs=epochs,
            steps_per_epoch=-(-len(labels) // int(batch_size)),
            validation_data=validation,
            **fit_kwargs,
        )

    def cached_head(self):
        """The classifier as a compiled model on `[batch, rep_dim]` features, for training on cached features.

        It shares this probe's classifier variables and optimizer (so the
        probe is trained by training it, and `self.save_weights` holds its
        state); the metrics are fresh copies of the compiled ones.
        """
        if not self.compiled:
            raise ValueError("Call `compile()` before `cached_head()`. Received: an uncompiled LinearProbe")
        head = self.__dict__.get("_cached_head_model")
        if head is None:
            inputs = keras.Input((_encoder_output_dim(self.encoder),))
            head = keras.Model(inputs, self.classifier(inputs), name=f"{self.name}_cached")
            metrics = [m if isinstance(m, str) else m.__class__.from_config(m.get_config()) for m in self._metric_specs]
            head.compile(optimizer=self.optimizer, loss=self.loss, metrics=metrics)
            # Kept outside Keras' attribute tracking: the head is a view of this
            # probe's own classifier, not a sub-layer to save a second time.
            self.__dict__["_cached_head_model"] = head
        return head


@keras.saving.register_keras_serializable(package="supcon_tf")
class CrossEntropyModel(_Classifier):
    """The cross-entropy baseline: encoder + linear classifier, trained end to end.

    Args:
      encoder: a Keras model from images to `[batch, rep_dim]`.
      num_classes: int >= 2.
      **kwargs: forwarded to `keras.Model`.

    Call arguments:
      images: `[batch, H, W, C]` float images.
      training: bool.
    Returns logits `[batch, num_classes]` float32.

    Example:

    >>> model = CrossEntropyModel(encoders.build_encoder("small_cnn", (8, 8, 1)), 10)
    >>> model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    >>> model.fit(train_images_dataset, epochs=30)
    """

    def call(self, images, training=False):
        return self.classifier(self.encoder(images, training=training), training=training)
