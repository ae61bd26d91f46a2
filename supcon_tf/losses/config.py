"""`LossConfig`: the options of the SupCon loss family as one frozen, validated value.

The same object travels from the run configuration (`RunConfig.loss`, whose
fields are the binaries' loss flags) to `models.SupConModel(loss=...)` and
into `supcon_per_anchor_loss(**config.kwargs())`; nothing between them lists
the options one by one. The per-call tensors (labels, queue, prototypes,
anchor offsets) are not options and stay arguments of the loss functions.
"""

from __future__ import annotations

import dataclasses

from supcon_tf.losses._inputs import _checked_family, _checked_options


def help_field(default, text):
    """A dataclass field with its help text (`metadata["help"]`: the text of its flag in the binaries)."""
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss options of `supcon_per_anchor_loss`; each field's help text gives its meaning.

    Validated at construction (one ValueError line naming the option), with
    the same checks as the loss functions: a temperature <= 0, an unknown
    `contrast_mode` / `variant` / `denominator`, a `positives_cap` < -1, a
    kernel without a bandwidth, or two named weightings at once are refused.

    Example:

    >>> options = LossConfig(temperature=0.1, denominator="one_positive")
    >>> options.kwargs()["denominator"]
    'one_positive'
    """

    temperature: float = help_field(0.1, "Loss temperature tau (> 0).")
    base_temperature: float | None = help_field(
        None, "Loss scale tau / base_temperature (unset: unscaled, eq. 2)."
    )
    contrast_mode: str = help_field("all", "all | one.")
    variant: str = help_field("out", "out (eq. 2) | in (eq. 3).")
    denominator: str = help_field(
        "all",
        "all (the paper) | one_positive (each positive against the negatives only: SINCERE) | only_negatives (the "
        "negatives alone: the supervised decoupled loss) | class_balanced (each class's terms averaged by its count in "
        "the contrast set: BCL): google-research's denominator_mode, extended. See docs/losses.md.",
    )
    positives_cap: int = help_field(
        -1,
        "Per anchor, keep only the first N positives of the global batch (a multiple of --num_views; the anchor's own "
        "other views always stay); -1: no cap.",
    )
    positive_weighting: str | None = help_field(
        None,
        "jaccard: multi-hot labels (an image folder's --labels_file), positives weighted by label overlap "
        "|y_i & y_j| / |y_i | y_j|; unset: 0/1 by label equality.",
    )
    label_kernel: str | None = help_field(
        None,
        "gaussian: continuous labels (y-Aware; an image folder's --labels_file with values), positives weighted by "
        "exp(-|y_i - y_j|^2 / (2 bandwidth^2)), normalised per anchor; needs --kernel_bandwidth.",
    )
    kernel_bandwidth: float | None = help_field(None, "The --label_kernel's sigma (> 0), in label units.")
    multi_label: str | None = help_field(
        None,
        "per_label (MulSupCon): multi-hot labels, each (anchor, label) pair an anchor of its own, positives the samples "
        "with that label.",
    )

    def __post_init__(self):
        temperature, base_temperature, positives_cap = _checked_options(
            self.temperature, self.base_temperature, self.contrast_mode, self.variant, self.denominator,
            self.positives_cap,
        )
        kernel_bandwidth = _checked_family(
            self.positive_weighting, self.label_kernel, self.kernel_bandwidth, self.multi_label, self.denominator,
            positives_cap,
        )
        # Stored normalised (plain float / int), as the loss functions use them.
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "base_temperature", base_temperature)
        object.__setattr__(self, "positives_cap", positives_cap)
        object.__setattr__(self, "kernel_bandwidth", kernel_bandwidth)

    @property
    def scale(self):
        """The loss scale tau / base_tau (1.0 without a base temperature)."""
        return 1.0 if self.base_temperature is None else self.temperature / self.base_temperature

    def label_options(self):
        """The options set that read labels beyond equality, as `[(name, value)]`: a weighting, a kernel,
        per-label anchors, class counts (`denominator="class_balanced"`, last)."""
        named = [(name, getattr(self, name)) for name in ("positive_weighting", "label_kernel", "multi_label")
                 if getattr(self, name) is not None]
        return named + ([("denominator", self.denominator)] if self.denominator == "class_balanced" else [])

    @property
    def reads_labels(self):
        """Whether an option reads labels beyond equality (`label_options()` is not empty)."""
        return bool(self.label_options())

    def check_method(self, method):
        """Refuses options that read labels for a method other than supervised contrastive ("supcon"): one
        ValueError naming the first such option and the method."""
        named = self.label_options()
        if named and method != "supcon":
            name, value = named[0]
            raise ValueError(
                f"`{name}`={value!r} shapes the supervised loss: it needs method='supcon', received: method={method!r}"
            )

    def check_prototypes(self, method, argument="prototypes"):
        """Refuses class centres in the contrast set (BCL's prototypes; `argument` names the setting in the
        message) where they cannot join: a method other than "supcon", options that read labels other than
        class ids (the centres are labelled 0..C-1), a positives cap."""
        if method != "supcon":
            raise ValueError(
                f"`{argument}` (class centres in the contrast set) needs method='supcon', received: method={method!r}"
            )
        other = [(name, value) for name, value in self.label_options() if name != "denominator"]
        if other:
            raise ValueError(
                f"`{argument}` needs class-id labels: it does not combine with `{other[0][0]}`, received: "
                f"{other[0][0]}={other[0][1]!r}"
            )
        if self.positives_cap >= 0:
            raise ValueError(
                f"`{argument}` does not combine with a positives cap, received: positives_cap={self.positives_cap}"
            )

    def kwargs(self):
        """`{option: value}`, the keyword arguments of `supcon_per_anchor_loss` / `supcon_loss`."""
        return dataclasses.asdict(self)

    def replace(self, **changes):
        """A validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values):
        """From `kwargs()`'s dict (e.g. a saved model's config), rejecting unknown keys by name."""
        if not isinstance(values, dict):
            raise ValueError(f"`values` must be a dict, received: {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown loss options: {unknown}")
        return cls(**values)
