"""Frozen, validated run configuration (`RunConfig`) shared by every training stage.

The binaries in `experiments/` turn flags and named presets into a
`RunConfig` in exactly one place; the library only ever sees this object.
Validation happens at construction, so a bad value fails before anything is
built or written, with a message naming the field and the value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from supcon_tf import _checks as checks

METHODS = ("supcon", "simclr", "ce", "linear")
DATASETS = ("digits", "cifar10", "cifar100", "imagenet2012", "folder")
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
OPTIMIZERS = ("sgd", "lars", "adam")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
AUGMENTATIONS = ("simclr", "autoaugment", "randaugment", "stacked_randaugment", "none")
SAMPLERS = ("random", "class_balanced")
LEARNING_RATE_SCALINGS = ("linear", "sqrt", "none")
DERIVED_FIELDS = ("resolved_learning_rate",)  # written to config.json by to_dict, not settable
# tf.data service dispatcher address: grpc://HOST:PORT (a host name, IPv4 address or [IPv6] address).
_SERVICE_ADDRESS = re.compile(r"grpc://([A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
# The registered encoder names (= supcon_tf.encoders.ENCODER_NAMES; tests/test_backbones.py keeps them equal);
# `encoder` may also be "keras.applications:<Name>", "<module>:<function>" or "<path/to/file.py>:<function>".
ENCODERS = (
    "resnet18", "resnet34", "resnet50", "imagenet_resnet50", "imagenet_resnet200", "small_cnn",
    "vit_tiny_patch4_32", "vit_b16",
)
ENCODER_FORMS = ("keras.applications:<Name>", "<module>:<function>", "<path/to/file.py>:<function>")
VIT_SIZE_FIELDS = ("vit_hidden_dim", "vit_depth", "vit_num_heads", "vit_mlp_dim")  # vit_tiny_patch4_32 only


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one training stage needs. Field units are in the comments.

    `method`: "supcon" / "simclr" pre-train encoder + head; "ce" trains the
    cross-entropy baseline; "linear" trains a linear probe on the frozen
    encoder of the pre-trained model at `pretrained`.
    """

    method: str = "supcon"
    model_dir: str = "runs/default"
    # Data
    dataset: str = "digits"
    data_dir: str | None = None
    num_classes: int | None = None  # required for "folder"; known for the others
    image_size: int = 16  # pixels, square
    channels: int | None = None  # image folders: 1 or 3 channels to decode to (None: 3)
    augmentation: str = "simclr"
    crop_scale_min: float = 0.2
    flip: bool = True
    num_views: int = 2
    # Model
    encoder: str = "small_cnn"
    encoder_width: float = 1.0  # small_cnn only
    encoder_weights: str | None = None  # .weights.h5 (encoder.save_weights) or .keras file initialising the encoder
    vit_hidden_dim: int | None = None  # vit_tiny_patch4_32 sizes; None: its default (192, 6, 3, 768)
    vit_depth: int | None = None
    vit_num_heads: int | None = None
    vit_mlp_dim: int | None = None
    head_hidden: int = 128  # 0 gives a linear head
    embedding_dim: int = 64
    synchronized_bn: bool = False
    # Loss
    temperature: float = 0.1
    base_temperature: float | None = None
    contrast_mode: str = "all"
    variant: str = "out"
    denominator: str = "all"  # "all" | "one_positive" | "only_negatives" (google-research's denominator_mode)
    positives_cap: int = -1  # per anchor, at most this many positives (a multiple of num_views); -1: no cap
    # Small batches (SupConModel's memory queue and momentum encoder; data.make_class_balanced_dataset)
    queue_size: int = 0  # memory-queue entries, embeddings of earlier steps (0: no queue)
    queue_warmup_steps: int = 0  # optimizer steps before the queue joins the loss
    key_momentum: float | None = None  # EMA momentum of the key encoder that fills the queue (None: no key encoder)
    sampler: str = "random"  # "random" batches, or "class_balanced" P x K batches
    samples_per_class: int = 4  # K of the P x K sampler; P = batch_size / K
    # Optimisation
    optimizer: str = "sgd"
    learning_rate: float = 0.05  # peak learning rate at reference_batch_size (see resolved_learning_rate)
    learning_rate_scaling: str = "linear"  # "linear" | "sqrt" | "none": how it follows batch_size
    reference_batch_size: int | None = None  # the batch learning_rate is given for (None: batch_size itself)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    epochs: int = 60
    batch_size: int = 128  # global, across all replicas
    steps_per_epoch: int | None = None  # None: one pass over the training split
    # Evaluation while training
    online_eval: bool = False  # supcon/simclr: online linear classifier + contrast_top1/contrast_entropy metrics
    validation_fraction: float = 0.0  # carve this fraction of the TRAIN split for validation (0: none)
    evaluate_test: bool = True  # ce / linear: evaluate on the test split at the end (False: never read it)
    # Linear evaluation
    pretrained: str | None = None  # .keras file of a pre-trained SupConModel / encoder
    cache_features: bool = True  # probe on features computed once (no augmentation)
    # Runtime
    strategy: str = "default"
    cpu_devices: int = 0  # >1 splits the CPU into that many logical devices (try mirrored without GPUs)
    tpu: str | None = None
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 0
    data_service: str | None = None  # tf.data service dispatcher "grpc://HOST:PORT" that augments (None: in-process)
    checkpoint_every: int = 1  # epochs
    backup_every_steps: int = 100  # steps between step-level backups (0: epoch ends only)
    divergence_factor: float = 10.0  # stop when the loss exceeds this x the first logged loss (0: NaN/inf only)
    deterministic: bool = False  # TensorFlow op determinism (bit-identical resumes on CPU; slower)
    export: bool = True
    verbose: int = 1  # Keras: 0 silent, 1 progress bar, 2 one line per epoch

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("augmentation", self.augmentation, AUGMENTATIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("contrast_mode", self.contrast_mode, ("all", "one"))
        _choice("variant", self.variant, ("out", "in"))
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("learning_rate_scaling", self.learning_rate_scaling, LEARNING_RATE_SCALINGS)
        if self.reference_batch_size is not None:
            _positive_int("reference_batch_size", self.reference_batch_size)
        _choice("denominator", self.denominator, ("all", "one_positive", "only_negatives"))
        if isinstance(self.positives_cap, bool) or not isinstance(self.positives_cap, int) or self.positives_cap < -1:
            raise ValueError(f"`positives_cap` must be an int >= -1, received: positives_cap={self.positives_cap!r}")
        if self.positives_cap > 0 and self.positives_cap % self.num_views:
            raise ValueError(
                f"`positives_cap` must be a multiple of num_views ({self.num_views}), received: "
                f"positives_cap={self.positives_cap}"
            )
        if not self.model_dir:
            raise ValueError("`model_dir` must be a non-empty path, received: model_dir=''")
        for name in (
            "image_size", "num_views", "embedding_dim", "epochs", "batch_size", "checkpoint_every", "samples_per_class"
        ):
            _positive_int(name, getattr(self, name))
        for name in (
            "head_hidden", "warmup_epochs", "seed", "cpu_devices", "queue_size", "queue_warmup_steps",
            "backup_every_steps",
        ):
            _non_negative_int(name, getattr(self, name))
        if self.steps_per_epoch is not None:
            _positive_int("steps_per_epoch", self.steps_per_epoch)
        for name in ("learning_rate", "temperature", "encoder_width"):
            _positive_number(name, getattr(self, name))
        if self.base_temperature is not None:
            _positive_number("base_temperature", self.base_temperature)
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
            isinstance(self.validation_fraction, bool)
            or not isinstance(self.validation_fraction, (int, float))
            or not 0.0 <= self.validation_fraction < 1.0
        ):
            raise ValueError(
                f"`validation_fraction` must be in [0, 1), received: validation_fraction={self.validation_fraction!r}"
            )
        if self.online_eval and self.method not in ("supcon", "simclr"):
            raise ValueError(
                f"`online_eval` is for supcon / simclr pre-training, received: online_eval=True with "
                f"method={self.method!r}"
            )
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3 (or unset), received: channels={self.channels!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), received: momentum={self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be >= 0, received: weight_decay={self.weight_decay}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"`crop_scale_min` must be in (0, 1], received: crop_scale_min={self.crop_scale_min}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be <= epochs ({self.epochs}), received: warmup_epochs={self.warmup_epochs}"
            )
        if self.method in ("supcon", "simclr") and self.num_views < 2:
            raise ValueError(f"`num_views` must be >= 2 for {self.method}, received: num_views={self.num_views}")
        if self.method == "linear" and not self.pretrained:
            raise ValueError("`pretrained` must name the pre-trained model (.keras) for method='linear', received: None")
        if self.dataset == "folder" and not self.data_dir:
            raise ValueError("`data_dir` must be the image folder root for dataset='folder', received: None")
        if self.num_classes is not None:
            _positive_int("num_classes", self.num_classes)
            if self.num_classes < 2:
                raise ValueError(f"`num_classes` must be >= 2, received: num_classes={self.num_classes}")
        if self.strategy == "tpu" and self.tpu is None:
            raise ValueError("`tpu` must name the TPU ('local' on a TPU VM) for strategy='tpu', received: None")
        self._check_small_batch_options()
        self._check_encoder_options()
        self._check_data_service()
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2, received: verbose={self.verbose}")

    def _check_small_batch_options(self):
        contrastive = self.method in ("supcon", "simclr")
        if self.queue_size and not contrastive:
            raise ValueError(
                f"`queue_size` is for supcon / simclr pre-training, received: queue_size={self.queue_size} "
                f"with method={self.method!r}"
            )
        if self.key_momentum is not None:
            value = self.key_momentum
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"`key_momentum` must be in [0, 1) or unset, received: key_momentum={value!r}")
            if not self.queue_size:
                raise ValueError(
                    "`key_momentum` sets the encoder that fills the memory queue; it needs queue_size > 0. "
                    f"Received: key_momentum={value} with queue_size=0"
                )
        if self.sampler == "class_balanced":
            if self.batch_size % self.samples_per_class:
                raise ValueError(
                    f"`samples_per_class` must divide batch_size ({self.batch_size}) for sampler='class_balanced', "
                    f"received: samples_per_class={self.samples_per_class}"
                )
            classes = self.classes
            if classes is not None and self.batch_size // self.samples_per_class > classes:
                raise ValueError(
                    f"`samples_per_class` must leave at most {classes} classes per batch "
                    f"(batch_size / samples_per_class), received: samples_per_class={self.samples_per_class} "
                    f"with batch_size={self.batch_size}"
                )
            if self.dataset == "imagenet2012":
                raise ValueError(
                    "`sampler`='class_balanced' holds the training set in memory: not for imagenet2012, "
                    "received: sampler='class_balanced' with dataset='imagenet2012'"
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

    def _check_encoder_options(self):
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
            if self.method == "linear":
                raise ValueError(
                    "`encoder_weights` initialises the encoder that supcon / simclr / ce train; method 'linear' "
                    f"probes the encoder of --pretrained. Received: encoder_weights={path!r} with method='linear'"
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

    def _check_data_service(self):
        if self.data_service is None:
            return
        if not isinstance(self.data_service, str) or not _SERVICE_ADDRESS.fullmatch(self.data_service) or not (
            0 < int(self.data_service.rsplit(":", 1)[1]) < 65536
        ):
            raise ValueError(
                "`data_service` must be the dispatcher address grpc://HOST:PORT (e.g. grpc://localhost:5050), "
                f"received: data_service={self.data_service!r}"
            )
        if self.sampler == "class_balanced":
            raise ValueError(
                "`data_service` cannot serve sampler='class_balanced' (its index stream is drawn in Python, "
                "Dataset.from_generator, which the tf.data service cannot serialise): use sampler='random' or unset "
                f"data_service, received: data_service={self.data_service!r} with sampler='class_balanced'"
            )
        if self.strategy == "multi_worker":
            raise ValueError(
                "`data_service` is for single-process training (strategy default, one_device, mirrored, tpu); "
                "multi_worker would need every trainer to read the same global batches, which a shared service job "
                f"does not give, received: data_service={self.data_service!r} with strategy='multi_worker'"
            )

    @property
    def classes(self):
        """Number of classes: `num_classes` if given, else the dataset's known count (None for folders)."""
        return self.num_classes if self.num_classes is not None else NUM_CLASSES.get(self.dataset)

    def replace(self, **changes):
        """A validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """The fields, plus the derived `resolved_learning_rate` (ignored by `from_dict`)."""
        return dict(dataclasses.asdict(self), resolved_learning_rate=self.resolved_learning_rate)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        """Builds a config from a dict, rejecting unknown keys by name."""
        if not isinstance(values, dict):
            raise ValueError(f"`values` must be a dict, received: {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k not in DERIVED_FIELDS}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown config fields: {unknown}")
        return cls(**values)


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
