"""Frozen, validated run configuration (`RunConfig`) shared by every training stage.

`RunConfig` is nested into groups, one frozen dataclass each: `data`
(`DataConfig`), `model` (`ModelConfig`), `loss` (`losses.LossConfig`, passed
whole to `SupConModel`), `optim` (`OptimConfig`), `evaluation`
(`EvalConfig`) and `runtime` (`RuntimeConfig`), beside the run's `method`
and `model_dir`. Field names are unique across the groups, so the flat view
(one name per setting) stays what users see: the binaries' flags,
`config.json`, `RunConfig.from_flat(**settings)` and `replace(**changes)`.

The binaries in `experiments/` turn flags and named presets into a
`RunConfig` in exactly one place; the library only ever sees this object.
Validation happens at construction, so a bad value fails before anything is
built or written, with a message naming the field and the value: each group
checks its own fields, `RunConfig` the rules between groups. Each field
carries its help text (`metadata["help"]`), from which
`experiments/flagging.py` generates the binaries' flag of the same name; the
library reads no flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing

from supcon_tf import _checks as checks
# The registered encoder names and the other accepted forms (the one list: supcon_tf.encoders.registry).
from supcon_tf.encoders.registry import ENCODER_FORMS, ENCODER_NAMES as ENCODERS
from supcon_tf.losses.config import LossConfig, help_field as _field

METHODS = ("supcon", "simclr", "ce", "linear")
DATASETS = ("digits", "cifar10", "cifar100", "imagenet2012", "folder")
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
OPTIMIZERS = ("sgd", "lars", "adam")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
CLUSTERS = ("tf_config", "slurm", "auto")  # = supcon_tf.distribute.CLUSTERS (tests/test_cluster.py keeps them equal)
AUGMENTATIONS = ("simclr", "autoaugment", "randaugment", "stacked_randaugment", "none")
SAMPLERS = ("random", "class_balanced")
AUGMENT_ON = ("host", "device")  # = supcon_tf.data.AUGMENT_ON (tests/test_device_augment.py keeps them equal)
LEARNING_RATE_SCALINGS = ("linear", "sqrt", "none")
DERIVED_FIELDS = ("resolved_learning_rate",)  # written to config.json by to_dict, not settable
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
VIT_SIZE_FIELDS = ("vit_hidden_dim", "vit_depth", "vit_num_heads", "vit_mlp_dim")  # vit_tiny_patch4_32 only


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is read and how it is augmented and batched (`RunConfig.data`)."""

    dataset: str = _field(
        "digits", "digits | cifar10 | cifar100 | imagenet2012 (TFDS, prepared under --data_dir) | folder."
    )
    data_dir: str | None = _field(
        None, "TFDS data_dir, or the image-folder root holding train/<class>/ and test/<class>/."
    )
    labels_file: str | None = _field(
        None,
        "dataset folder, method supcon: a .csv or .jsonl file of multi-hot or continuous labels (path relative to "
        "--data_dir, then its class names or its value; docs/losses.md) that replaces the class sub-folders: a "
        "split's images are the rows whose path starts with train/ or test/.",
    )
    num_classes: int | None = _field(None, "Number of classes (folders: default = number of class sub-folders).")
    image_size: int = _field(16, "Square training/eval image size in pixels.")
    channels: int | None = _field(None, "Image folders: decode to 1 (grayscale) or 3 (RGB) channels (default 3).")
    augmentation: str = _field("simclr", "simclr | autoaugment | randaugment | stacked_randaugment | none.")
    crop_scale_min: float = _field(0.2, "Lower bound of the random-resized-crop area fraction.")
    flip: bool = _field(True, "Random horizontal flips.")
    num_views: int = _field(2, "Augmented views per image (contrastive methods).")
    augment_on: str = _field(
        "host",
        "host | device: where the training views are made. host: in the tf.data pipeline (batches of float32 views). "
        "device: the pipeline (or the tf.data service) only reads and batches uint8 images, and the train step runs "
        "the same --augmentation with the same per-batch seeds on each replica's device (for input-bound GPU runs; "
        "with several replicas the draws differ from host's, same distribution). Not with --jit_compile or "
        "--strategy tpu (XLA has no kernels for the augmentation's image ops); no effect on a cached linear probe.",
    )
    sampler: str = _field(
        "random",
        "random | class_balanced (each batch: batch_size / samples_per_class classes x samples_per_class samples).",
    )
    samples_per_class: int = _field(4, "K of the class_balanced (P x K) sampler; must divide --batch_size.")

    def __post_init__(self):
        _choice("dataset", self.dataset, DATASETS)
        _choice("augmentation", self.augmentation, AUGMENTATIONS)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("augment_on", self.augment_on, AUGMENT_ON)
        for name in ("image_size", "num_views", "samples_per_class"):
            _positive_int(name, getattr(self, name))
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3 (or unset), received: channels={self.channels!r}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"`crop_scale_min` must be in (0, 1], received: crop_scale_min={self.crop_scale_min}")
        if self.dataset == "folder" and not self.data_dir:
            raise ValueError("`data_dir` must be the image folder root for dataset='folder', received: None")
        if self.num_classes is not None:
            _positive_int("num_classes", self.num_classes)
            if self.num_classes < 2:
                raise ValueError(f"`num_classes` must be >= 2, received: num_classes={self.num_classes}")
        if self.sampler == "class_balanced" and self.dataset == "imagenet2012":
            raise ValueError(
                "`sampler`='class_balanced' holds the training set in memory: not for imagenet2012, "
                "received: sampler='class_balanced' with dataset='imagenet2012'"
            )

    @property
    def classes(self):
        """Number of classes: `num_classes` if given, else the dataset's known count (None for folders)."""
        return self.num_classes if self.num_classes is not None else NUM_CLASSES.get(self.dataset)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The networks: encoder, projection head and the small-batch memory (`RunConfig.model`)."""

    encoder: str = _field(
        "small_cnn",
        "small_cnn | resnet18 | resnet34 | resnet50 | imagenet_resnet50 | imagenet_resnet200 | vit_tiny_patch4_32 | "
        "vit_b16, or any keras.applications:<Name> (e.g. keras.applications:EfficientNetV2B0; random init), or your "
        "own build function <module>:<function> / <path/to/file.py>:<function>, called as function(image_shape) -> "
        "keras.Model (this imports and runs that module). See docs/backbones.md.",
    )
    encoder_width: float = _field(1.0, "Channel multiplier of small_cnn.")
    encoder_weights: str | None = _field(
        None,
        "Initialise the encoder from this file: a .weights.h5 written by encoder.save_weights, or a .keras model whose "
        "encoder is taken (e.g. a run's model.keras); shapes must match.",
    )
    vit_hidden_dim: int | None = _field(
        None, "vit_tiny_patch4_32: token width (divisible by --vit_num_heads; unset: 192)."
    )
    vit_depth: int | None = _field(None, "vit_tiny_patch4_32: transformer blocks (unset: 6).")
    vit_num_heads: int | None = _field(None, "vit_tiny_patch4_32: attention heads (unset: 3).")
    vit_mlp_dim: int | None = _field(None, "vit_tiny_patch4_32: MLP hidden width (unset: 768).")
    head_hidden: int = _field(128, "Projection head hidden width (0: linear head).")
    embedding_dim: int = _field(64, "Projection (embedding) dimension.")
    synchronized_bn: bool = _field(False, "Cross-replica BatchNormalization.")
    ce_weight: float = _field(
        0.0,
        "supcon: train a linear cross-entropy head on the representation of every view at the same time, loss = "
        "supcon + ce_weight x CE (its gradient reaches the encoder; logs ce_loss, ce_top1); the export is then a "
        "classifier (encoder + this head), no linear probe needed; 0: off.",
    )
    queue_size: int = _field(
        0, "Memory queue: contrast every anchor also with the last N embeddings (and labels) of earlier steps; 0: off."
    )
    queue_warmup_steps: int = _field(
        0, "Optimizer steps before the memory queue joins the loss (it is filled from the start)."
    )
    key_momentum: float | None = _field(
        None,
        "Momentum m in [0, 1) of an EMA copy of encoder + head that fills the queue (MoCo); unset: the online "
        "embeddings fill it. Needs --queue_size.",
    )
    prototypes: bool = _field(
        False,
        "supcon: one trainable class centre per class joins every contrast set (BCL's prototypes; with --denominator "
        "class_balanced the full balanced contrastive loss). Needs class-id labels and a known number of classes.",
    )

    def __post_init__(self):
        _positive_int("embedding_dim", self.embedding_dim)
        for name in ("head_hidden", "queue_size", "queue_warmup_steps"):
            _non_negative_int(name, getattr(self, name))
        _positive_number("encoder_width", self.encoder_width)
        from supcon_tf import memory  # the queue's own rules, shared with SupConModel

        memory.check_queue_options(self.queue_size, self.queue_warmup_steps, self.key_momentum)
        if not isinstance(self.prototypes, bool):
            raise ValueError(f"`prototypes` must be a bool, received: prototypes={self.prototypes!r}")
        self._check_encoder()

    def _check_encoder(self):
        """Syntax only: a user module is imported, and a weights file read, when the encoder is built."""
        if not _is_encoder_string(self.encoder):
            raise ValueError(
                f"`encoder` must be one of {', '.join(ENCODERS)}, or {', '.join(ENCODER_FORMS)}; "
                f"received: encoder={self.encoder!r}"
            )
        if self.encoder_weights is not None:
            path = self.encoder_weights
            if not isinstance(path, str) or not path.endswith((".weights.h5", ".keras")):
                raise ValueError(
                    "`encoder_weights` must be a .weights.h5 file (encoder.save_weights) or a .keras model, "
                    f"received: encoder_weights={path!r}"
                )
            if not os.path.isfile(path):
                raise ValueError(f"`encoder_weights` does not exist: encoder_weights={path!r}")
        for name in VIT_SIZE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
                if self.encoder != "vit_tiny_patch4_32":
                    raise ValueError(
                        f"`{name}` sets a size of encoder 'vit_tiny_patch4_32' only, received: {name}={value} "
                        f"with encoder={self.encoder!r}"
                    )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule and batch (`RunConfig.optim`)."""

    optimizer: str = _field("sgd", "sgd | lars | adam.")
    learning_rate: float = _field(
        0.05, "Peak learning rate (> 0) at --reference_batch_size, reached after the warm-up."
    )
    learning_rate_scaling: str = _field(
        "linear",
        "linear | sqrt | none: how the learning rate follows --batch_size when it differs from --reference_batch_size "
        "(linear: lr x batch / reference). The resolved value is written to config.json.",
    )
    reference_batch_size: int | None = _field(
        None,
        "The batch --learning_rate is given for (default: a preset's own batch_size, else --batch_size itself, i.e. "
        "no scaling).",
    )
    momentum: float = _field(0.9, "SGD / LARS momentum.")
    weight_decay: float = _field(1e-4, "Weight decay (>= 0).")
    warmup_epochs: int = _field(0, "Linear warm-up epochs before the cosine decay.")
    epochs: int = _field(60, "Training epochs.")
    batch_size: int = _field(128, "Global batch size (divisible by the number of replicas).")
    steps_per_epoch: int | None = _field(None, "Steps per epoch (default: one pass over the training split).")

    def __post_init__(self):
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("learning_rate_scaling", self.learning_rate_scaling, LEARNING_RATE_SCALINGS)
        if self.reference_batch_size is not None:
            _positive_int("reference_batch_size", self.reference_batch_size)
        for name in ("epochs", "batch_size"):
            _positive_int(name, getattr(self, name))
        _non_negative_int("warmup_epochs", self.warmup_epochs)
        if self.steps_per_epoch is not None:
            _positive_int("steps_per_epoch", self.steps_per_epoch)
        _positive_number("learning_rate", self.learning_rate)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), received: momentum={self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be >= 0, received: weight_decay={self.weight_decay}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be <= epochs ({self.epochs}), received: warmup_epochs={self.warmup_epochs}"
            )

    @property
    def resolved_learning_rate(self):
        """The learning rate training uses: `learning_rate` scaled from `reference_batch_size` to `batch_size`.

        "linear": times batch_size / reference_batch_size (Goyal et al. 2017;
        google-research SimCLR's `learning_rate_scaling=linear`); "sqrt": times
        the square root of that ratio (SimCLR's choice for LARS at large
        batches); "none": unchanged. Without a reference (the default) the
        ratio is 1. The binaries set the reference to a preset's own batch,
        so overriding --batch_size on a recipe rescales its learning rate.
        """
        reference = self.reference_batch_size or self.batch_size
        ratio = self.batch_size / reference
        if self.learning_rate_scaling == "linear":
            return self.learning_rate * ratio
        if self.learning_rate_scaling == "sqrt":
            return self.learning_rate * math.sqrt(ratio)
        return self.learning_rate


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation while and after training, and the linear probe's input (`RunConfig.evaluation`)."""

    online_eval: bool = _field(
        False,
        "Pre-training: train a linear classifier on the stop-gradient representation alongside (its own Adam "
        "optimizer, learning rate 0.01) and log online_top1, online_loss, contrast_top1 and contrast_entropy.",
    )
    validation_fraction: float = _field(
        0.0,
        "Carve this fraction of the TRAINING split for validation (val_* metrics each epoch; the test split is never "
        "used for it); 0: none.",
    )
    evaluate_test: bool = _field(
        True,
        "ce / linear: evaluate on the test split at the end (false: the test split is never read, e.g. while "
        "tuning).",
    )
    pretrained: str | None = _field(None, "linear_eval: the pre-trained model (.keras) whose encoder is probed.")
    cache_features: bool = _field(True, "linear_eval: compute the frozen features once (no augmentation).")

    def __post_init__(self):
        if (
            isinstance(self.validation_fraction, bool)
            or not isinstance(self.validation_fraction, (int, float))
            or not 0.0 <= self.validation_fraction < 1.0
        ):
            raise ValueError(
                f"`validation_fraction` must be in [0, 1), received: validation_fraction={self.validation_fraction!r}"
            )


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Devices, determinism, fault tolerance and console (`RunConfig.runtime`)."""

    strategy: str = _field(
        "default", "default | one_device | mirrored | multi_worker (TF_CONFIG, or Slurm: --cluster) | tpu."
    )
    cpu_devices: int = _field(
        0, "Split the CPU into N logical devices (N > 1), e.g. to try --strategy=mirrored without GPUs."
    )
    cluster: str = _field(
        "tf_config",
        "Where --strategy=multi_worker finds its workers: tf_config (the TF_CONFIG variable) | slurm (the Slurm step "
        "of the srun that started this task, SlurmClusterResolver) | auto (slurm inside a Slurm step of 2+ tasks, "
        "said in one line; else tf_config).",
    )
    cluster_port_base: int = _field(
        8888, "--cluster=slurm: port of a node's first task; its n-th task listens on the port base + n (1..65535)."
    )
    cluster_gpus_per_task: int | None = _field(
        None, "--cluster=slurm: GPUs each task trains on, the first N it sees (unset: all the GPUs this task sees)."
    )
    tpu: str | None = _field(None, "TPU name or address for --strategy=tpu ('local' on a TPU VM).")
    mixed_precision: bool = _field(False, "mixed_float16 compute (GPU/TPU speed-up; slower on CPU).")
    jit_compile: bool = _field(False, "XLA-compile the train step.")
    seed: int = _field(0, "Random seed (initialisation, data order, augmentation).")
    data_service: str | None = _field(
        None,
        "tf.data service dispatcher grpc://HOST:PORT (start it and its workers with supcon-data-service): the workers "
        "build and augment the training batches, this process trains on them.",
    )
    data_service_timeout: float = _field(
        60.0,
        "Seconds (> 0) to wait for the dispatcher at --data_service to answer before the run starts; then the run "
        "stops with one line (exit 2) and nothing written to --model_dir.",
    )
    checkpoint_every: int = _field(1, "Save checkpoints/latest.keras every N epochs.")
    backup_every_steps: int = _field(
        100,
        "Write a step-level backup every N steps (and at every epoch end); 0: epoch ends only. A killed or preempted "
        "run resumes at the newest backup.",
    )
    divergence_factor: float = _field(
        10.0,
        "Stop (exit 3, last good backup kept) when the loss exceeds this multiple of the run's first logged loss; 0: "
        "stop on NaN/inf only.",
    )
    collapse_cosine: float = _field(
        0.995,
        "supcon / simclr: an epoch whose mean cosine between the embeddings (the logged mean_cosine) is at or above "
        "this, in (0, 1], counts as collapsed; after --collapse_epochs such epochs in a row the run prints one line "
        "and records it in metrics.json (\"collapsed\"), or stops with --stop_on_collapse.",
    )
    collapse_epochs: int = _field(1, "Collapsed epochs in a row (>= 1) that make a collapse (--collapse_cosine).")
    stop_on_collapse: bool = _field(
        False,
        "Stop a collapsed pre-training (exit 6; the backups from before the collapse are kept) instead of warning.",
    )
    deterministic: bool = _field(
        False, "TensorFlow op determinism: a resumed run ends bit-for-bit like an uninterrupted one on CPU (slower)."
    )
    export: bool = _field(True, "Write a SavedModel under model_dir/saved_model at the end.")
    verbose: int = _field(
        1,
        "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch (TensorFlow's own logs are off by default: "
        "absl's -v 1 shows them).",
    )

    def __post_init__(self):
        _choice("strategy", self.strategy, STRATEGIES)
        self._check_cluster()
        _positive_int("checkpoint_every", self.checkpoint_every)
        for name in ("seed", "cpu_devices", "backup_every_steps"):
            _non_negative_int(name, getattr(self, name))
        if (
            isinstance(self.divergence_factor, bool)
            or not isinstance(self.divergence_factor, (int, float))
            or not math.isfinite(self.divergence_factor)
            or (0 < self.divergence_factor <= 1)
            or self.divergence_factor < 0
        ):
            raise ValueError(
                "`divergence_factor` must be 0 (off) or a number > 1, received: "
                f"divergence_factor={self.divergence_factor!r}"
            )
        if (
            isinstance(self.collapse_cosine, bool)
            or not isinstance(self.collapse_cosine, (int, float))
            or not 0.0 < self.collapse_cosine <= 1.0
        ):
            raise ValueError(f"`collapse_cosine` must be in (0, 1], received: collapse_cosine={self.collapse_cosine!r}")
        _positive_int("collapse_epochs", self.collapse_epochs)
        if not isinstance(self.stop_on_collapse, bool):
            raise ValueError(f"`stop_on_collapse` must be a bool, received: stop_on_collapse={self.stop_on_collapse!r}")
        if self.strategy == "tpu" and self.tpu is None:
            raise ValueError("`tpu` must name the TPU ('local' on a TPU VM) for strategy='tpu', received: None")
        _positive_number("data_service_timeout", self.data_service_timeout)
        if self.data_service is not None:
            checks.host_port(self.data_service, "data_service", scheme=True, example="grpc://localhost:5050")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2, received: verbose={self.verbose}")

    def _check_cluster(self):
        _choice("cluster", self.cluster, CLUSTERS)
        if not checks.is_int(self.cluster_port_base) or not 1 <= self.cluster_port_base <= 65535:
            raise ValueError(
                "`cluster_port_base` must be an int in [1, 65535], received: "
                f"cluster_port_base={self.cluster_port_base!r}"
            )
        if self.cluster_gpus_per_task is not None:
            _non_negative_int("cluster_gpus_per_task", self.cluster_gpus_per_task)
        if self.cluster != "tf_config" and self.strategy != "multi_worker":
            raise ValueError(
                f"`cluster` {self.cluster!r} says where strategy='multi_worker' finds its workers: add "
                f"--strategy=multi_worker, received: cluster={self.cluster!r} with strategy={self.strategy!r}"
            )
        slurm_only = {"cluster_port_base": 8888, "cluster_gpus_per_task": None}
        for name, default in slurm_only.items():
            if self.cluster == "tf_config" and getattr(self, name) != default:
                raise ValueError(
                    f"`{name}` is for cluster='slurm' or 'auto' (TF_CONFIG names its own ports and the task uses "
                    f"every GPU it sees), received: {name}={getattr(self, name)!r} with cluster='tf_config'"
                )


# The groups of RunConfig, by attribute, and the class of each.
GROUPS = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "evaluation": EvalConfig,
    "runtime": RuntimeConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one training stage needs: the method, the run folder and six groups of settings.

    `method`: "supcon" / "simclr" pre-train encoder + head; "ce" trains the
    cross-entropy baseline; "linear" trains a linear probe on the frozen
    encoder of the pre-trained model at `evaluation.pretrained`. Each field's
    help text gives its meaning and unit. Build one from flat settings with
    `RunConfig.from_flat(method="supcon", temperature=0.1, ...)`; read one
    with `config.loss.temperature`, `config.optim.batch_size`, ...
    """

    method: str = _field("supcon", "supcon | simclr (pretrain), ce (train_ce), linear (linear_eval).")
    model_dir: str = _field(
        "runs/default",
        "Run folder: config.json, checkpoints/, backup/, logs/, model.keras, saved_model/, metrics.json.",
    )
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        if not self.model_dir:
            raise ValueError("`model_dir` must be a non-empty path, received: model_dir=''")
        for name, cls in GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"`{name}` must be a {cls.__name__}, received: {type(getattr(self, name)).__name__}"
                )
        data, model, loss, evaluation = self.data, self.model, self.loss, self.evaluation
        contrastive = self.method in ("supcon", "simclr")
        if loss.positives_cap > 0 and loss.positives_cap % data.num_views:
            raise ValueError(
                f"`positives_cap` must be a multiple of num_views ({data.num_views}), received: "
                f"positives_cap={loss.positives_cap}"
            )
        if evaluation.online_eval and not contrastive:
            raise ValueError(
                f"`online_eval` is for supcon / simclr pre-training, received: online_eval=True with "
                f"method={self.method!r}"
            )
        if contrastive and data.num_views < 2:
            raise ValueError(f"`num_views` must be >= 2 for {self.method}, received: num_views={data.num_views}")
        if self.method == "linear" and not evaluation.pretrained:
            raise ValueError("`pretrained` must name the pre-trained model (.keras) for method='linear', received: None")
        if model.encoder_weights is not None and self.method == "linear":
            raise ValueError(
                "`encoder_weights` initialises the encoder that supcon / simclr / ce train; method 'linear' "
                f"probes the encoder of --pretrained. Received: encoder_weights={model.encoder_weights!r} with "
                "method='linear'"
            )
        if model.queue_size and not contrastive:
            raise ValueError(
                f"`queue_size` is for supcon / simclr pre-training, received: queue_size={model.queue_size} "
                f"with method={self.method!r}"
            )
        check_ce_weight(model.ce_weight, self.method)
        self._check_labels_file()
        self._check_loss_options()
        self._check_sampler()
        self._check_augment_on()
        self._check_data_service()

    def _check_loss_options(self):
        """The loss family's options against the method and the labels the dataset gives."""
        self.loss.check_method(self.method)
        named = self.loss.label_options()
        label_kinds = [(n, v) for n, v in named if n != "denominator"]  # read multi-hot or continuous labels
        if label_kinds and self.data.labels_file is None:
            name, value = label_kinds[0]
            kind = "continuous label values" if name == "label_kernel" else "multi-hot labels"
            raise ValueError(
                f"`{name}`={value!r} reads {kind}, which dataset {self.data.dataset!r} does not give (its labels are "
                f"class ids), received: {name}={value!r} with dataset={self.data.dataset!r}"
            )
        if self.model.prototypes:
            self.loss.check_prototypes(self.method)
            if self.data.classes is None:
                raise ValueError(
                    "`prototypes` needs the number of classes: set --num_classes for an image folder, "
                    "received: prototypes=True with num_classes=None"
                )
        if self.evaluation.online_eval and label_kinds:
            raise ValueError(
                f"`online_eval` trains a class-id classifier, received: online_eval=True with "
                f"{label_kinds[0][0]}={label_kinds[0][1]!r}"
            )

    def _check_labels_file(self):
        """A labels file (multi-hot or continuous labels of an image folder): its form, and what it cannot feed."""
        path = self.data.labels_file
        if path is None:
            return
        if not isinstance(path, str) or not path.endswith((".csv", ".jsonl")):
            raise ValueError(f"`labels_file` must be a .csv or .jsonl file, received: labels_file={path!r}")
        if self.data.dataset != "folder":
            raise ValueError(
                f"`labels_file` labels an image folder (dataset 'folder'), received: labels_file={path!r} with "
                f"dataset={self.data.dataset!r}"
            )
        if self.method != "supcon":
            raise ValueError(
                "`labels_file` gives supervised contrastive pre-training (method 'supcon') its multi-hot or "
                f"continuous labels, received: labels_file={path!r} with method={self.method!r}"
            )
        for name, used in (
            ("online_eval", self.evaluation.online_eval),
            ("ce_weight", self.model.ce_weight > 0),
            ("sampler", self.data.sampler == "class_balanced"),
            ("prototypes", self.model.prototypes),
        ):
            if used:
                raise ValueError(
                    f"`{name}` needs class ids, which a labels file (multi-hot or continuous labels) does not give, "
                    f"received: {name}={self.setting(name)!r} with labels_file={path!r}"
                )
        if not os.path.isfile(path):
            raise ValueError(f"`labels_file` does not exist: labels_file={path!r}")

    def _check_sampler(self):
        data, batch_size = self.data, self.optim.batch_size
        if data.sampler != "class_balanced":
            return
        if batch_size % data.samples_per_class:
            raise ValueError(
                f"`samples_per_class` must divide batch_size ({batch_size}) for sampler='class_balanced', "
                f"received: samples_per_class={data.samples_per_class}"
            )
        classes = data.classes
        if classes is not None and batch_size // data.samples_per_class > classes:
            raise ValueError(
                f"`samples_per_class` must leave at most {classes} classes per batch "
                f"(batch_size / samples_per_class), received: samples_per_class={data.samples_per_class} "
                f"with batch_size={batch_size}"
            )

    def _check_augment_on(self):
        """Device augmentation runs inside the train step, which XLA compiles whole (jit_compile, TPUs)."""
        if self.data.augment_on != "device":
            return
        if self.runtime.jit_compile:
            raise ValueError(
                "`augment_on`='device' cannot be combined with jit_compile (Keras XLA-compiles the whole train step, "
                "and XLA has no kernels for the augmentation's image ops, e.g. CropAndResize): drop --jit_compile or "
                "use --augment_on host, received: augment_on='device' with jit_compile=True"
            )
        if self.runtime.strategy == "tpu":
            raise ValueError(
                "`augment_on`='device' cannot run on a TPU (TPUs compile the train step with XLA, which has no "
                "kernels for the augmentation's image ops): use --augment_on host, received: augment_on='device' "
                "with strategy='tpu'"
            )

    def _check_data_service(self):
        service = self.runtime.data_service
        if service is None:
            return
        if self.data.sampler == "class_balanced":
            raise ValueError(
                "`data_service` cannot serve sampler='class_balanced' (its index stream is drawn in Python, "
                "Dataset.from_generator, which the tf.data service cannot serialise): use sampler='random' or unset "
                f"data_service, received: data_service={service!r} with sampler='class_balanced'"
            )
        if self.runtime.strategy == "multi_worker":
            raise ValueError(
                "`data_service` is for single-process training (strategy default, one_device, mirrored, tpu); "
                "multi_worker would need every trainer to read the same global batches, which a shared service job "
                f"does not give, received: data_service={service!r} with strategy='multi_worker'"
            )

    @property
    def classes(self):
        """Number of classes: `data.num_classes` if given, else the dataset's known count (None for folders)."""
        return self.data.classes

    @property
    def resolved_learning_rate(self):
        """`optim.resolved_learning_rate`: the learning rate training uses."""
        return self.optim.resolved_learning_rate

    def setting(self, name):
        """The value of flat setting `name` (a flag's name), e.g. `setting("temperature")` is `loss.temperature`."""
        if name in TOP_FIELDS:
            return getattr(self, name)
        if name not in FIELD_GROUPS:
            raise ValueError(f"`name` must be a RunConfig setting, received: name={name!r}")
        return getattr(getattr(self, FIELD_GROUPS[name]), name)

    def replace(self, **changes):
        """A validated copy with `changes` applied: flat settings (`temperature=0.2`) or whole groups (`loss=...`)."""
        groups = {name: changes.pop(name) for name in list(changes) if name in GROUPS}
        top, by_group = _route(changes)
        for name, values in by_group.items():
            base = groups.get(name, getattr(self, name))
            groups[name] = dataclasses.replace(base, **values)
        return dataclasses.replace(self, **top, **groups)

    def to_dict(self):
        """The flat settings (config.json's form), plus the derived `resolved_learning_rate` (ignored on reading)."""
        values = {name: getattr(self, name) for name in TOP_FIELDS}
        for name in GROUPS:
            values.update(dataclasses.asdict(getattr(self, name)))
        return dict(values, resolved_learning_rate=self.resolved_learning_rate)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def flat_fields(cls):
        """Every setting's dataclass field, flat, in order: `method`, `model_dir`, then each group's fields."""
        fields = [field for field in dataclasses.fields(cls) if field.name in TOP_FIELDS]
        for group in GROUPS.values():
            fields.extend(dataclasses.fields(group))
        return fields

    @classmethod
    def flat_type_hints(cls):
        """`{setting: type}` of every flat setting (the flags' kinds come from them)."""
        hints = {name: hint for name, hint in typing.get_type_hints(cls).items() if name in TOP_FIELDS}
        for group in GROUPS.values():
            hints.update(typing.get_type_hints(group))
        return hints

    @classmethod
    def from_flat(cls, **settings):
        """A config from flat settings (the flags' names), each routed to its group; unknown names refused."""
        top, by_group = _route(settings)
        return cls(**top, **{name: GROUPS[name](**values) for name, values in by_group.items()})

    @classmethod
    def from_dict(cls, values):
        """A config from `to_dict()`'s flat dict (config.json), rejecting unknown keys by name."""
        if not isinstance(values, dict):
            raise ValueError(f"`values` must be a dict, received: {type(values).__name__}")
        return cls.from_flat(**{k: v for k, v in values.items() if k not in DERIVED_FIELDS})


TOP_FIELDS = ("method", "model_dir")
# {flat setting: its group} over every group's fields (the names are unique across groups).
FIELD_GROUPS = {field.name: name for name, group in GROUPS.items() for field in dataclasses.fields(group)}


def _route(settings):
    """Flat settings split into `(top-level values, {group: values})`; a ValueError names unknown ones."""
    unknown = sorted(name for name in settings if name not in TOP_FIELDS and name not in FIELD_GROUPS)
    if unknown:
        raise ValueError(f"Unknown config fields: {unknown}")
    top = {name: value for name, value in settings.items() if name in TOP_FIELDS}
    by_group = {}
    for name, value in settings.items():
        if name in FIELD_GROUPS:
            by_group.setdefault(FIELD_GROUPS[name], {})[name] = value
    return top, by_group


def check_ce_weight(ce_weight, method):
    """The joint objective's weight w of `loss = supcon + w * CE`, as a float; ValueError naming it otherwise.

    w must be a finite number >= 0 (0: no joint objective); w > 0 needs method "supcon" (SimCLR has no labels to
    classify). `RunConfig` and `SupConModel` both check through here.
    """
    if isinstance(ce_weight, bool) or not isinstance(ce_weight, (int, float)) or not math.isfinite(ce_weight) or (
        ce_weight < 0
    ):
        raise ValueError(f"`ce_weight` must be a finite number >= 0, received: ce_weight={ce_weight!r}")
    if ce_weight > 0 and method != "supcon":
        raise ValueError(
            "`ce_weight` adds a cross-entropy head to supervised contrastive pre-training (method 'supcon'), "
            f"received: ce_weight={ce_weight!r} with method={method!r}"
        )
    return float(ce_weight)


def _is_encoder_string(value):
    """A registered name, or `<module or file.py>:<function>` (keras.applications:<Name> is a module form)."""
    if not isinstance(value, str):
        return False
    if value in ENCODERS:
        return True
    module, colon, attribute = value.rpartition(":")
    if not colon or not attribute.isidentifier():
        return False
    if module.endswith(".py"):
        return len(module) > 3
    return bool(module) and all(part.isidentifier() for part in module.split("."))


# Config fields are checked as (name, value); the shared helpers take (value, name).
def _choice(name, value, choices):
    checks.choice(value, name, choices)


def _positive_int(name, value):
    checks.positive_int(value, name)


def _non_negative_int(name, value):
    checks.non_negative_int(value, name)


def _positive_number(name, value):
    checks.positive_number(value, name)
