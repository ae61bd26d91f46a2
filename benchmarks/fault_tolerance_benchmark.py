r"""The cost of fault tolerance: step-level backups and the resumable (pure per-pass) data order.

    .venv/bin/python benchmarks/fault_tolerance_benchmark.py --out benchmarks/results/fault_tolerance.md

Measures, in this process, on this machine:

1. Step time of `fit` on the digits SupCon recipe (small CNN, batch 128, two
   views), with step-level backups off, at the default period
   (`RunConfig.backup_every_steps`) and every step; the time of one backup
   (weights + optimizer + metadata, `checkpointing.StepBackup.save`) for the
   small CNN and for the CIFAR ResNet-18 and ResNet-50; and the overhead
   each model pays at the default period, given its step time here.
2. The input pipeline's throughput (augmented views/s) with the resumable
   order (stateless per-pass permutations, `data.pipelines._shuffle_pass`) against
   `Dataset.shuffle(reshuffle_each_iteration=True)`, the order it replaced,
   and the time to rebuild a stream at batch 10,000 (`start_batch`).

Writes a Markdown table (and the same numbers as JSON next to it) with the
machine's CPU count and load measured at run time.
"""

import argparse
import os
import sys
import tempfile
import time

from _results import write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def _digits_stream(start_batch=0):
    from supcon_tf import augment, data

    images, labels = data.load_digits("train")
    return data.make_multiview_dataset(
        data.from_arrays(images, labels),
        batch_size=128,
        num_views=2,
        augment=augment.SimCLRAugment(16, crop_scale=(0.4, 1.0), flip=False),
        seed=0,
        repeat=True,
        start_batch=start_batch,
    )


def _supcon_model(encoder_name, image_shape):
    import keras

    from supcon_tf import encoders, layers, losses, models

    encoder = encoders.build_encoder(encoder_name, image_shape)
    model = models.SupConModel(encoder, layers.ProjectionHead((128,), 64), loss_config=losses.LossConfig(temperature=0.1))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    return model


def fit_step_times(steps, every_steps_values):
    """Seconds per step of `fit` on digits, for each backup period (0: no step-level backups)."""
    from supcon_tf import checkpointing

    results = {}
    for every in every_steps_values:
        model = _supcon_model("small_cnn", (16, 16, 1))
        model.fit(_digits_stream(), epochs=1, steps_per_epoch=5, verbose=0)  # trace, warm up
        with tempfile.TemporaryDirectory() as tmp:
            callbacks = []
            if every:
                store = checkpointing.BackupStore(os.path.join(tmp, "backup"))
                callbacks = [checkpointing.StepBackup(store, steps_per_epoch=steps + 1, every_steps=every)]
            start = time.perf_counter()
            model.fit(_digits_stream(), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
            results[every] = (time.perf_counter() - start) / steps
    return results


def backup_seconds(encoder_name, image_shape, repeats=5):
    """Median seconds of one backup (weights + optimizer state + JSON) of a SupCon model."""
    from supcon_tf import checkpointing

    model = _supcon_model(encoder_name, image_shape)
    with tempfile.TemporaryDirectory() as tmp:
        store = checkpointing.BackupStore(os.path.join(tmp, "backup"))
        backup = checkpointing.StepBackup(store, steps_per_epoch=10**6)
        backup.set_model(model)
        times = []
        for step in range(repeats):
            start = time.perf_counter()
            backup.save(0, step + 1, step + 1)
            times.append(time.perf_counter() - start)
        size = sum(
            os.path.getsize(os.path.join(store.folder, name)) for name in os.listdir(store.folder)
        ) / store.keep
    params = sum(int(v.numpy().size) for v in model.trainable_variables)
    return _median(times), params, size


def train_step_seconds(encoder_name, image_shape, batch, steps=3):
    """Median seconds of one SupCon train step at `batch` on random data (for the overhead column)."""
    import numpy as np
    import tensorflow as tf

    model = _supcon_model(encoder_name, image_shape)
    rng = np.random.default_rng(0)
    views = rng.random((batch, 2, *image_shape), dtype=np.float32)
    labels = rng.integers(0, 10, batch).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors((views, labels)).repeat()
    model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    times = []
    iterator = iter(dataset)
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(*next(iterator))
        times.append(time.perf_counter() - start)
    return _median(times)


def pipeline_views_per_second(batches, resumable):
    import tensorflow as tf

    from supcon_tf import augment, data

    if resumable:
        dataset = _digits_stream()
    else:  # the order this project used before: a seeded shuffle buffer, reshuffled every pass
        images, labels = data.load_digits("train")
        source = data.from_arrays(images, labels).shuffle(10000, seed=0, reshuffle_each_iteration=True)
        batches_ds = source.batch(128, drop_remainder=True).repeat()
        dataset = data.pipelines._add_views(
            batches_ds, num_views=2, augment=augment.SimCLRAugment(16, crop_scale=(0.4, 1.0), flip=False), seed=0
        )
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        views, _ = next(iterator)
    del tf
    return batches * int(views.shape[0]) * int(views.shape[1]) / (time.perf_counter() - start)


def resume_seconds(start_batch):
    """Seconds to build the digits stream at `start_batch` and read its first batch, and the passes skipped."""
    from supcon_tf import data

    images, _ = data.load_digits("train")
    per_pass = len(images) // 128
    start = time.perf_counter()
    next(iter(_digits_stream(start_batch)))
    return time.perf_counter() - start, start_batch // per_pass


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="fit steps per backup setting (digits)")
    parser.add_argument("--out", default=None, help="Markdown output path (JSON written next to it)")
    args = parser.parse_args(argv)
    if args.steps < 10:
        print(f"--steps must be >= 10, received: {args.steps}", file=sys.stderr)
        return 2

    from supcon_tf.config import RunConfig

    default_every = RunConfig().runtime.backup_every_steps
    load_before = os.getloadavg()
    fit_times = fit_step_times(args.steps, [0, default_every, 1])
    models = {}
    for name, shape, batch in (("small_cnn", (16, 16, 1), 128), ("resnet18", (32, 32, 3), 32),
                               ("resnet50", (32, 32, 3), 16)):
        save, params, size = backup_seconds(name, shape)
        step = train_step_seconds(name, shape, batch)
        models[name] = {"backup_seconds": save, "trainable_parameters": params, "backup_bytes": size,
                        "batch": batch, "step_seconds": step,
                        "overhead_at_default": save / (default_every * step)}
    pipeline = {"resumable": pipeline_views_per_second(40, True), "shuffle_buffer": pipeline_views_per_second(40, False)}
    rebuild, passes = resume_seconds(10_000)
    results = {
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before[0], os.getloadavg()[0]],
        "default_backup_every_steps": default_every,
        "fit_seconds_per_step": {str(k): v for k, v in fit_times.items()},
        "models": models,
        "pipeline_views_per_second": pipeline,
        "rebuild_stream_at_batch_10000_seconds": rebuild,
        "rebuild_stream_passes_skipped": passes,
        "command": "python benchmarks/fault_tolerance_benchmark.py " + " ".join(argv),
    }
    lines = [
        "# Cost of fault tolerance",
        "",
        f"Command: `{results['command'].strip()}`; {results['cpu_count']} CPUs, 1-min load average "
        f"{load_before[0]:.2f} before and {os.getloadavg()[0]:.2f} after the run.",
        "",
        f"## fit on digits (small CNN, batch 128 x 2 views), {args.steps} steps each",
        "",
        "| step-level backups | s/step | vs none |",
        "|---|---|---|",
    ]
    base = fit_times[0]
    for every, label in ((0, "off (epoch ends only)"), (default_every, f"every {default_every} steps (default)"),
                         (1, "every step")):
        lines.append(f"| {label} | {fit_times[every]:.4f} | {fit_times[every] / base:.3f}x |")
    lines += [
        "",
        "## One backup against one train step",
        "",
        "| encoder | trainable params | backup size (MiB) | one backup (s) | batch (samples) | one step (s) | "
        f"overhead every {default_every} steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in models.items():
        lines.append(
            f"| {name} | {row['trainable_parameters']:,} | {row['backup_bytes'] / 2**20:.1f} | "
            f"{row['backup_seconds']:.3f} | {row['batch']} | {row['step_seconds']:.3f} | "
            f"{100 * row['overhead_at_default']:.2f}% |"
        )
    lines += [
        "",
        "## Input order",
        "",
        "| order | augmented views/s (digits, batch 128 x 2 views) |",
        "|---|---|",
        f"| resumable: stateless permutation per pass | {pipeline['resumable']:.0f} |",
        f"| Dataset.shuffle, reshuffled each pass (not resumable) | {pipeline['shuffle_buffer']:.0f} |",
        "",
        f"Rebuilding the stream at batch 10,000 ({passes} passes in) and reading its first batch: "
        f"{rebuild:.2f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_results(text, results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
