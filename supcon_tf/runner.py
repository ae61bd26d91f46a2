"""Runs one training stage from a `RunConfig`: checks inputs, builds data, model and optimizer, fits, evaluates, saves.

The run folder (`config.model_dir`) and its lifecycle, new -> running ->
finishing -> finished, are described once, in `supcon_tf.run_folder`. In short:
a kill at any moment leaves a folder that the same call resumes at the newest
step-level backup or completes; a finished folder is left as it is unless
`overwrite=True`; SIGINT / SIGTERM write a backup after the current step and
raise `resilience.Interrupted`; a diverging loss raises
`resilience.Diverged` with the last good backup kept; a collapsed
pre-training (`resilience.CollapseMonitor`) prints one line, or raises
`resilience.Collapsed` with `stop_on_collapse`.

Every input check that can fail (flags, data set size against the batch,
classes) runs before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from typing import NamedTuple

import keras
import tensorflow as tf

import numpy as np

from supcon_tf import _faults, augment, checkpointing, data, distribute, encoders, export, layers, models, resilience
from supcon_tf.config import TFDS_DATASETS, RunConfig
from supcon_tf.run_folder import CLASSES, RunFolder


def resolve_cluster(config):
    """The multi-worker cluster of `config` (`distribute.resolve_cluster` of its cluster fields); None without one.

    With cluster 'slurm' this also sets the process's TF_CONFIG, from which
    every part of a run learns its task (the chief's writes, the per-worker
    backups, the run folder's lock): `run` calls it before anything else.
    """
    if config.runtime.strategy != "multi_worker":
        return None
    return distribute.resolve_cluster(
        config.runtime.cluster, port_base=config.runtime.cluster_port_base, gpus_per_task=config.runtime.cluster_gpus_per_task
    )


def build_strategy(config, cluster_resolver=None):
    """The configured strategy; checks that the global batch splits evenly over its replicas.

    `cluster_resolver`: the multi-worker cluster `resolve_cluster(config)`
    returned (resolved here when None).
    """
    if config.runtime.cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.runtime.cpu_devices)
    if cluster_resolver is None:
        cluster_resolver = resolve_cluster(config)
    strategy = distribute.get_strategy(config.runtime.strategy, tpu=config.runtime.tpu, cluster_resolver=cluster_resolver)
    replicas = strategy.num_replicas_in_sync
    if config.runtime.jit_compile and replicas > 1 and config.runtime.strategy != "tpu":
        # Keras 3 compiles the whole train step, optimizer updates of mirrored
        # variables included, and XLA cannot place those across devices
        # (keras-team/keras#19005): it crashes mid-fit. Refuse it up front.
        raise ValueError(
            f"`jit_compile` cannot be combined with strategy={config.runtime.strategy!r} over {replicas} replicas (XLA cannot "
            "compile a train step that updates mirrored variables, keras-team/keras#19005): drop --jit_compile, or "
            "train on one device"
        )
    if config.optim.batch_size % replicas:
        raise ValueError(
            f"`batch_size` must be divisible by the number of replicas ({replicas}), "
            f"received: batch_size={config.optim.batch_size}"
        )
    return strategy


def augmentation(config):
    """The training augmentation policy of `config` (`augmentation`, `image_size`, `crop_scale_min`, `flip`)."""
    if config.data.augmentation == "none":
        return augment.get_augmentation("none", config.data.image_size)
    return augment.get_augmentation(
        config.data.augmentation, config.data.image_size, crop_scale=(config.data.crop_scale_min, 1.0), flip=config.data.flip
    )


def train_dataset(config, source, start_batch=0):
    """Training batches: `(views [B, V, ...], labels)` for contrastive methods, `(images, labels)` for CE.

    `config.data.sampler` picks shuffled batches (`data.make_multiview_dataset`) or
    P x K class-balanced ones (`data.make_class_balanced_dataset`, P =
    batch_size / samples_per_class). The stream is endless, and batch `k` is
    a pure function of `(config.runtime.seed, k)`; `start_batch` starts it at batch
    `k` (resuming at a step).

    With `config.runtime.data_service` the same batches are built and augmented on
    the tf.data service's workers and read here (`supcon_tf.data_service`:
    batch `k` has the same content; with several workers the arrival order
    is first come, first served).

    With `config.data.augment_on == "device"` the batches are `((images,
    view_seeds), labels)` instead (CE and linear too, with one view); the
    model built by `build_model` makes the views in its train step.
    """
    num_views = config.data.num_views if config.method in ("supcon", "simclr") else 1
    stream = dict(
        num_views=num_views, augment=augmentation(config), seed=config.runtime.seed, start_batch=start_batch,
        augment_on=config.data.augment_on,
    )
    if config.runtime.data_service:
        from supcon_tf import data_service

        dataset = data_service.sharded_multiview_dataset(source, batch_size=config.optim.batch_size, **stream)
    elif config.data.sampler == "class_balanced":
        dataset = data.make_class_balanced_dataset(
            source,
            classes_per_batch=config.optim.batch_size // config.data.samples_per_class,
            samples_per_class=config.data.samples_per_class,
            repeat=True,
            **stream,
        )
    else:
        dataset = data.make_multiview_dataset(source, batch_size=config.optim.batch_size, repeat=True, **stream)
    if num_views == 1 and config.data.augment_on == "host":  # device: the classifier's train step takes the one view
        dataset = dataset.map(lambda views, labels: (views[:, 0], labels))
    if config.runtime.data_service:
        dataset = data_service.distribute_through(
            dataset, config.runtime.data_service, job_name=data_service.job_name(config.runtime.seed, start_batch)
        )
    return distribute.shard_by_data(dataset)


def validation_dataset(config, source):
    """Validation batches carved from the training split, in the form the stage's `fit` expects.

    Contrastive methods: every sample seen in `num_views` views made with the
    training augmentation from a fixed seed (the same views every epoch), so
    `val_loss` and the online/contrast metrics are comparable across epochs;
    batches are whole (`drop_remainder`) as the cross-replica loss needs;
    made where `config.data.augment_on` says, like the training batches.
    CE and linear: the plain evaluation pipeline.
    """
    if config.method in ("supcon", "simclr"):
        return data.make_multiview_dataset(
            source,
            batch_size=config.optim.batch_size,
            num_views=config.data.num_views,
            augment=augmentation(config),
            seed=config.runtime.seed,
            shuffle=False,
            augment_on=config.data.augment_on,
        )
    return eval_dataset(config, source)


def eval_dataset(config, source, batch_size=None):
    return data.make_eval_dataset(source, batch_size=batch_size or config.optim.batch_size, image_size=config.data.image_size)


def build_optimizer(config, steps_per_epoch):
    """SGD / LARS / Adam with linear warm-up then cosine decay over the whole run, peaking at the resolved learning rate."""
    from supcon_tf import optimizers

    schedule = optimizers.WarmupCosineDecay(
        config.resolved_learning_rate,
        total_steps=steps_per_epoch * config.optim.epochs,
        warmup_steps=steps_per_epoch * config.optim.warmup_epochs,
    )
    if config.optim.optimizer == "lars":
        optimizer = optimizers.LARS(schedule, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay)
    elif config.optim.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, weight_decay=config.optim.weight_decay or None)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay or None)
    if config.runtime.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def build_encoder(config, image_shape):
    """The encoder `config.model.encoder` for images of `image_shape`, initialised from `config.model.encoder_weights` if set.

    `config.model.encoder` is a registered name, "keras.applications:<Name>" or a
    user build function "<module>:<function>" / "<file.py>:<function>"
    (imported here, which runs that module; see docs/backbones.md). Raises
    ValueError naming `encoder` or `encoder_weights` when it cannot be built
    or initialised.
    """
    kwargs = {"width": config.model.encoder_width} if config.model.encoder == "small_cnn" else {}
    for field, argument in (
        ("vit_hidden_dim", "hidden_dim"), ("vit_depth", "depth"), ("vit_num_heads", "num_heads"), ("vit_mlp_dim", "mlp_dim")
    ):
        if config.setting(field) is not None:
            kwargs[argument] = config.setting(field)
    encoder = encoders.build_encoder(config.model.encoder, image_shape, synchronized_bn=config.model.synchronized_bn, **kwargs)
    if config.model.encoder_weights:
        try:
            encoders.load_encoder_weights(encoder, config.model.encoder_weights)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"`encoder_weights`: {error}") from None
    return encoder


def build_model(config, image_shape, num_classes, steps_per_epoch, label_spec=None):
    """The compiled model of `config.method` (call inside the strategy's scope).

    "supcon" / "simclr": SupConModel (encoder + projection head, memory queue
    and momentum encoder when configured); "ce": CrossEntropyModel; "linear":
    LinearProbe on the frozen encoder of `config.evaluation.pretrained`. The optimizer's
    schedule spans `config.optim.epochs` epochs of `steps_per_epoch` steps. With
    `label_spec`: the training labels' `tf.TensorSpec` (per example), which
    the memory queue's label rows follow: float rows for a labels file's
    multi-hot or continuous labels, class ids otherwise. With
    `config.data.augment_on == "device"` the model gets the training augmentation
    (`set_view_augmentation`), which `train_dataset`'s batches then need.
    """
    optimizer = build_optimizer(config, steps_per_epoch)
    if config.method in ("supcon", "simclr"):
        model = models.SupConModel(
            build_encoder(config, image_shape),
            layers.ProjectionHead((config.model.head_hidden,) if config.model.head_hidden else (), config.model.embedding_dim),
            method=config.method,
            loss_config=config.loss,
            queue_size=config.model.queue_size,
            queue_warmup_steps=config.model.queue_warmup_steps,
            key_momentum=config.model.key_momentum,
            **_queue_label_layout(label_spec),
            online_eval_classes=num_classes if config.evaluation.online_eval else None,
            prototype_classes=num_classes if config.model.prototypes else None,
            contrast_metrics=config.evaluation.online_eval,
            ce_weight=config.model.ce_weight,
            ce_classes=num_classes if config.model.ce_weight > 0 else None,
        )
    elif config.method == "ce":
        model = models.CrossEntropyModel(build_encoder(config, image_shape), num_classes)
    else:
        model = models.LinearProbe(load_pretrained_encoder(config.evaluation.pretrained, image_shape), num_classes)
    if config.data.augment_on == "device":
        model.set_view_augmentation(augmentation(config))
    model.compile(optimizer=optimizer, jit_compile=config.runtime.jit_compile)
    return model


def _queue_label_layout(label_spec):
    """SupConModel's queue label rows for training labels of `label_spec`: float rows, or the default class ids."""
    if label_spec is None or label_spec.dtype.is_integer:
        return {}
    return dict(queue_label_shape=tuple(label_spec.shape), queue_label_dtype="float32")


load_pretrained_encoder = encoders.load_pretrained_encoder  # checks the file, its kind, the shape, finiteness


def check_inputs(config, strategy, num_train, num_classes):
    """The up-front checks that need the data: raises ValueError naming the flag and the fix.

    Returns:
      steps per epoch of the stage.
    """
    replicas = strategy.num_replicas_in_sync
    if num_classes is not None and num_classes < 2 and config.method != "simclr":
        raise ValueError(
            f"`num_classes` of dataset {config.data.dataset!r} is {num_classes}: method {config.method!r} needs at "
            "least 2 classes"
        )
    if config.method == "linear" and config.evaluation.cache_features:
        return -(-num_train // config.optim.batch_size)  # the cached probe keeps the last, smaller batch
    if num_train is not None and num_train < config.optim.batch_size:
        raise ValueError(
            f"`batch_size` ({config.optim.batch_size}, global over {replicas} replica(s)) is larger than the training "
            f"split ({num_train} examples), which gives zero steps per epoch: use --batch_size <= {num_train}"
        )
    if config.optim.batch_size // replicas < 1:
        raise ValueError(
            f"`batch_size` ({config.optim.batch_size}) gives fewer than one example per replica ({replicas} replicas)"
        )
    return config.optim.steps_per_epoch or max(1, (num_train or config.optim.batch_size) // config.optim.batch_size)


def _names_source(config):
    if config.data.dataset == "digits":
        return "digits: the digit each class shows"
    if config.data.dataset in TFDS_DATASETS:
        return f"tfds {config.data.dataset}: the label feature's names"
    if config.data.labels_file:
        return f"labels file {config.data.labels_file}: the classes its train rows name, sorted"
    return f"image folder {os.path.join(config.data.data_dir, 'train')}: its class sub-folders, sorted"


def _already_finished(folder):
    if checkpointing.is_chief():
        folder.delete_backups()  # a kill after the FINISHED marker can leave them
    metrics = dict(folder.metrics() or {})
    metrics["already_finished"] = True
    return metrics


def run(config: RunConfig, *, overwrite=False, callbacks=()):
    """Runs (or resumes, or completes) the stage `config.method`; returns the metrics dict (also in metrics.json).

    This is the one training path: the binaries, the demo, sweeps, studies and
    reports all train a stage by calling it.

    Args:
      config: the stage's `RunConfig`.
      overwrite: on a finished (or unfinished) run folder, start afresh: the
        old run is renamed to the sibling `<model_dir>.previous-<id>` and
        deleted only when the new run finishes. Only a run folder that
        supcon_tf created is replaced (`supcon_tf.ownership`). Without it a
        finished folder is left untouched and its metrics are returned with
        `already_finished=True`.
      callbacks: extra Keras callbacks for `fit` (e.g. a tuner's), after the
        run folder's own.

    Returns:
      `{"method", "train_seconds" (summed over restarts), "epochs",
      "restarts", "final_train_loss", "final_logs" (the last epoch's logs,
      `val_*` included with `validation_fraction`), "collapsed" (supcon /
      simclr: false, or the `resilience.CollapseMonitor` record `{"epoch",
      "first_epoch", "mean_cosine", "threshold", "span"}`, epochs 0-based;
      ce / linear: null, not monitored), and with `evaluate_test`, for
      ce / linear: "test_loss", "test_top1"}`.

    Raises:
      ValueError / FileNotFoundError: bad input, before anything is written;
        also a multi-worker cluster that does not resolve (`resolve_cluster`:
        no or a malformed TF_CONFIG, `cluster='slurm'` outside a Slurm step),
        a `model_dir` that is a file, a non-empty folder that supcon_tf
        did not create, or a run folder another process is writing (its lock).
      resilience.Interrupted: SIGINT / SIGTERM; a backup at the step is written.
      resilience.Diverged: non-finite or exploding loss; the last good backup stays.
      resilience.Collapsed: `stop_on_collapse` and a collapsed representation; the backups written before the
        epoch preceding the collapsed epochs stay.
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"`config` must be a RunConfig, received: {type(config).__name__}")
    if not isinstance(overwrite, bool):
        raise ValueError(f"`overwrite` must be a bool, received: overwrite={overwrite!r}")
    callbacks = list(callbacks)
    if not all(isinstance(c, keras.callbacks.Callback) for c in callbacks):
        raise ValueError(f"`callbacks` must be Keras callbacks, received: callbacks={callbacks!r}")
    cluster_resolver = resolve_cluster(config)  # first: a Slurm task learns its identity (TF_CONFIG) here
    folder = RunFolder(config.model_dir)
    folder.check_claimable()  # a file, or a folder with content supcon_tf did not write: refused, nothing touched
    if overwrite:
        folder.check_replaceable()
    elif folder.phase() == "finished" and not os.path.exists(folder.backup_dir):
        return _already_finished(folder)  # reading only: a finished folder is left byte-identical
    if config.runtime.data_service:  # a dead or wrong dispatcher fails here, in bounded time, before anything is written
        from supcon_tf import data_service

        data_service.wait_for_dispatcher(config.runtime.data_service, config.runtime.data_service_timeout)
    with folder.claimed():  # the marker, and this process's lock: a second writer is refused here
        return _run_claimed(config, folder, overwrite, callbacks, cluster_resolver)


def _run_claimed(config, folder, overwrite, callbacks, cluster_resolver):
    """`run` inside the claimed, locked run folder: prepare (reading only), start, train, finish."""
    if not overwrite:
        done = _completed(config, folder)
        if done is not None:
            return done
    stage = _prepare(config, cluster_resolver)  # every check that can fail, before the first write
    restarts = _start(config, folder, overwrite, stage)
    trainer = _StageTrainer(
        config, folder, stage.model, stage.train_source, stage.steps_per_epoch, stage.validation_source, callbacks
    )
    logs = trainer.train(stage.process_start)
    return _finish(config, folder, stage, trainer, logs, restarts)


def _completed(config, folder):
    """The metrics of a folder that needs no training (finished, or only its FINISHED marker missing), else None.

    Also refuses (ValueError) a folder whose recorded config differs from `config`.
    """
    if folder.phase() == "finished":
        return _already_finished(folder)
    folder.check_resumable(config.to_dict())
    if folder.outputs_complete():  # every final output written, only the FINISHED marker missing
        if checkpointing.is_chief():
            folder.remove_temporaries()
            folder.finish()
        return _already_finished(folder)
    return None


class _Prepared(NamedTuple):
    """What `_prepare` built: the stage's sources, model (in its strategy's scope) and facts, before anything is
    written."""

    model: keras.Model
    train_source: tf.data.Dataset
    validation_source: tf.data.Dataset | None
    test_source: tf.data.Dataset | None
    steps_per_epoch: int
    class_names: list | None
    process_start: float


def _prepare(config, cluster_resolver):
    """Global TensorFlow state, the data (split), the checks and the model: reading only, nothing written."""
    process_start = time.time()
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.runtime.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.runtime.seed)  # before any dataset or weight is built
    strategy = build_strategy(config, cluster_resolver)
    validation_source = None
    if config.evaluation.validation_fraction:
        split = data.split_train_validation(config, config.evaluation.validation_fraction, config.runtime.seed)
        train_source, num_train, num_classes = split.train, split.num_train, split.num_classes
        validation_source = split.validation
        if config.method in ("supcon", "simclr") and split.num_validation < config.optim.batch_size:
            raise ValueError(
                f"`validation_fraction` {config.evaluation.validation_fraction} gives {split.num_validation} validation "
                f"examples, fewer than one batch (--batch_size {config.optim.batch_size}): raise the fraction or lower "
                "the batch"
            )
    else:
        train_source, num_train, num_classes = data.load_source(config, "train")
    # Only classifiers are evaluated on the test split (pre-training never reads it).
    test_source = (
        data.load_source(config, "test")[0] if config.evaluation.evaluate_test and config.method in ("ce", "linear")
        else None
    )
    steps_per_epoch = check_inputs(config, strategy, num_train, num_classes)
    image_shape = tuple(next(iter(eval_dataset(config, train_source, batch_size=1)))[0].shape[1:])

    # The model is built before the first write too: a bad --encoder, --encoder_weights or --pretrained fails here.
    with strategy.scope():
        label_spec = train_source.element_spec[1]
        model = build_model(config, image_shape, num_classes, steps_per_epoch, label_spec=label_spec)
        models.build_optimizer_state(model)  # so a backup's optimizer state can load

    names = data.class_names(config)
    if len(names) != num_classes:  # --num_classes beyond the data's classes: ids without names
        names = None
    return _Prepared(model, train_source, validation_source, test_source, steps_per_epoch, names,
                     process_start)


def _start(config, folder, overwrite, stage):
    """The first write: the folder enters (or re-enters) `running` (replacing the old run with `overwrite`);
    returns the number of restarts."""
    if not checkpointing.is_chief():
        return folder.state().get("restarts", 0)
    if overwrite:
        folder.replace()  # the old run stays beside it, as <model_dir>.previous-<id>, until this one finishes
    restarts = folder.start(config.to_dict())
    if stage.class_names is not None:
        folder.write_json(CLASSES, {"class_names": stage.class_names, "source": _names_source(config)})
    return restarts


def _finish(config, folder, stage, trainer, history_logs, restarts):
    """Every epoch is trained: metrics, test evaluation, the final outputs, then the FINISHED marker."""
    model = stage.model
    train_seconds = trainer.train_seconds
    if checkpointing.is_chief():
        folder.enter_finishing(train_seconds=round(train_seconds, 1))
    metrics = {
        "method": config.method,
        "train_seconds": round(train_seconds, 1),
        "epochs": config.optim.epochs,
        "restarts": restarts,
        "final_train_loss": float(history_logs.get("loss", np.nan)),
        "final_logs": {name: float(value) for name, value in history_logs.items()},
        "collapsed": trainer.collapsed if trainer.monitors_collapse else None,
    }
    if config.method in ("ce", "linear") and config.evaluation.evaluate_test:
        loss, accuracy = model.evaluate(eval_dataset(config, stage.test_source), verbose=0)
        metrics.update(test_loss=float(loss), test_top1=float(accuracy))
        if not np.isfinite(loss):
            metrics["warning"] = "the test loss is not finite"
    if checkpointing.is_chief():
        checkpointing.save_model_atomically(model, folder.path("model.keras"))
        if config.runtime.export:
            classifier = export.served_classifier(model) is not None  # ce, linear, supcon with --ce_weight
            export.export_model(
                model, folder.path("saved_model"), overwrite=True, class_names=stage.class_names if classifier else None
            )
        folder.write_json("metrics.json", metrics)
        folder.finish()
    return metrics


def resume_line(epoch, step, weights_path, epochs, steps_per_epoch):
    """The line a resumed run prints: where it continues (`epoch` 0-based, shown from 1 as Keras does) and the backup.

    The backup's time is its weights file's modification time, local, to the second.
    """
    try:
        written = datetime.datetime.fromtimestamp(os.path.getmtime(weights_path)).astimezone()
        written = written.isoformat(sep=" ", timespec="seconds")
    except OSError:
        written = "an unknown time"
    if epoch >= epochs:
        return f"resuming after the last epoch ({epochs}): training is complete (backup written at {written})"
    return f"resuming from epoch {epoch + 1} step {step} of {steps_per_epoch} (backup written at {written})"


class _StageTrainer:
    """Trains a built model through `fit`, from the newest backup to the last epoch (one process's share).

    A resumed run that stopped inside epoch e at step s continues with two
    `fit` calls: the rest of epoch e (its metric running means restored), then
    epochs e+1.. with full epochs. The input stream of each call starts at its
    global step, so the batches are those an uninterrupted run sees.
    """

    def __init__(self, config, folder, model, train_source, steps_per_epoch, validation_source=None, extra=()):
        self.extra_callbacks = list(extra)
        self.monitors_collapse = config.method in ("supcon", "simclr")  # SupConModel logs mean_cosine
        self.collapsed = False  # or the CollapseMonitor's record, after `train`
        self.config = config
        self.folder = folder
        self.model = model
        self.steps_per_epoch = steps_per_epoch
        self.store = checkpointing.BackupStore(folder.backup_dir)
        self.train_seconds = 0.0
        self.validation = None
        if config.method == "linear" and config.evaluation.cache_features:
            # The probe itself, fed {REPRESENTATION: features} computed once (models.LinearProbe).
            features, labels = model.extract_features(eval_dataset(config, train_source))
            self.stream = lambda start: model.feature_inputs(
                data.make_feature_batches(
                    features, labels, batch_size=config.optim.batch_size, seed=config.runtime.seed, start_batch=start
                )
            )
            if validation_source is not None:
                val_features, val_labels = model.extract_features(eval_dataset(config, validation_source))
                self.validation = model.feature_inputs(
                    tf.data.Dataset.from_tensor_slices((val_features, val_labels)).batch(config.optim.batch_size)
                )
        else:
            self.stream = lambda start: train_dataset(config, train_source, start_batch=start)
            if validation_source is not None:
                self.validation = validation_dataset(config, validation_source)

    def _record_collapse(self, record):
        """The chief appends a detected collapse to run_state.json's "collapses"."""
        if checkpointing.is_chief():
            self.folder.record_collapse(record)

    def _callbacks(self, signals, guard, monitor, first_step, first_metrics, clock):
        config, folder = self.config, self.folder
        task_type, task_index = checkpointing.task_type_and_index()
        backup = checkpointing.StepBackup(
            self.store,
            steps_per_epoch=self.steps_per_epoch,
            every_steps=config.runtime.backup_every_steps,
            first_step=first_step,
            first_metrics=first_metrics,
            signals=signals,
            meta=lambda: {
                "train_seconds": clock(), "reference_loss": guard.reference, "config": config.to_dict(),
                "collapse": None if monitor is None else monitor.state(),
            },
        )
        guard.position = backup.position
        callbacks = [guard]
        if checkpointing.is_chief():
            callbacks.append(checkpointing.RunCSVLogger(folder.csv_path))
        callbacks.append(
            keras.callbacks.TensorBoard(folder.path("logs", f"{task_type}_{task_index}"), update_freq="epoch")
        )
        if monitor is not None:  # after the epoch's CSV row, before the checkpoint and backup (none after a stop)
            callbacks.append(monitor)
        callbacks += [
            checkpointing.ChiefModelCheckpoint(
                folder.path("checkpoints", "latest.keras"), period=config.runtime.checkpoint_every
            ),
            *self.extra_callbacks,
            backup,  # last: after the CSV row, the checkpoint and the caller's callbacks of an epoch
        ]
        _faults.reached("fit", callbacks=callbacks)  # the test hook (a no-op unless a test installed one)
        return callbacks, backup

    @contextlib.contextmanager
    def _keeping_good_backups(self):
        """On divergence, drops the backups that no later finite loss vouches for; on a collapse, those after it began.

        The loss of step g is computed with the weights after update g - 1, so
        a bad loss at step g condemns the state saved after update g - 1 (and
        any later one): resuming from it would diverge again. A collapse
        detected over epochs f..e condemns every state saved after epoch
        f - 1 began (`Collapsed.drop_from_epoch`): epoch f - 1's mean mixes
        steps before and after a collapse, so its end may be collapsed
        already (in the digits reproduction it is, and resuming from it with
        --temperature 0.1 stays collapsed).
        """
        try:
            yield
        except resilience.Diverged as diverged:
            if diverged.global_step is not None:
                self.store.discard_from(diverged.global_step - 1)
            raise
        except resilience.Collapsed as collapsed:
            self.store.discard_from(collapsed.drop_from_epoch * self.steps_per_epoch + 1)
            raise

    def train(self, process_start):
        """Fits the remaining steps; returns the last epoch's logs."""
        config, epochs, steps = self.config, self.config.optim.epochs, self.steps_per_epoch
        resumed = self.store.restore(self.model)
        epoch, step, meta = (resumed.epoch, resumed.step, resumed.meta) if resumed else (0, 0, {})
        if step >= steps:  # an epoch's last step saved before its end (older versions): continue at the next epoch
            epoch, step = epoch + 1, 0
        if resumed is not None and checkpointing.is_chief():
            print(resume_line(epoch, step, resumed.weights_path, epochs, steps), flush=True)
        if resumed is not None and checkpointing.is_chief():
            self.folder.record_resume(epoch, step, resumed.global_step)
        monitor = None
        if self.monitors_collapse:
            monitor = resilience.CollapseMonitor(
                config.runtime.collapse_cosine, config.runtime.collapse_epochs, stop=config.runtime.stop_on_collapse,
                state=meta.get("collapse"), on_collapse=self._record_collapse, announce=checkpointing.is_chief(),
            )
            self.collapsed = monitor.collapsed or False
        seconds_before = float(meta.get("train_seconds", 0.0))
        self.train_seconds = seconds_before
        if epoch >= epochs:  # finishing: training was complete
            return meta.get("epoch_logs") or {}
        if checkpointing.is_chief():
            self.folder.truncate_log(epoch)
        clock_start = time.time()

        def clock():
            return seconds_before + (time.time() - clock_start)

        guard = resilience.DivergenceGuard(config.runtime.divergence_factor, position=None, reference=meta.get("reference_loss"))
        logs = meta.get("epoch_logs") or {}
        segments = []
        if step:
            segments.append((epoch, epoch + 1, steps - step, step, meta.get("metrics")))
            epoch += 1
        if epoch < epochs:
            segments.append((epoch, epochs, steps, 0, None))
        with resilience.SignalWatcher() as signals, self._keeping_good_backups():
            for first_epoch, end_epoch, segment_steps, first_step, first_metrics in segments:
                callbacks, backup = self._callbacks(signals, guard, monitor, first_step, first_metrics, clock)
                try:
                    self.model.fit(
                        self.stream(first_epoch * steps + first_step),
                        initial_epoch=first_epoch,
                        epochs=end_epoch,
                        steps_per_epoch=segment_steps,
                        callbacks=callbacks,
                        validation_data=self.validation,
                        shuffle=False,  # the stream shuffles itself
                        verbose=config.runtime.verbose,
                    )
                except BaseException:
                    if config.runtime.verbose == 1:  # ends the progress bar's line: the error's line is its own
                        print(flush=True)
                    raise
                logs = backup.epoch_logs or logs
                if monitor is not None:
                    self.collapsed = monitor.collapsed or False
            if signals.received is not None:  # a signal after the last epoch's end: training is complete
                raise resilience.Interrupted(signals.received, epochs - 1, steps)
        self.train_seconds = clock()
        return logs
