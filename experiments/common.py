"""Flags of the training binaries, and the one place where flags (and a preset) become a `RunConfig`.

Resolution order: `RunConfig` defaults < `--preset` < explicit flags. Every
`RunConfig` field has a flag of the same name; a flag left unset does not
override the preset. Bad values end the program with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

# CPU speed default (BUILD_NOTES.md): must be set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from experiments import presets  # noqa: E402
from supcon_tf.config import RunConfig  # noqa: E402  (pure Python: no TensorFlow import)

FLAGS = flags.FLAGS

_HELP = {
    "method": "supcon | simclr (pretrain), ce (train_ce), linear (linear_eval).",
    "model_dir": "Run folder: config.json, checkpoints/, backup/, logs/, model.keras, saved_model/, metrics.json.",
    "dataset": "digits | cifar10 | cifar100 | imagenet2012 (TFDS, prepared under --data_dir) | folder.",
    "data_dir": "TFDS data_dir, or the image-folder root holding train/<class>/ and test/<class>/.",
    "num_classes": "Number of classes (folders: default = number of class sub-folders).",
    "image_size": "Square training/eval image size in pixels.",
    "augmentation": "simclr | autoaugment | randaugment | stacked_randaugment | none.",
    "crop_scale_min": "Lower bound of the random-resized-crop area fraction.",
    "flip": "Random horizontal flips.",
    "num_views": "Augmented views per image (contrastive methods).",
    "encoder": "small_cnn | resnet18 | resnet34 | resnet50 | imagenet_resnet50 | imagenet_resnet200 | "
    "vit_tiny_patch4_32 | vit_b16, or any keras.applications:<Name> (e.g. keras.applications:EfficientNetV2B0; "
    "random init), or your own build function <module>:<function> / <path/to/file.py>:<function>, called as "
    "function(image_shape) -> keras.Model (this imports and runs that module). See docs/backbones.md.",
    "encoder_width": "Channel multiplier of small_cnn.",
    "encoder_weights": "Initialise the encoder from this file: a .weights.h5 written by encoder.save_weights, or a "
    ".keras model whose encoder is taken (e.g. a run's model.keras); shapes must match.",
    "vit_hidden_dim": "vit_tiny_patch4_32: token width (divisible by --vit_num_heads; unset: 192).",
    "vit_depth": "vit_tiny_patch4_32: transformer blocks (unset: 6).",
    "vit_num_heads": "vit_tiny_patch4_32: attention heads (unset: 3).",
    "vit_mlp_dim": "vit_tiny_patch4_32: MLP hidden width (unset: 768).",
    "head_hidden": "Projection head hidden width (0: linear head).",
    "embedding_dim": "Projection (embedding) dimension.",
    "synchronized_bn": "Cross-replica BatchNormalization.",
    "temperature": "Loss temperature tau (> 0).",
    "base_temperature": "Loss scale tau / base_temperature (unset: unscaled, eq. 2).",
    "contrast_mode": "all | one.",
    "variant": "out (eq. 2) | in (eq. 3).",
    "denominator": "all (the paper) | one_positive (each positive against the negatives only) | only_negatives "
    "(the negatives alone): google-research's denominator_mode.",
    "positives_cap": "Per anchor, keep only the first N positives of the global batch (a multiple of --num_views; "
    "the anchor's own other views always stay); -1: no cap.",
    "queue_size": "Memory queue: contrast every anchor also with the last N embeddings (and labels) of earlier steps; 0: off.",
    "queue_warmup_steps": "Optimizer steps before the memory queue joins the loss (it is filled from the start).",
    "key_momentum": "Momentum m in [0, 1) of an EMA copy of encoder + head that fills the queue (MoCo); unset: the "
    "online embeddings fill it. Needs --queue_size.",
    "sampler": "random | class_balanced (each batch: batch_size / samples_per_class classes x samples_per_class samples).",
    "samples_per_class": "K of the class_balanced (P x K) sampler; must divide --batch_size.",
    "optimizer": "sgd | lars | adam.",
    "learning_rate": "Peak learning rate (> 0) at --reference_batch_size, reached after the warm-up.",
    "learning_rate_scaling": "linear | sqrt | none: how the learning rate follows --batch_size when it differs from "
    "--reference_batch_size (linear: lr x batch / reference). The resolved value is written to config.json.",
    "reference_batch_size": "The batch --learning_rate is given for (default: a preset's own batch_size, else "
    "--batch_size itself, i.e. no scaling).",
    "momentum": "SGD / LARS momentum.",
    "weight_decay": "Weight decay (>= 0).",
    "warmup_epochs": "Linear warm-up epochs before the cosine decay.",
    "epochs": "Training epochs.",
    "batch_size": "Global batch size (divisible by the number of replicas).",
    "steps_per_epoch": "Steps per epoch (default: one pass over the training split).",
    "online_eval": "Pre-training: train a linear classifier on the stop-gradient representation alongside "
    "(its own Adam optimizer, learning rate 0.01) and log online_top1, online_loss, contrast_top1 and "
    "contrast_entropy.",
    "validation_fraction": "Carve this fraction of the TRAINING split for validation (val_* metrics each epoch; "
    "the test split is never used for it); 0: none.",
    "evaluate_test": "ce / linear: evaluate on the test split at the end (false: the test split is never read, "
    "e.g. while tuning).",
    "pretrained": "linear_eval: the pre-trained model (.keras) whose encoder is probed.",
    "cache_features": "linear_eval: compute the frozen features once (no augmentation).",
    "strategy": "default | one_device | mirrored | multi_worker (TF_CONFIG) | tpu.",
    "cpu_devices": "Split the CPU into N logical devices (N > 1), e.g. to try --strategy=mirrored without GPUs.",
    "tpu": "TPU name or address for --strategy=tpu ('local' on a TPU VM).",
    "mixed_precision": "mixed_float16 compute (GPU/TPU speed-up; slower on CPU).",
    "jit_compile": "XLA-compile the train step.",
    "seed": "Random seed (initialisation, data order, augmentation).",
    "data_service": "tf.data service dispatcher grpc://HOST:PORT (start it and its workers with supcon-data-service): "
    "the workers build and augment the training batches, this process trains on them.",
    "checkpoint_every": "Save checkpoints/latest.keras every N epochs.",
    "channels": "Image folders: decode to 1 (grayscale) or 3 (RGB) channels (default 3).",
    "backup_every_steps": "Write a step-level backup every N steps (and at every epoch end); 0: epoch ends only. "
    "A killed or preempted run resumes at the newest backup.",
    "divergence_factor": "Stop (exit 3, last good backup kept) when the loss exceeds this multiple of the run's "
    "first logged loss; 0: stop on NaN/inf only.",
    "deterministic": "TensorFlow op determinism: a resumed run ends bit-for-bit like an uninterrupted one on CPU "
    "(slower).",
    "export": "Write a SavedModel under model_dir/saved_model at the end.",
    "verbose": "0 silent, 1 progress bar, 2 one line per epoch.",
}


def _define_config_flags():
    flags.DEFINE_string("preset", None, f"Named recipe; explicit flags override it. One of: {', '.join(presets.PRESETS)}.")
    flags.DEFINE_bool(
        "overwrite", False, "Start afresh in a --model_dir that holds a finished (or unfinished) run; without it a "
        "finished run is left unchanged and an unfinished one is resumed."
    )
    for field in dataclasses.fields(RunConfig):
        kind = str(field.type).replace(" | None", "")
        help_text = _HELP.get(field.name, field.name) + f" (default: {field.default!r})"
        if kind == "bool":
            flags.DEFINE_bool(field.name, None, help_text)
        elif kind == "int":
            flags.DEFINE_integer(field.name, None, help_text)
        elif kind == "float":
            flags.DEFINE_float(field.name, None, help_text)
        else:
            flags.DEFINE_string(field.name, None, help_text)


_define_config_flags()


# What a linear evaluation takes from the pre-training run it evaluates (RUN/config.json), unless a flag sets it.
INHERITED_FROM_PRETRAINED = ("dataset", "data_dir", "image_size", "channels")


def _pretrained_run_config(pretrained):
    """The config.json next to a `--pretrained` model file, or {}."""
    path = os.path.join(os.path.dirname(os.path.abspath(pretrained)), "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        raise ValueError(f"`pretrained` run's config.json is not valid JSON: {path}") from None


def config_from_flags(**fixed) -> RunConfig:
    """Defaults < preset < (linear: the pre-training run's data settings) < explicit flags < `fixed`.

    `fixed` is what the binary itself decides, e.g. method.
    """
    values = presets.get_preset(FLAGS.preset) if FLAGS.preset else {}
    if "batch_size" in values:  # a recipe's learning rate is given for its own batch
        values.setdefault("reference_batch_size", values["batch_size"])
    pretrained = FLAGS.pretrained if FLAGS.pretrained is not None else values.get("pretrained")
    if fixed.get("method") == "linear" and pretrained:
        run_config = _pretrained_run_config(pretrained)
        for name in INHERITED_FROM_PRETRAINED:
            if name in run_config:
                values[name] = run_config[name]
    for field in dataclasses.fields(RunConfig):
        value = FLAGS[field.name].value
        if value is not None:
            values[field.name] = value
    for name, value in fixed.items():
        if values.get(name, value) != value:
            raise ValueError(
                f"`{name}` is fixed to {value!r} by this binary, received: {name}={values[name]!r} "
                f"(from {'--' + name if FLAGS[name].value is not None else '--preset ' + str(FLAGS.preset)})"
            )
        values[name] = value
    return RunConfig.from_dict(values)


def _fail(error):
    program = os.path.basename(sys.argv[0]) or "supcon"
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{program}: error: {message}", file=sys.stderr)
    return 2


def run_stage(config):
    """Runs `config` through `supcon_tf.runner.run` with `--overwrite`; returns its metrics, or None if it was finished.

    Prints one line when the folder was already finished (nothing changed).
    """
    from supcon_tf import runner

    metrics = runner.run(config, overwrite=FLAGS.overwrite)
    if metrics.get("already_finished"):
        print(f"{config.model_dir} is already finished; nothing changed (pass --overwrite to start afresh)")
        return None
    return metrics


def stage_entry(*, methods, summary):
    """The console-script entry of a training binary: flags -> RunConfig -> `runner.run` -> one summary line.

    Args:
      methods: the methods this binary trains; with one, it is fixed (a
        different --method or preset method is an error).
      summary: `(metrics) -> str`, the line printed after a finished run.
    """

    def main():
        config = config_from_flags(**({"method": methods[0]} if len(methods) == 1 else {}))
        if config.method not in methods:
            raise ValueError(f"`method` must be one of {', '.join(methods)} here, received: method={config.method!r}")
        metrics = run_stage(config)
        if metrics is not None:
            print(f"{summary(metrics)}; outputs in {config.model_dir}")
        return 0

    return lambda: run_binary(main)


def top1_summary(label):
    """`summary` for stages that end with a test evaluation."""
    return lambda metrics: f"{label}: " + (
        f"test top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else "test split not evaluated"
    )


def run_binary(main_fn):
    """`absl.app.run` with errors turned into one line on stderr and a documented exit status.

    2: bad input (nothing written). 130 / 143: SIGINT / SIGTERM (a backup at the
    step is written; run the same command to resume). 3: the loss diverged
    (the last good backup is kept).
    """

    def wrapped(argv):
        if len(argv) > 1:
            return _fail(ValueError(f"unexpected positional arguments: {argv[1:]}"))
        from supcon_tf import resilience

        try:
            return main_fn()
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            return _fail(error)
        except resilience.Interrupted as stop:
            print(stop, file=sys.stderr)
            return stop.exit_status
        except resilience.Diverged as stop:
            print(f"{os.path.basename(sys.argv[0]) or 'supcon'}: {stop}", file=sys.stderr)
            return stop.exit_status
        except KeyboardInterrupt:
            print("interrupted before training started; nothing to resume yet", file=sys.stderr)
            return resilience.EXIT_SIGINT

    app.run(wrapped)
