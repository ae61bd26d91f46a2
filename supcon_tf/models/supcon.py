"""`SupConModel`: encoder + projection head pre-trained with the SupCon (or SimCLR) loss by `model.fit`."""

from __future__ import annotations

import copy
import dataclasses

import keras
import tensorflow as tf

from supcon_tf import _keras_compat, distribute
from supcon_tf import losses as losses_lib
from supcon_tf import memory as memory_lib
from supcon_tf import online_eval as online_eval_lib
from supcon_tf._checks import is_int, positive_number
from supcon_tf.config import check_ce_weight  # the joint objective's rule, shared with RunConfig
from supcon_tf.models._base import (
    EMBEDDING,
    REPRESENTATION,
    ViewAugmentationMixin,
    build_from_encoder,
    check_compile_kwargs,
    check_model,
    check_num_classes,
    compile_and_build_optimizer,
    encoder_output_dim,
)

METHODS = ("supcon", "simclr")
# `collapse_share` counts an anchor as "at the all-equal value" when its loss, divided by the loss scale
# temperature / base_temperature, is within this many nats of log(N_c - 1) (see `collapse_share`).
COLLAPSE_TOLERANCE = 0.01


# SupConModel's constructor arguments besides encoder and head, in order (attributes and `get_config` keys).
_SUPCON_OPTIONS = (
    "method", "loss_config", "cross_replica", "queue_size", "queue_warmup_steps", "key_momentum", "queue_label_shape",
    "queue_label_dtype",
    "online_eval_classes", "prototype_classes", "contrast_metrics", "collapse_metrics", "ce_weight", "ce_classes",
)
# The loss options a model saved before `loss_config` existed kept as constructor arguments of their own.
_LEGACY_LOSS_KEYS = ("temperature", "base_temperature", "contrast_mode", "variant", "denominator", "positives_cap")


def _checked_loss_config(loss_config, method):
    """`loss_config` as a `losses.LossConfig` (None: the defaults; a dict: its fields), checked against `method`."""
    if loss_config is None:
        loss_config = losses_lib.LossConfig()
    elif isinstance(loss_config, dict):
        loss_config = losses_lib.LossConfig.from_dict(loss_config)
    elif not isinstance(loss_config, losses_lib.LossConfig):
        raise ValueError(
            f"`loss_config` must be a losses.LossConfig (or its dict), received: {type(loss_config).__name__}"
        )
    loss_config.check_method(method)
    return loss_config


def _checked_supcon_options(method, loss_config, cross_replica, queue_size, queue_warmup_steps, key_momentum,
                            queue_label_shape, queue_label_dtype,
                            online_eval_classes, prototype_classes, contrast_metrics, collapse_metrics, ce_weight,
                            ce_classes):
    """SupConModel's options after its argument checks (a ValueError naming the argument), as `{name: value}`."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, received: method={method!r}")
    loss_config = _checked_loss_config(loss_config, method)
    if not isinstance(cross_replica, bool):
        raise ValueError(f"`cross_replica` must be a bool, received: cross_replica={cross_replica!r}")
    queue_size, queue_warmup_steps, key_momentum = memory_lib.check_queue_options(
        queue_size, queue_warmup_steps, key_momentum
    )
    queue_label_shape, queue_label_dtype = memory_lib.check_label_layout(queue_label_shape, queue_label_dtype)
    if online_eval_classes is not None:
        check_num_classes(online_eval_classes)
        online_eval_classes = int(online_eval_classes)
    if prototype_classes is not None:
        check_num_classes(prototype_classes)
        prototype_classes = int(prototype_classes)
        loss_config.check_prototypes(method, "prototype_classes")
    if not isinstance(contrast_metrics, bool):
        raise ValueError(f"`contrast_metrics` must be a bool, received: contrast_metrics={contrast_metrics!r}")
    if not isinstance(collapse_metrics, bool):
        raise ValueError(f"`collapse_metrics` must be a bool, received: collapse_metrics={collapse_metrics!r}")
    ce_weight = check_ce_weight(ce_weight, method)
    if ce_weight > 0:
        if ce_classes is None:
            raise ValueError(f"`ce_classes` (the CE head's classes, >= 2) is needed with ce_weight={ce_weight!r}")
        check_num_classes(ce_classes)
        ce_classes = int(ce_classes)
    elif ce_classes is not None:
        raise ValueError(f"`ce_classes` needs ce_weight > 0, received: ce_classes={ce_classes!r} with ce_weight=0")
    return dict(
        method=method, loss_config=loss_config, cross_replica=cross_replica, queue_size=int(queue_size),
        queue_label_shape=queue_label_shape, queue_label_dtype=queue_label_dtype,
        queue_warmup_steps=int(queue_warmup_steps), key_momentum=key_momentum,
        online_eval_classes=online_eval_classes, prototype_classes=prototype_classes,
        contrast_metrics=contrast_metrics, collapse_metrics=collapse_metrics, ce_weight=ce_weight,
        ce_classes=ce_classes,
    )


def _check_equal_replica_batches(views):
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


def _online_outputs(classifier, representation, labels, num_views):
    """The online classifier on the stop-gradient representation: `(targets, logits, mean CE loss)`, per view."""
    if labels is None:
        raise ValueError("The online classifier (online_eval_classes) needs labels: feed (views, labels) pairs")
    logits = classifier(tf.stop_gradient(representation))
    targets = tf.repeat(tf.cast(labels, tf.int32), num_views)
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))
    return targets, logits, loss


def _joint_ce_outputs(ce_head, representation, labels, num_views, sample_weight=None):
    """The joint objective's CE on the representation of every view: `(targets, logits, replica_share, global_mean)`.

    Every view is an augmented training image, as a CE baseline's input is,
    so each of the `local_batch x views` representations (sample-major, with
    its sample's label) is one CE term; with `sample_weight`, each term
    weighted by its sample's weight. The mean is over the GLOBAL batch's
    terms (`distribute.cross_replica_mean`): `replica_share` carries the
    gradient (into the head and the encoder: no stop-gradient), `global_mean`
    is for logging.
    """
    if labels is None:
        raise ValueError("The joint CE head (ce_weight > 0) needs labels: feed (views, labels) pairs")
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank != 1 or not labels.dtype.is_integer:
        raise ValueError(
            "The joint CE head (ce_weight > 0) needs [batch] integer class ids, received: labels with shape "
            f"{labels.shape} and dtype {labels.dtype.name}"
        )
    logits = ce_head(representation)
    targets = tf.repeat(tf.cast(labels, tf.int32), num_views)
    per_view = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    weight = tf.ones_like(per_view)
    if sample_weight is not None:
        weight = tf.repeat(tf.cast(tf.reshape(sample_weight, [-1]), per_view.dtype), num_views)
    share, global_mean = distribute.cross_replica_mean(tf.reduce_sum(per_view * weight), tf.reduce_sum(weight))
    return targets, logits, share, global_mean


def _contrast_statistics(embeddings, labels, temperature):
    """`online_eval.contrast_statistics` of this replica's anchors against the gathered global batch."""
    gathered = distribute.gather_global(tf.stop_gradient(embeddings), labels)
    return online_eval_lib.contrast_statistics(
        gathered.features, gathered.labels, temperature=temperature, anchor_offset=gathered.offset,
        num_anchor_samples=gathered.num_local,
    )


def mean_cosine(embeddings):
    """The mean of z_i . z_j over the N (N - 1) ordered pairs i != j of the N = batch x views embeddings.

    Computed without the `[N, N]` Gram matrix: with s = sum_i z_i,
    sum_{i != j} z_i . z_j = ||s||^2 - sum_i ||z_i||^2, so the mean is
    `(||s||^2 - sum_i ||z_i||^2) / (N (N - 1))`, exact for any vectors. For
    L2-normalised embeddings (SupConModel's) it is the mean pairwise cosine,
    `(||s||^2 - N) / (N (N - 1))`: 1 when every embedding is the same vector
    (a collapsed representation), 0 for orthogonal ones, and -1 / (N - 1) at
    the least (embeddings summing to zero).

    Args:
      embeddings: `[batch, views, dim]` float (any `[..., dim]` of rank >= 2:
        every row along the last axis is one embedding); computed in float32,
        or float64 for float64 input.

    Returns:
      A scalar tensor; 0 when there are fewer than 2 embeddings.
    """
    embeddings = tf.convert_to_tensor(embeddings)
    if embeddings.shape.rank is not None and embeddings.shape.rank < 2:
        raise ValueError(
            f"`embeddings` must be [batch, views, dim] (rank >= 2), received: embeddings with shape {embeddings.shape}"
        )
    if not embeddings.dtype.is_floating:
        raise ValueError(
            f"`embeddings` must be a float tensor, received: embeddings with dtype {embeddings.dtype.name}"
        )
    dtype = tf.float64 if embeddings.dtype == tf.float64 else tf.float32
    flat = tf.reshape(tf.cast(embeddings, dtype), [-1, tf.shape(embeddings)[-1]])
    count = tf.cast(tf.shape(flat)[0], dtype)
    total = tf.reduce_sum(flat, axis=0)
    pair_sum = tf.reduce_sum(tf.square(total)) - tf.reduce_sum(tf.square(flat))
    return tf.math.divide_no_nan(pair_sum, count * (count - 1.0))


def collapse_share(per_anchor, contrast_size, scale=1.0, tolerance=COLLAPSE_TOLERANCE):
    """The share of anchors whose loss sits at its all-equal value log(N_c - 1).

    When all similarities z_i . z_a of an anchor are equal, every
    log-probability is -log(N_c - 1) and the anchor's loss (either variant)
    is `scale * log(N_c - 1)`, N_c the contrast-set size (N_c - 1 entries
    besides the anchor itself): the anchor cannot tell its positives from its
    negatives. A collapsed representation (all similarities 1) gives it, and
    so do equally spread embeddings (e.g. orthogonal ones, all 0):
    `mean_cosine` tells the two apart. This is the share, among the
    anchors with a positive (`per_anchor.has_positive`), of those whose
    `loss / scale` is within `tolerance` nats of log(N_c - 1). It holds for
    `denominator="all"` without a positives cap (the defaults); other
    denominators and a cap change the all-equal value per anchor.

    Args:
      per_anchor: a `losses.PerAnchorLoss`.
      contrast_size: N_c >= 2 (int or int scalar tensor): the contrast set's
        rows, e.g. views x global batch (+ the queue rows the loss read).
      scale: the loss scale temperature / base_temperature (> 0).
      tolerance: nats (> 0).

    Returns:
      A float32 scalar tensor in [0, 1]; 0 when no anchor has a positive.
    """
    if not isinstance(per_anchor, losses_lib.PerAnchorLoss):
        raise ValueError(f"`per_anchor` must be a PerAnchorLoss, received: {type(per_anchor).__name__}")
    if is_int(contrast_size) and contrast_size < 2:
        raise ValueError(f"`contrast_size` must be >= 2, received: contrast_size={contrast_size!r}")
    if isinstance(contrast_size, (bool, float)):
        raise ValueError(f"`contrast_size` must be an int >= 2, received: contrast_size={contrast_size!r}")
    scale = positive_number(scale, "scale")
    tolerance = positive_number(tolerance, "tolerance")
    loss = tf.cast(per_anchor.loss, tf.float32) / scale
    all_equal = tf.math.log(tf.cast(contrast_size, tf.float32) - 1.0)
    at_value = tf.logical_and(per_anchor.has_positive, tf.abs(loss - all_equal) <= tolerance)
    return tf.math.divide_no_nan(
        tf.reduce_sum(tf.cast(at_value, tf.float32)), tf.reduce_sum(tf.cast(per_anchor.has_positive, tf.float32))
    )


@keras.saving.register_keras_serializable(package="supcon_tf")
class SupConModel(ViewAugmentationMixin, _keras_compat.MultiWorkerFitMixin, keras.Model):
    """Encoder + projection head trained with a supervised (or self-supervised) contrastive loss.

    Args:
      encoder: a built Keras model from images `[batch, H, W, C]` to `[batch, rep_dim]`.
      head: a layer from `[batch, rep_dim]` to L2-normalised embeddings `[batch, dim]`.
      method: `"supcon"` (labels define positives) or `"simclr"` (labels
        ignored; positives are the other views of the same sample).
      loss_config: a `losses.LossConfig` (or its dict; default
        `LossConfig()`): the loss options of `losses.supcon_per_anchor_loss`,
        passed whole (temperature 0.1 for SupCon in the paper, SimCLR 0.5 on
        CIFAR). Options that read labels beyond class ids need the matching
        labels: multi-hot rows for `positive_weighting` / `multi_label`,
        continuous values for `label_kernel`; not with method "simclr".
      cross_replica: under a distribution strategy, contrast each replica's
        anchors with the gathered *global* batch (default True, the exact
        objective); False: with its local batch only (weaker, for comparison).
      queue_size: int >= 0; K > 0 adds a memory queue of past embeddings and
        labels (`model.memory`, a `memory.MemoryQueue`: every step's global
        batch, the same on every replica) to every anchor's contrast set, as
        constants. 0 (default): exactly the plain SupCon step.
      queue_warmup_steps: int >= 0; the queue joins the loss from this step on.
      key_momentum: None (default: the queue holds online embeddings, XBM) or
        m in [0, 1): momentum key networks, owned by the queue, fill it (MoCo).
      queue_label_shape, queue_label_dtype: the queue's label rows
        (`memory.MemoryQueue`'s `label_shape` / `label_dtype`): `()` and
        "int64" (default, class ids); `(classes,)` and "float32" for
        multi-hot labels; `()` or `(k,)` and "float32" for continuous values
        (the named loss options that read them: `loss_config`).
      online_eval_classes: None or C >= 2: an online linear classifier on the
        stop-gradient representation of every view, with its own optimizer
        (`compile(online_optimizer=...)`), logging `online_loss` and
        `online_top1`; its gradient never reaches the encoder. Needs labels.
      prototype_classes: None or C >= 2: C trainable class centres
        (`model.prototypes`, `[C, dim]`, L2-normalised when used) join every
        contrast set with class ids 0..C-1 and their gradient (BCL's
        prototypes; with `denominator="class_balanced"` its full form).
        Needs class-id labels in [0, C).
      contrast_metrics: log `contrast_top1` and `contrast_entropy`
        (`online_eval.contrast_statistics`).
      collapse_metrics: (default True) log `mean_cosine`, the mean cosine
        between the step's embeddings (function `mean_cosine`: every view of
        this replica's batch, pairs i != j; 1 when they all coincide), and,
        for `denominator="all"` without a positives cap, `collapse_share`,
        the share of this replica's anchors whose loss is within
        `COLLAPSE_TOLERANCE` nats of its all-equal value log(N_c - 1), N_c
        the contrast set: views x global batch, plus the queue rows read that
        step (function `collapse_share`). Both come from what the step
        computes anyway (no extra `[N, N]` matrix);
        `resilience.CollapseMonitor` watches `mean_cosine`.
      ce_weight: w >= 0 (default 0: off). w > 0 trains a linear
        classification head (`model.ce_head`, `Dense(ce_classes)`) at the
        same time, on the representation r of every view: the loss is
        `supcon + w * CE`, CE the mean cross-entropy over the global batch's
        `batch x views` views (each with its sample's label; weighted by
        `sample_weight` like the anchors). Unlike the online classifier, the
        CE gradient reaches the encoder, and the head is trained by the main
        optimizer. Logs `ce_loss` (the mean CE) and `ce_top1`. The head is
        the final classifier: `joint_classifier()` (and `export.export_model`)
        give encoder + head as a `CrossEntropyModel`. Method "supcon" only;
        needs `[batch]` int labels.
      ce_classes: the CE head's number of classes C >= 2; required with
        `ce_weight > 0`, refused without.
      **kwargs: forwarded to `keras.Model`.

    `model(images)` returns `{REPRESENTATION: [batch, rep_dim], EMBEDDING: [batch, dim]}`.

    Data: `(views, labels)` or `(views, labels, sample_weight)`, views
    `[batch, views, H, W, C]`, labels `[batch]` int (ignored for SimCLR), e.g.
    `data.make_multiview_dataset`. The logged `loss` is the global-batch loss
    (with the queue once in use), plus `ce_weight x ce_loss` with the joint
    CE head, plus regularisation losses; `evaluate`
    neither reads nor writes the queue. With a policy set
    (`set_view_augmentation`), the views may instead come as `(images,
    view_seeds)` (`data.make_multiview_dataset(..., augment_on="device")`):
    `train_step` and `test_step` make them on the replica's device first
    (`device_views`), and everything after (loss, queue, momentum keys,
    metrics) sees them as it sees views from the pipeline.

    `sample_weight` (`[batch]`, >= 0; also from `fit(class_weight=...)`)
    weights anchors: each anchor's loss is multiplied by its sample's weight
    and the sum over all replicas' anchors is divided by the sum of the
    weights of the anchors with a positive, over all replicas. The contrast
    set, the queue, the online classifier and the contrast metrics are
    unweighted; unit weights give the plain loss.

    State: the queue and its key networks (also `model.key_encoder`,
    `model.key_head`; non-trainable, `compile` re-asserts it) are saved and
    restored by `.keras` files, `save_weights` and `tf.train.Checkpoint`.

    Example:

    >>> model = SupConModel(encoders.build_encoder("small_cnn", (8, 8, 1)), layers.ProjectionHead((128,), 64))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> model.fit(train_views_dataset, epochs=10)

    Reference:
      Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """

    def __init__(self, encoder, head, method="supcon", loss_config=None, cross_replica=True, queue_size=0,
                 queue_warmup_steps=0, key_momentum=None, queue_label_shape=(), queue_label_dtype="int64",
                 online_eval_classes=None, prototype_classes=None,
                 contrast_metrics=False, collapse_metrics=True, ce_weight=0.0, ce_classes=None, **kwargs):
        given = sorted(set(kwargs) & {field.name for field in dataclasses.fields(losses_lib.LossConfig)})
        if given:
            raise ValueError(
                f"SupConModel takes the loss options whole, as loss_config=losses.LossConfig({given[0]}=...), "
                f"received: {', '.join(f'{name}={kwargs[name]!r}' for name in given)}"
            )
        super().__init__(**kwargs)
        check_model("encoder", encoder)
        check_model("head", head)
        self.encoder, self.head = encoder, head
        options = _checked_supcon_options(
            method, loss_config, cross_replica, queue_size, queue_warmup_steps, key_momentum, queue_label_shape,
            queue_label_dtype, online_eval_classes,
            prototype_classes, contrast_metrics, collapse_metrics, ce_weight, ce_classes,
        )
        for name in _SUPCON_OPTIONS:  # method, loss_config, ..., collapse_metrics
            setattr(self, name, options[name])
        self.prototypes = None  # built in `build`, once the embedding size is known
        self.memory = None
        if self.queue_size:
            self.memory = memory_lib.MemoryQueue(
                self.queue_size, self.queue_warmup_steps, self.key_momentum, encoder, head,
                label_shape=self.queue_label_shape, label_dtype=self.queue_label_dtype, name="memory_queue",
            )
        # The memory's key networks (or None), also tracked here: where saved files and checkpoints keep them.
        self.key_encoder = getattr(self.memory, "key_encoder", None)
        self.key_head = getattr(self.memory, "key_head", None)
        self.online_classifier = self.online_optimizer = None
        names = ["loss"] + ["contrast_top1", "contrast_entropy"] * contrast_metrics
        if self.collapse_metrics:
            names.append("mean_cosine")
            if self._has_collapse_share:
                names.append("collapse_share")
        if self.online_eval_classes is not None:
            self.online_classifier = keras.layers.Dense(online_eval_classes, name="online_classifier", dtype="float32")
            names.append("online_loss")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        if self.online_classifier is not None:
            self._trackers["online_top1"] = keras.metrics.SparseCategoricalAccuracy(name="online_top1")
        self.ce_head = None
        if self.ce_weight > 0:
            self.ce_head = keras.layers.Dense(self.ce_classes, name="ce_head", dtype="float32")
            self._trackers["ce_loss"] = keras.metrics.Mean(name="ce_loss")
            self._trackers["ce_top1"] = keras.metrics.SparseCategoricalAccuracy(name="ce_top1")
        build_from_encoder(self)

    def compile(self, optimizer="sgd", online_optimizer=None, **kwargs):
        """Configures the optimizer (the loss is the model's own: `loss`, `metrics`, ... raise a ValueError).

        `online_optimizer`: the online classifier's (default `keras.optimizers.Adam(1e-2)`, the
        digits linear probe's rate: the head must keep up with a moving representation);
        `**kwargs`: forwarded to `keras.Model.compile` (e.g. `jit_compile`, `steps_per_execution`).
        """
        check_compile_kwargs(type(self).__name__, kwargs, ("loss", "loss_weights", "metrics", "weighted_metrics"))
        if online_optimizer is not None and self.online_classifier is None:
            raise ValueError(
                "`online_optimizer` needs an online classifier: construct the model with online_eval_classes=C. "
                f"Received: online_optimizer={online_optimizer!r}"
            )
        if self.online_classifier is not None:
            self.online_optimizer = keras.optimizers.get(online_optimizer or keras.optimizers.Adam(1e-2))
        if self.memory is not None:  # a `model.trainable = True` would hand the key networks to the optimizer
            self.memory.freeze_keys()
        super().compile(optimizer=optimizer, **self._view_compile_kwargs(kwargs))

    def compile_from_config(self, config):
        """Re-compiles a loaded model (optimizer and its state) from its saved compile config."""
        config = keras.saving.deserialize_keras_object(config)
        for key in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            config.pop(key, None)
        compile_and_build_optimizer(self, config)

    @property
    def _has_collapse_share(self):
        """Whether `collapse_share` is logged: its all-equal value log(N_c - 1) needs denominator "all", no cap."""
        return self.collapse_metrics and self.loss_config.denominator == "all" and self.loss_config.positives_cap < 0

    @property
    def metrics(self):
        return list(self._trackers.values())

    @property
    def contrastive_variables(self):
        """The variables the model's loss trains with the main optimizer: encoder, projection head, the class
        centres (`prototype_classes`) and, with `ce_weight > 0`, the joint CE head (never the online classifier,
        which has its own optimizer)."""
        variables = self.encoder.trainable_variables + self.head.trainable_variables
        variables += [self.prototypes] if self.prototypes is not None else []
        return variables + ([] if self.ce_head is None else self.ce_head.trainable_variables)

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        rep_dim = encoder_output_dim(self.encoder)
        if not self.head.built:
            self.head.build((None, rep_dim))
        if self.online_classifier is not None and not self.online_classifier.built:
            self.online_classifier.build((None, rep_dim))
        if self.ce_head is not None and not self.ce_head.built:
            self.ce_head.build((None, rep_dim))
        embedding_dim = self.head.compute_output_shape((None, rep_dim))[-1]
        if self.prototype_classes is not None and self.prototypes is None:
            self.prototypes = self.add_weight(
                name="prototypes", shape=(self.prototype_classes, embedding_dim), initializer="random_normal",
                trainable=True,
            )
        if self.memory is not None and not self.memory.built:  # after encoder and head: it copies them
            self.memory.build((None, embedding_dim))
        self.built = True

    def call(self, images, training=False):
        representation = self.encoder(images, training=training)
        return {REPRESENTATION: representation, EMBEDDING: self.head(representation, training=training)}

    def embed_views(self, views, training=False, return_representation=False):
        """`[batch, views, H, W, C]` -> `[batch, views, dim]`, all views as one batch (batch norm sees them all).

        With `return_representation`, also the encoder outputs `[batch * views, rep_dim]` (sample-major).
        """
        flat, shape = memory_lib.flatten_views(views)
        outputs = self(flat, training=training)
        embedding = tf.reshape(outputs[EMBEDDING], [shape[0], shape[1], -1])
        return (embedding, outputs[REPRESENTATION]) if return_representation else embedding

    def embed_keys(self, views):
        """The momentum key networks' embeddings of every view (`memory.MemoryQueue.embed_keys`)."""
        if self.memory is None:
            raise ValueError("`embed_keys` needs a momentum encoder: construct the model with key_momentum=m")
        return self.memory.embed_keys(views)

    def compute_contrastive_loss(self, embeddings, labels, use_queue=False, sample_weight=None):
        """Loss of this replica's anchors `[local_batch, views, dim]` against the global batch (and the queue).

        `labels`: `[local_batch]` (ignored for SimCLR); `use_queue`: add `memory.read()` (nothing during the
        warm-up) to the contrast set; `sample_weight`: optional `[local_batch]` anchor weights (class docstring).
        Returns `(replica_loss, global_loss)` (`distribute.cross_replica_mean`): this replica's share (their sum
        over replicas is the global loss, so Keras' summed gradients are its gradient) and the global loss, for
        logging. With one replica both are the plain loss.
        """
        return self._contrastive_loss(embeddings, labels, use_queue, sample_weight)[:2]

    def _contrastive_loss(self, embeddings, labels, use_queue=False, sample_weight=None):
        """`compute_contrastive_loss`'s `(replica_loss, global_loss)`, and the step's `collapse_share` (or None)."""
        labels = labels if self.method == "supcon" else None
        if self.cross_replica:
            gathered = distribute.gather_global(embeddings, labels)
        else:  # each replica contrasts only its own batch: a weaker objective, for comparison only
            gathered = distribute.GatheredBatch(embeddings, labels, tf.constant(0), tf.shape(embeddings)[0])
        queue = {}
        if use_queue:  # a dynamic number of rows, which tf.function and XLA handle alike
            queue_features, queue_labels = self.memory.read()
            queue = dict(queue_features=queue_features, queue_labels=None if labels is None else queue_labels)
        centres = {}
        if self.prototypes is not None:  # class centres 0..C-1, unit length like the head's embeddings
            centres = dict(
                prototypes=tf.math.l2_normalize(tf.cast(self.prototypes, embeddings.dtype), axis=-1),
                prototype_labels=tf.range(self.prototype_classes),
            )
        per_anchor = losses_lib.supcon_per_anchor_loss(
            gathered.features, gathered.labels, anchor_offset=gathered.offset, num_anchor_samples=gathered.num_local,
            **self.loss_config.kwargs(), **queue, **centres,
        )
        share = None
        if self._has_collapse_share:  # the contrast set: every view of the gathered batch, the queue rows, centres
            contrast_size = tf.shape(gathered.features)[0] * tf.shape(gathered.features)[1]
            if queue:
                contrast_size += tf.shape(queue["queue_features"])[0]
            if centres:
                contrast_size += self.prototype_classes
            share = collapse_share(tf.nest.map_structure(tf.stop_gradient, per_anchor), contrast_size,
                                   scale=self.loss_config.scale)
        loss, count = per_anchor.loss, tf.cast(per_anchor.has_positive, per_anchor.loss.dtype)
        if sample_weight is not None:  # [local_batch] -> [local_batch, 1, ...]: one weight for all views of a sample
            shape = tf.concat([tf.shape(loss)[:1], tf.ones([tf.rank(loss) - 1], tf.int32)], axis=0)
            weight = tf.reshape(tf.cast(sample_weight, loss.dtype), shape)
            loss, count = loss * weight, count * weight
        return (*distribute.cross_replica_mean(tf.reduce_sum(loss), tf.reduce_sum(count)), share)

    def compute_ce_loss(self, representation, labels, sample_weight=None):
        """The joint objective's CE term (`ce_weight > 0`): `(replica_share, global_mean)`, unweighted by w.

        `representation`: `[local_batch * views, rep_dim]`, sample-major (`embed_views(...,
        return_representation=True)`); `labels`: `[local_batch]` int; `sample_weight`: optional `[local_batch]`.
        The model's loss adds `ce_weight` times it to the contrastive loss.
        """
        if self.ce_head is None:
            raise ValueError("`compute_ce_loss` needs the joint CE head: construct the model with ce_weight > 0")
        num_views = tf.shape(representation)[0] // tf.shape(labels)[0]
        return _joint_ce_outputs(self.ce_head, representation, labels, num_views, sample_weight)[2:]

    def joint_classifier(self):
        """The joint objective's final classifier: a `CrossEntropyModel` of this encoder (shared, not copied) and a
        copy of the CE head's weights, for `evaluate`, `predict` and `export.export_classifier`."""
        if self.ce_head is None:
            raise ValueError("`joint_classifier` needs the joint CE head: construct the model with ce_weight > 0")
        from supcon_tf.models.classifiers import CrossEntropyModel

        classifier = CrossEntropyModel(self.encoder, self.ce_classes, name=f"{self.name}_classifier")
        if not classifier.classifier.built:
            classifier.classifier.build((None, encoder_output_dim(self.encoder)))
        classifier.classifier.set_weights(self.ce_head.get_weights())
        return classifier

    def _unpack(self, data):
        inputs, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        views = self._views_of(inputs)  # (images, view_seeds) batches: the views, made here (set_view_augmentation)
        if self.method == "supcon" and labels is None:
            raise ValueError(
                "SupConModel(method='supcon') needs labels: feed (views, labels) pairs, "
                "or use method='simclr'. Received: data without labels"
            )
        _check_equal_replica_batches(views)
        return views, labels, sample_weight

    def _regularization_loss(self):
        # Every replica adds the same weight penalty and Keras sums gradients over replicas: divide once.
        return tf.add_n(self.losses) / distribute.num_replicas_in_sync() if self.losses else 0.0

    def train_step(self, data):
        views, labels, sample_weight = self._unpack(data)
        online = None
        with tf.GradientTape() as tape, tf.GradientTape() as online_tape:
            embeddings, representation = self.embed_views(views, training=True, return_representation=True)
            use_queue = self.memory is not None
            loss, global_loss, share = self._contrastive_loss(embeddings, labels, use_queue, sample_weight)
            joint = None
            if self.ce_head is not None:  # supcon + w * CE, the CE's gradient reaching the encoder
                joint = _joint_ce_outputs(self.ce_head, representation, labels, tf.shape(views)[1], sample_weight)
                loss += self.ce_weight * joint[2]
                global_loss += self.ce_weight * joint[3]
            regularization = self._regularization_loss()
            # Identity unless the optimizer is a LossScaleOptimizer (mixed precision).
            scaled_loss = self.optimizer.scale_loss(loss + regularization)
            if self.online_classifier is not None:
                online = _online_outputs(self.online_classifier, representation, labels, tf.shape(views)[1])
                online_scaled = online[2] / distribute.num_replicas_in_sync()  # Keras sums gradients over replicas
        self.optimizer.apply(tape.gradient(scaled_loss, self.contrastive_variables), self.contrastive_variables)
        if online is not None:
            online_variables = self.online_classifier.trainable_variables
            self.online_optimizer.apply(online_tape.gradient(online_scaled, online_variables), online_variables)
        if self.memory is not None:  # after the optimizer step (the queue was read above, before this write)
            self.memory.update(embeddings, views, labels if self.method == "supcon" else None)
        return self._logs(
            global_loss + regularization * distribute.num_replicas_in_sync(), embeddings, labels, online, share, joint
        )

    def test_step(self, data):
        views, labels, sample_weight = self._unpack(data)
        embeddings, representation = self.embed_views(views, training=False, return_representation=True)
        _, global_loss, share = self._contrastive_loss(embeddings, labels, sample_weight=sample_weight)
        joint = None
        if self.ce_head is not None:
            joint = _joint_ce_outputs(self.ce_head, representation, labels, tf.shape(views)[1], sample_weight)
            global_loss += self.ce_weight * joint[3]
        online = None
        if self.online_classifier is not None:
            online = _online_outputs(self.online_classifier, representation, labels, tf.shape(views)[1])
        loss = global_loss + self._regularization_loss() * distribute.num_replicas_in_sync()
        return self._logs(loss, embeddings, labels, online, share, joint)

    def _logs(self, loss, embeddings, labels, online, share=None, joint=None):
        """Updates the metric trackers with the step's loss and (unweighted) statistics; returns the logs."""
        self._trackers["loss"].update_state(loss)
        if self.collapse_metrics:
            self._trackers["mean_cosine"].update_state(mean_cosine(tf.stop_gradient(embeddings)))
            if share is not None:
                self._trackers["collapse_share"].update_state(share)
        if self.contrast_metrics:
            labels = labels if self.method == "supcon" else None
            top1, entropy = _contrast_statistics(embeddings, labels, self.loss_config.temperature)
            self._trackers["contrast_top1"].update_state(top1)
            self._trackers["contrast_entropy"].update_state(entropy)
        if online is not None:
            targets, logits, online_loss = online
            self._trackers["online_loss"].update_state(online_loss)
            self._trackers["online_top1"].update_state(targets, logits)
        if joint is not None:
            targets, logits, _, ce_loss = joint
            self._trackers["ce_loss"].update_state(ce_loss)
            self._trackers["ce_top1"].update_state(targets, logits)
        return self._finalize_logs({m.name: m.result() for m in self.metrics})

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder),
                      head=keras.saving.serialize_keras_object(self.head))
        config.update({name: getattr(self, name) for name in _SUPCON_OPTIONS})
        config["loss_config"] = self.loss_config.kwargs()
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialisation consumes nested dicts
        legacy = {key: config.pop(key) for key in _LEGACY_LOSS_KEYS if key in config}
        if legacy:  # a model saved before `loss_config`: its loss options were arguments of their own
            config["loss_config"] = legacy
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
