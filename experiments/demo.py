r"""The main job (`make demo`): SupCon, SimCLR and cross-entropy end to end on the bundled digits.

Pre-trains SupCon and SimCLR (small CNN + projection head), trains a linear
probe on each frozen encoder, trains the cross-entropy baseline on the same
encoder architecture, evaluates all three on the held-out test split, prints
a table (method, test top-1, train time) and writes under `--output_dir`:

    metrics.json                      the table, plus the resolved config
    config.json                       the resolved config of this run
    <method>/encoder.keras            the trained encoder
    <method>/classifier.keras         the probe (or the CE model)

Usage:

    python -m experiments.demo --output_dir runs/demo [--epochs 60] [--seed 0]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/demo", "Where metrics, config and models are written.")
flags.DEFINE_integer("epochs", 60, "Pre-training epochs for SupCon / SimCLR and training epochs for CE.")
flags.DEFINE_integer("probe_epochs", 100, "Linear-probe epochs (on cached features).")
flags.DEFINE_integer("batch_size", 128, "Training batch size (samples; each gives `views` images).")
flags.DEFINE_integer("image_size", 16, "Digits (8x8) are resized to this size.")
flags.DEFINE_integer("seed", 0, "Random seed (data order, augmentation, initialisation).")
flags.DEFINE_list("methods", ["supcon", "simclr", "ce"], "Which methods to run.")
flags.DEFINE_integer("verbose", 2, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Resolved, validated settings of one demo run."""

    output_dir: str
    epochs: int = 60
    probe_epochs: int = 100
    batch_size: int = 128
    image_size: int = 16
    seed: int = 0
    methods: tuple = ("supcon", "simclr", "ce")
    verbose: int = 2
    # Fixed recipe (not flags): what works for 8x8 digits on a CPU in minutes.
    encoder: str = "small_cnn"
    head_hidden: int = 128
    embedding_dim: int = 64
    supcon_temperature: float = 0.1
    simclr_temperature: float = 0.5
    learning_rate: float = 0.05
    weight_decay: float = 1e-4
    views: int = 2
    crop_scale: tuple = (0.4, 1.0)

    def __post_init__(self):
        for name in ("epochs", "probe_epochs", "batch_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, received: {name}={value!r}")
        if self.image_size < 8:
            raise ValueError(f"`image_size` must be >= 8, received: image_size={self.image_size}")
        unknown = set(self.methods) - {"supcon", "simclr", "ce"}
        if unknown or not self.methods:
            raise ValueError(
                f"`methods` must be a non-empty subset of supcon, simclr, ce; received: methods={list(self.methods)}"
            )
        if not self.output_dir:
            raise ValueError("`output_dir` must be a non-empty path, received: output_dir=''")


def config_from_flags() -> DemoConfig:
    """The one place where flags become a config."""
    return DemoConfig(
        output_dir=FLAGS.output_dir,
        epochs=FLAGS.epochs,
        probe_epochs=FLAGS.probe_epochs,
        batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
        methods=tuple(FLAGS.methods),
        verbose=FLAGS.verbose,
    )


def _log(message):
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _optimizer(config, steps):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)
    return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=config.weight_decay)


def run(config: DemoConfig):
    """Runs every method in `config.methods`; returns the list of result rows."""
    import keras

    from supcon_tf import augment, data, encoders, layers, models

    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)

    keras.utils.set_random_seed(config.seed)
    train_x, train_y = data.load_digits("train")
    test_x, test_y = data.load_digits("test")
    image_shape = (config.image_size, config.image_size, train_x.shape[-1])
    _log(f"digits: {len(train_x)} train / {len(test_x)} test images, served at {image_shape}")

    train_source = data.from_arrays(train_x, train_y)
    test_source = data.from_arrays(test_x, test_y)
    # Digits are not mirror-symmetric: no flip; saturation/hue do nothing on 1 channel.
    policy = augment.SimCLRAugment(config.image_size, crop_scale=config.crop_scale, flip=False)
    plain_train = data.make_eval_dataset(train_source, batch_size=256, image_size=config.image_size)
    plain_test = data.make_eval_dataset(test_source, batch_size=256, image_size=config.image_size)
    steps_per_epoch = len(train_x) // config.batch_size
    total_steps = steps_per_epoch * config.epochs

    def views_dataset(num_views):
        return data.make_multiview_dataset(
            train_source, batch_size=config.batch_size, num_views=num_views, augment=policy, seed=config.seed
        )

    rows = []
    for method in config.methods:
        keras.utils.set_random_seed(config.seed)
        encoder = encoders.build_encoder(config.encoder, image_shape)
        method_dir = os.path.join(config.output_dir, method)
        os.makedirs(method_dir, exist_ok=True)
        start = time.time()
        if method in ("supcon", "simclr"):
            temperature = config.supcon_temperature if method == "supcon" else config.simclr_temperature
            _log(f"{method}: pre-training {config.epochs} epochs (tau={temperature})")
            model = models.SupConModel(
                encoder,
                layers.ProjectionHead((config.head_hidden,), config.embedding_dim),
                method=method,
                temperature=temperature,
            )
            model.compile(optimizer=_optimizer(config, total_steps))
            model.fit(views_dataset(config.views), epochs=config.epochs, shuffle=False, verbose=config.verbose)
            _log(f"{method}: linear probe {config.probe_epochs} epochs on cached features")
            classifier = models.LinearProbe(encoder, num_classes=data.DIGITS_NUM_CLASSES)
            classifier.compile(optimizer=keras.optimizers.Adam(1e-2))
            classifier.fit_cached(plain_train, epochs=config.probe_epochs, verbose=0)
        else:
            _log(f"ce: training {config.epochs} epochs end to end")
            classifier = models.CrossEntropyModel(encoder, num_classes=data.DIGITS_NUM_CLASSES)
            classifier.compile(optimizer=_optimizer(config, total_steps))
            single_view = views_dataset(1).map(lambda v, y: (v[:, 0], y))
            classifier.fit(single_view, epochs=config.epochs, shuffle=False, verbose=config.verbose)
        train_seconds = time.time() - start
        _, test_top1 = classifier.evaluate(plain_test, verbose=0)
        encoder.save(os.path.join(method_dir, "encoder.keras"))
        classifier.save(os.path.join(method_dir, "classifier.keras"))
        row = {"method": method, "test_top1": float(test_top1), "train_seconds": round(train_seconds, 1)}
        _log(f"{method}: test top-1 {test_top1:.4f}, train time {train_seconds:.0f} s")
        rows.append(row)

    with open(os.path.join(config.output_dir, "metrics.json"), "w") as f:
        json.dump({"results": rows, "config": dataclasses.asdict(config)}, f, indent=2)
    return rows


def format_table(rows):
    lines = ["| method | test top-1 | train time (s) |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['test_top1']:.4f} | {row['train_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
    except ValueError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    start = time.time()
    rows = run(config)
    print()
    print(format_table(rows))
    print(f"\nTotal wall time: {time.time() - start:.0f} s. Outputs in {config.output_dir}/")
    return 0


if __name__ == "__main__":
    app.run(main)
