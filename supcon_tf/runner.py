"""Runs one training stage from a `RunConfig`: builds data, model, optimizer and callbacks, fits, evaluates, saves.

Outputs under `config.model_dir` (written by the chief only, atomically):

    config.json                the resolved config
    checkpoints/latest.keras   the model after the last finished epoch (every `checkpoint_every` epochs)
    backup/<task>/             Keras BackupAndRestore state, one folder per worker, while a run is
                               unfinished (resume after a crash by running the same command again)
    logs/<task>/               TensorBoard event files
    training_log.csv           per-epoch metrics
    model.keras                the final model
    saved_model/               SavedModel export (encoder, or classifier for "ce" / "linear")
    metrics.json               test metrics and train time
"""

from __future__ import annotations

import json
import os
import time

import keras
import tensorflow as tf

from supcon_tf import augment, checkpointing, data, distribute, encoders, export, layers, models
from supcon_tf.config import TFDS_DATASETS, RunConfig


def _write_json_atomically(path, payload):
    if not checkpointing.is_chief():
        return
    with checkpointing.atomic_path(path) as temporary:
        with open(temporary, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)


def build_strategy(config):
    """The configured strategy; checks that the global batch splits evenly over its replicas."""
    if config.cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.cpu_devices)
    strategy = distribute.get_strategy(config.strategy, tpu=config.tpu)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"`batch_size` must be divisible by the number of replicas ({replicas}), "
            f"received: batch_size={config.batch_size}"
        )
    return strategy


def load_source(config, split):
    """`(dataset of (uint8 [H, W, C], int32 label), num_examples or None, num_classes)` for `split`."""
    if config.dataset == "digits":
        images, labels = data.load_digits(split)
        return data.from_arrays(images, labels), len(images), data.DIGITS_NUM_CLASSES
    if config.dataset in TFDS_DATASETS:
        tfds_split = {"train": "train", "test": "test" if config.dataset != "imagenet2012" else "validation"}[split]
        dataset, info = data.load_tfds(config.dataset, tfds_split, data_dir=config.data_dir)
        size = config.image_size
        dataset = dataset.map(
            lambda image, label: (
                tf.cast(tf.clip_by_value(tf.image.resize(image, (size, size)), 0, 255), tf.uint8),
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return dataset, info.splits[tfds_split].num_examples, info.features["label"].num_classes
    # Image folder: <data_dir>/<train|test>/<class>/*.png|jpg
    root = os.path.join(config.data_dir, split)
    dataset, class_names = data.load_image_folder(root, image_size=config.image_size)
    return dataset, int(dataset.cardinality().numpy()), config.num_classes or len(class_names)


def _augmentation(config):
    if config.augmentation == "none":
        return augment.get_augmentation("none", config.image_size)
    return augment.get_augmentation(
        config.augmentation, config.image_size, crop_scale=(config.crop_scale_min, 1.0), flip=config.flip
    )


def train_dataset(config, source):
    """Training batches: `(views [B, V, ...], labels)` for contrastive methods, `(images, labels)` for CE.

    `config.sampler` picks shuffled batches (`data.make_multiview_dataset`) or
    P x K class-balanced ones (`data.make_class_balanced_dataset`, P =
    batch_size / samples_per_class).
    """
    num_views = config.num_views if config.method in ("supcon", "simclr") else 1
    if config.sampler == "class_balanced":
        dataset = data.make_class_balanced_dataset(
            source,
            classes_per_batch=config.batch_size // config.samples_per_class,
            samples_per_class=config.samples_per_class,
            num_views=num_views,
            augment=_augmentation(config),
            seed=config.seed,
            repeat=True,
        )
    else:
        dataset = data.make_multiview_dataset(
            source,
            batch_size=config.batch_size,
            num_views=num_views,
            augment=_augmentation(config),
            seed=config.seed,
            repeat=True,
        )
    if num_views == 1:
        dataset = dataset.map(lambda views, labels: (views[:, 0], labels))
    return distribute.shard_by_data(dataset)


def eval_dataset(config, source, batch_size=None):
    return data.make_eval_dataset(source, batch_size=batch_size or config.batch_size, image_size=config.image_size)


def build_optimizer(config, steps_per_epoch):
    """SGD / LARS / Adam with linear warm-up then cosine decay over the whole run."""
    from supcon_tf import optimizers

    schedule = optimizers.WarmupCosineDecay(
        config.learning_rate,
        total_steps=steps_per_epoch * config.epochs,
        warmup_steps=steps_per_epoch * config.warmup_epochs,
    )
    if config.optimizer == "lars":
        optimizer = optimizers.LARS(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, weight_decay=config.weight_decay or None)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay or None)
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def build_encoder(config, image_shape):
    kwargs = {"width": config.encoder_width} if config.encoder == "small_cnn" else {}
    return encoders.build_encoder(config.encoder, image_shape, synchronized_bn=config.synchronized_bn, **kwargs)


def build_callbacks(config):
    task_type, task_index = checkpointing.task_type_and_index()
    task = f"{task_type}_{task_index}"
    callbacks = [
        keras.callbacks.BackupAndRestore(
            checkpointing.worker_backup_dir(os.path.join(config.model_dir, "backup")),
            double_checkpoint=True,
            delete_checkpoint=True,  # a finished run leaves none: re-running starts afresh
        ),
        checkpointing.ChiefModelCheckpoint(
            os.path.join(config.model_dir, "checkpoints", "latest.keras"), period=config.checkpoint_every
        ),
        keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs", task), update_freq="epoch"),
    ]
    if checkpointing.is_chief():
        callbacks.append(keras.callbacks.CSVLogger(os.path.join(config.model_dir, "training_log.csv"), append=True))
    return callbacks


def build_model(config, image_shape, num_classes, steps_per_epoch):
    """The compiled model of `config.method` (call inside the strategy's scope).

    "supcon" / "simclr": SupConModel (encoder + projection head, memory queue
    and momentum encoder when configured); "ce": CrossEntropyModel; "linear":
    LinearProbe on the frozen encoder of `config.pretrained`. The optimizer's
    schedule spans `config.epochs` epochs of `steps_per_epoch` steps.
    """
    optimizer = build_optimizer(config, steps_per_epoch)
    if config.method in ("supcon", "simclr"):
        model = models.SupConModel(
            build_encoder(config, image_shape),
            layers.ProjectionHead((config.head_hidden,) if config.head_hidden else (), config.embedding_dim),
            method=config.method,
            temperature=config.temperature,
            base_temperature=config.base_temperature,
            contrast_mode=config.contrast_mode,
            variant=config.variant,
            queue_size=config.queue_size,
            queue_warmup_steps=config.queue_warmup_steps,
            key_momentum=config.key_momentum,
        )
    elif config.method == "ce":
        model = models.CrossEntropyModel(build_encoder(config, image_shape), num_classes)
    else:
        model = models.LinearProbe(_load_pretrained_encoder(config.pretrained), num_classes)
    model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    return model


def _load_pretrained_encoder(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"`pretrained` does not exist: {path}")
    loaded = keras.saving.load_model(path, compile=False)
    encoder = getattr(loaded, "encoder", loaded)
    if not isinstance(encoder, keras.Model):
        raise ValueError(f"`pretrained` must hold a SupConModel, classifier or encoder, received: {type(loaded)}")
    return encoder


def run(config: RunConfig):
    """Runs the stage `config.method`; returns the metrics dict (also written to metrics.json)."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"`config` must be a RunConfig, received: {type(config).__name__}")
    start = time.time()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)  # before any dataset is built (shuffle seeds)
    strategy = build_strategy(config)
    train_source, num_train, num_classes = load_source(config, "train")
    test_source, _, _ = load_source(config, "test")
    os.makedirs(config.model_dir, exist_ok=True)
    _write_json_atomically(os.path.join(config.model_dir, "config.json"), config.to_dict())

    image_shape = tuple(next(iter(eval_dataset(config, train_source, batch_size=1)))[0].shape[1:])
    steps_per_epoch = config.steps_per_epoch or max(1, num_train // config.batch_size)
    fit_kwargs = dict(verbose=config.verbose)

    with strategy.scope():
        model = build_model(config, image_shape, num_classes, steps_per_epoch)

    callbacks = build_callbacks(config)
    if config.method == "linear" and config.cache_features:
        history = model.fit_cached(
            eval_dataset(config, train_source), epochs=config.epochs, batch_size=config.batch_size, **fit_kwargs
        )
    else:
        history = model.fit(
            train_dataset(config, train_source),
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself
            **fit_kwargs,
        )
    train_seconds = time.time() - start

    metrics = {"method": config.method, "train_seconds": round(train_seconds, 1), "epochs": config.epochs}
    metrics["final_train_loss"] = float(history.history["loss"][-1])
    if config.method in ("ce", "linear"):
        loss, accuracy = model.evaluate(eval_dataset(config, test_source), verbose=0)
        metrics.update(test_loss=float(loss), test_top1=float(accuracy))
    if checkpointing.is_chief():
        checkpointing.save_model_atomically(model, os.path.join(config.model_dir, "model.keras"))
        if config.export:
            saved_model = os.path.join(config.model_dir, "saved_model")
            if config.method in ("supcon", "simclr"):
                export.export_encoder(model, saved_model, overwrite=True)
            else:
                export.export_classifier(model, saved_model, overwrite=True)
    _write_json_atomically(os.path.join(config.model_dir, "metrics.json"), metrics)
    return metrics

