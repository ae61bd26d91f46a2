"""LARS and the warm-up + cosine learning-rate schedule.

Keras 3 ships SGD, AdamW, Lamb and a cosine decay, but no LARS, and its
``CosineDecay`` warm-up starts from an absolute rate rather than a fraction of
the peak. The paper's recipes need both (Khosla et al. 2020: CIFAR with SGD +
warm-up + cosine, ImageNet with LARS), so this module provides:

- ``WarmupCosineDecay``: linear warm-up to a peak, then a half-cosine down to
  a final rate, then constant.
- ``LARS``: layer-wise adaptive rate scaling in the SimCLR/SupCon TensorFlow
  formulation (weight decay added to the gradient, a per-variable trust
  ratio, a momentum buffer that stores learning-rate-scaled steps).

Both are registered for serialisation under the package name ``supcon_tf``.
Import this module (or ``supcon_tf.optimizers``) before
``keras.saving.load_model`` on a model compiled with them.
"""

import math
import re

import keras
import tensorflow as tf
from keras import ops

from supcon_tf import _keras_compat
from supcon_tf._checks import is_finite_real as _is_finite_real
from supcon_tf._checks import is_int as _is_int
from supcon_tf._checks import is_real as _is_real

# Name substrings (matched against a variable's path) that the *default*
# exclusion rule treats as batch-norm parameters or biases. See
# ``LARS.applies_weight_decay`` for the complete rule.
DEFAULT_EXCLUDE_SUBSTRINGS = ("batch_normalization", "bias", "beta", "gamma")

# Path tokens (between "/", "_", "-", ".", ":") that mark a batch-norm layer:
# "bn", "bn1", "bn23"... Matching "bn" as a plain substring would also hit
# names such as "subnet/kernel", so the default rule matches it as a token.
_BN_TOKEN = re.compile(r"bn\d*")
_TOKEN_SPLIT = re.compile(r"[/_\-.:]")








@keras.saving.register_keras_serializable(package="supcon_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine decay, then a constant final rate.

    With ``b = base_learning_rate``, ``f = final_learning_rate``,
    ``a = warmup_start``, ``W = warmup_steps``, ``T = total_steps`` and ``s``
    the optimizer step (0-based; negative steps are treated as 0):

        s <  W:        lr(s) = b * (a + (1 - a) * s / W)
        W <= s < T:    lr(s) = f + (b - f) * 0.5 * (1 + cos(pi * (s - W) / (T - W)))
        s >= T:        lr(s) = f

    So ``lr(0) = a * b``, ``lr(W) = b`` (when ``W < T``), and the cosine
    reaches ``f`` exactly at ``s = T``. A run of ``T`` optimizer steps uses
    ``s = 0 .. T-1``. When ``W == T`` there is no cosine phase: the rate
    rises over ``s = 0 .. T-1`` and is ``f`` from ``s = T`` on.

    The schedule is computed with TensorFlow ops in float32, so it accepts a
    Python int or an integer/float tensor step and works inside
    ``tf.function`` and XLA. float32 represents every integer step up to
    2**24 (about 16.7 M steps) exactly.

    Args:
        base_learning_rate: positive float. The peak rate ``b``, reached at
            the end of warm-up.
        total_steps: int >= 1. ``T``: the step at which the rate reaches
            ``final_learning_rate`` (normally the length of the run in
            optimizer steps).
        warmup_steps: int in ``[0, total_steps]``. ``W``: the length of the
            linear warm-up. Defaults to ``0`` (no warm-up).
        warmup_start: float in ``[0, 1]``. ``a``: the rate at step 0 as a
            fraction of ``base_learning_rate``. Defaults to ``0.0``.
        final_learning_rate: float in ``[0, base_learning_rate]``. ``f``: the
            rate at and after ``total_steps``. Defaults to ``0.0``.
        name: string. Name scope of the ops. Defaults to
            ``"warmup_cosine_decay"``.

    Example:

    >>> schedule = WarmupCosineDecay(0.5, total_steps=100, warmup_steps=10)
    >>> [round(float(schedule(s)), 4) for s in (0, 5, 10, 55, 100)]
    [0.0, 0.25, 0.5, 0.25, 0.0]
    >>> optimizer = LARS(learning_rate=schedule)

    Reference:
        Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in
        1 Hour", arXiv 1706.02677 (linear warm-up); Loshchilov & Hutter,
        "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017
        (cosine decay, without restarts here); Khosla et al., "Supervised
        Contrastive Learning", NeurIPS 2020, arXiv 2004.11362 (cosine with
        warm-up in the training recipes).
    """

    def __init__(
        self,
        base_learning_rate,
        total_steps,
        warmup_steps=0,
        warmup_start=0.0,
        final_learning_rate=0.0,
        name="warmup_cosine_decay",
    ):
        super().__init__()
        if not _is_finite_real(base_learning_rate) or base_learning_rate <= 0:
            raise ValueError(
                "`base_learning_rate` must be a positive finite float, "
                f"received: base_learning_rate={base_learning_rate!r}"
            )
        if not _is_int(total_steps) or total_steps < 1:
            raise ValueError(
                f"`total_steps` must be an int >= 1, received: total_steps={total_steps!r}"
            )
        if not _is_int(warmup_steps) or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"`warmup_steps` must be an int in [0, total_steps={total_steps}], "
                f"received: warmup_steps={warmup_steps!r}"
            )
        if not _is_finite_real(warmup_start) or not 0.0 <= warmup_start <= 1.0:
            raise ValueError(
                f"`warmup_start` must be a float in [0, 1], received: warmup_start={warmup_start!r}"
            )
        if not _is_finite_real(final_learning_rate) or not (
            0.0 <= final_learning_rate <= base_learning_rate
        ):
            raise ValueError(
                "`final_learning_rate` must be a float in "
                f"[0, base_learning_rate={base_learning_rate}], "
                f"received: final_learning_rate={final_learning_rate!r}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, received: name={name!r}")
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)
        self.final_learning_rate = float(final_learning_rate)
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name):
            step = tf.maximum(tf.cast(step, tf.float32), 0.0)
            base = tf.constant(self.base_learning_rate, tf.float32)
            final = tf.constant(self.final_learning_rate, tf.float32)
            total = float(self.total_steps)
            warmup = float(self.warmup_steps)

            if self.total_steps > self.warmup_steps:
                progress = tf.clip_by_value((step - warmup) / (total - warmup), 0.0, 1.0)
                cosine = final + (base - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
            else:  # No cosine phase: warm-up runs to total_steps, then final.
                cosine = final
            if self.warmup_steps > 0:
                start = self.warmup_start
                warm = base * (start + (1.0 - start) * step / warmup)
                lr = tf.where(step < warmup, warm, cosine)
            else:
                lr = cosine
            # Exactly `final` from total_steps on (also covers warmup == total).
            return tf.where(step >= total, final, lr)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start": self.warmup_start,
            "final_learning_rate": self.final_learning_rate,
            "name": self.name,
        }


def _variable_path(variable):
    """The name the exclusion patterns are matched against: Keras path, else name."""
    path = getattr(variable, "path", None)
    if path is None:
        path = str(variable.name)
    return path


def _check_patterns(argument, patterns):
    """`None`, or a list/tuple of non-empty strings (returned as a list)."""
    if patterns is None:
        return None
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise ValueError(
            f"`{argument}` must be None or a list of name substrings, "
            f"received: {argument}={patterns!r}"
        )
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(
            f"`{argument}` must contain only non-empty strings, received: {argument}={patterns!r}"
        )
    return list(patterns)


def _is_excluded(variable, patterns):
    """True if `variable` is excluded under `patterns` (None: the default rule)."""
    path = _variable_path(variable)
    if patterns is not None:
        return any(p in path for p in patterns)
    # Default rule: every variable of rank <= 1 (biases, batch/layer-norm
    # scales and offsets, scalars), plus anything whose path names a
    # batch-norm layer or a bias/beta/gamma parameter.
    if len(variable.shape) <= 1:
        return True
    lowered = path.lower()
    if any(s in lowered for s in DEFAULT_EXCLUDE_SUBSTRINGS):
        return True
    return any(_BN_TOKEN.fullmatch(token) for token in _TOKEN_SPLIT.split(lowered))


@keras.saving.register_keras_serializable(package="supcon_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (LARS) with momentum.

    For each variable ``w`` with gradient ``g``, learning rate ``lr``
    (``learning_rate`` at the current step), momentum ``m``, weight decay
    ``wd``, trust coefficient ``eta`` and momentum buffer ``v`` (zeros at the
    start), one step is:

        if decay applies to w:       g = g + wd * w
        if adaptation applies to w:  trust = eta * ||w||_2 / ||g||_2   if ||w||_2 > 0 and ||g||_2 > 0
                                     trust = 1                         otherwise
        else:                        trust = 1
        scaled_lr = lr * trust
        v = m * v + scaled_lr * g
        w = w - v                                    (nesterov=False)
        w = w - (m * v + scaled_lr * g)              (nesterov=True, with the new v)

    Norms are Frobenius norms over the whole variable (one trust ratio per
    variable, i.e. per layer parameter), computed in at least float32. This is
    the formulation of the SimCLR / SupCon TensorFlow code ("classic
    momentum"): the momentum buffer accumulates learning-rate-scaled steps,
    so a change of ``lr`` affects only new contributions to ``v``. You et
    al.'s Algorithm 1 has the same momentum form and differs only in the
    trust ratio's denominator: ``eta * ||w|| / (||g|| + wd * ||w||)`` with the
    raw gradient there, ``eta * ||w|| / ||g + wd * w||`` here (the decay is
    folded into ``g`` before the norm).

    Exclusions. ``exclude_from_weight_decay`` and
    ``exclude_from_layer_adaptation`` are lists of name substrings matched
    against each variable's ``path`` (e.g. ``"encoder/stem_bn/gamma"``; the
    ``name`` for variables without a path); a variable matching any of them
    is excluded. An empty list excludes nothing. ``None`` (the default)
    selects the default rule, decided independently for each list: a variable
    is excluded if its rank is <= 1 (every bias, batch-norm ``gamma``/``beta``,
    layer-norm scale and scalar), or its path contains ``"batch_normalization"``,
    ``"bias"``, ``"beta"`` or ``"gamma"``, or one of its path tokens (split on
    ``/ _ - . :``) is ``"bn"`` followed by optional digits (``"stem_bn"``,
    ``"bn1"``; but not ``"subnet"``). An excluded variable gets plain momentum
    SGD: no decay and/or ``trust = 1``. ``applies_weight_decay(v)`` and
    ``applies_layer_adaptation(v)`` report the decision for a variable.

    Weight decay is applied exactly once, by this optimizer, as above. The
    Keras base class' own decoupled weight decay is disabled: the base
    attribute ``weight_decay`` is ``None`` and the coefficient lives in
    ``lars_weight_decay``; the ``weight_decay`` key of ``get_config()`` holds
    the LARS coefficient. For the same reason the base method
    ``exclude_from_weight_decay()`` raises: pass the constructor argument.

    A momentum slot is created for every variable (also when ``momentum`` is
    0), so checkpoints have the same structure for every setting.

    Args:
        learning_rate: positive float, a
            ``keras.optimizers.schedules.LearningRateSchedule`` (for example
            ``WarmupCosineDecay``) or a callable without arguments. Defaults
            to ``0.1``.
        momentum: float in ``[0, 1)``. Defaults to ``0.9``.
        weight_decay: float >= 0 (``None`` means 0). Coefficient of the L2
            term added to the gradient. Defaults to ``1e-6``.
        eta: positive float. The trust coefficient. Defaults to ``0.001``.
        nesterov: bool. Use Nesterov momentum. Defaults to ``False``.
        exclude_from_layer_adaptation: ``None`` (default rule) or a list of
            name substrings; matching variables use ``trust = 1``.
        exclude_from_weight_decay: ``None`` (default rule) or a list of name
            substrings; matching variables get no weight decay.
        name: string. Defaults to ``"lars"``.
        **kwargs: standard ``keras.optimizers.Optimizer`` arguments
            (``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema``,
            ``ema_momentum``, ``ema_overwrite_frequency``,
            ``loss_scale_factor``, ``gradient_accumulation_steps``).

    Example:

    >>> schedule = WarmupCosineDecay(4.8, total_steps=1000, warmup_steps=100)
    >>> optimizer = LARS(schedule, momentum=0.9, weight_decay=1e-6)
    >>> model.compile(optimizer=optimizer, loss="mse")  # doctest: +SKIP

    Reference:
        You, Gitman, Ginsburg, "Large Batch Training of Convolutional
        Networks", arXiv 1708.03888, 2017 (LARS, Algorithm 1);
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020 (the momentum formulation and the
        batch-norm/bias exclusions used here); Khosla et al., "Supervised
        Contrastive Learning", NeurIPS 2020, arXiv 2004.11362 (LARS for the
        ImageNet runs).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-6,
        eta=0.001,
        nesterov=False,
        exclude_from_layer_adaptation=None,
        exclude_from_weight_decay=None,
        name="lars",
        **kwargs,
    ):
        if isinstance(learning_rate, bool) or (
            _is_real(learning_rate)
            and not (math.isfinite(float(learning_rate)) and learning_rate > 0)
        ):
            raise ValueError(
                "`learning_rate` must be a positive finite float, a "
                "LearningRateSchedule or a callable, "
                f"received: learning_rate={learning_rate!r}"
            )
        if not _is_finite_real(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), received: momentum={momentum!r}")
        if weight_decay is None:
            weight_decay = 0.0
        if not _is_finite_real(weight_decay) or weight_decay < 0:
            raise ValueError(
                f"`weight_decay` must be a finite float >= 0, received: weight_decay={weight_decay!r}"
            )
        if not _is_finite_real(eta) or eta <= 0:
            raise ValueError(f"`eta` must be a positive finite float, received: eta={eta!r}")
        if not isinstance(nesterov, bool):
            raise ValueError(f"`nesterov` must be a bool, received: nesterov={nesterov!r}")
        exclude_from_layer_adaptation = _check_patterns(
            "exclude_from_layer_adaptation", exclude_from_layer_adaptation
        )
        exclude_from_weight_decay = _check_patterns(
            "exclude_from_weight_decay", exclude_from_weight_decay
        )
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, received: name={name!r}")
        # weight_decay=None: the base class must never apply its own
        # (decoupled) decay; LARS folds the decay into the gradient itself.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = nesterov
        # Not named `exclude_from_weight_decay`: that would shadow the base
        # class method of the same name.
        self.exclude_from_layer_adaptation_patterns = exclude_from_layer_adaptation
        self.exclude_from_weight_decay_patterns = exclude_from_weight_decay

    def applies_weight_decay(self, variable):
        """Whether `variable` gets weight decay (class docstring's rule; never when it is 0)."""
        if self.lars_weight_decay == 0.0:
            return False
        return not _is_excluded(variable, self.exclude_from_weight_decay_patterns)

    def applies_layer_adaptation(self, variable):
        """Whether `variable` gets the trust ratio (see the class docstring's rule)."""
        return not _is_excluded(variable, self.exclude_from_layer_adaptation_patterns)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Not supported: pass ``exclude_from_weight_decay=[...]`` to the constructor."""
        raise NotImplementedError(
            "LARS applies its own weight decay; pass `exclude_from_weight_decay=[...]` "
            "(name substrings) to the LARS constructor instead of calling "
            "`exclude_from_weight_decay()`."
        )

    def build(self, var_list):
        """Creates one momentum slot per variable and fixes the exclusion decisions."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = []
        self._decay_flags = []
        self._adaptation_flags = []
        for variable in var_list:
            self.momentums.append(self.add_variable_from_reference(variable, "momentum"))
            # Decided here, on the Keras variables (which have a `path`);
            # `update_step` may receive the backend variables instead.
            self._decay_flags.append(self.applies_weight_decay(variable))
            self._adaptation_flags.append(self.applies_layer_adaptation(variable))

    def update_step(self, gradient, variable, learning_rate):
        """One LARS step on `variable` (see the class docstring for the equations)."""
        index = _keras_compat.optimizer_variable_index(self, variable)
        velocity = self.momentums[index]
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        gradient = ops.cast(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        momentum = ops.cast(self.momentum, dtype)

        if self._decay_flags[index]:
            gradient = gradient + ops.cast(self.lars_weight_decay, dtype) * variable

        if self._adaptation_flags[index]:
            norm_dtype = keras.backend.result_type(keras.backend.standardize_dtype(dtype), "float32")
            w_norm = ops.sqrt(ops.sum(ops.square(ops.cast(variable, norm_dtype))))
            g_norm = ops.sqrt(ops.sum(ops.square(ops.cast(gradient, norm_dtype))))
            usable = ops.logical_and(ops.greater(w_norm, 0.0), ops.greater(g_norm, 0.0))
            # Safe denominator: the ratio is discarded where g_norm == 0.
            ratio = self.eta * w_norm / ops.where(usable, g_norm, ops.ones_like(g_norm))
            trust = ops.where(usable, ratio, ops.ones_like(ratio))
            scaled_lr = learning_rate * ops.cast(trust, dtype)
        else:
            scaled_lr = learning_rate

        step = scaled_lr * gradient
        new_velocity = momentum * velocity + step
        self.assign(velocity, new_velocity)
        if self.nesterov:
            self.assign_sub(variable, momentum * new_velocity + step)
        else:
            self.assign_sub(variable, new_velocity)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                # Replaces the base class' (always None) decoupled decay.
                "weight_decay": self.lars_weight_decay,
                "eta": self.eta,
                "nesterov": self.nesterov,
                "exclude_from_layer_adaptation": self.exclude_from_layer_adaptation_patterns,
                "exclude_from_weight_decay": self.exclude_from_weight_decay_patterns,
            }
        )
        return config
