"""Stopping a run safely: preemption signals, divergence and collapse.

A training process stops early for these reasons, each an exception that
`supcon_tf.runner` turns into one line and a documented exit status:

    Interrupted  SIGINT (Ctrl-C) or SIGTERM (a scheduler or cloud preempting
                 the machine). The current step finishes, a backup is written
                 at that exact step, and the process exits: 130 for SIGINT,
                 143 for SIGTERM. Running the same command resumes there.
    Diverged     a non-finite loss, or a loss above `divergence_factor` times
                 the run's first logged loss. Nothing is saved after the bad
                 step, so the last good backup stays; exit status 3. Change a
                 flag (e.g. --learning_rate) and run the command again to
                 resume from that backup.
    Collapsed    with --stop_on_collapse: the epoch mean of `mean_cosine`
                 (the mean cosine between the embeddings) stayed at or above
                 `collapse_cosine` for `collapse_epochs` epochs in a row
                 (`CollapseMonitor`). The backups written from the epoch
                 before those on are dropped (it may end collapsed: an
                 epoch's mean mixes the steps before and after a collapse);
                 exit status 6. Without --stop_on_collapse the monitor
                 prints one warning line and training goes on.

Epochs in these messages count from 1, as Keras' progress display does
("Epoch 2/4" is the epoch of index 1); the exceptions' attributes, the CSV
rows (training_log.csv) and the JSON records count from 0.
"""

from __future__ import annotations

import math
import signal
import sys
import threading

import keras

from supcon_tf.errors import (  # noqa: F401  (the one table of statuses)
    EXIT_COLLAPSED,
    EXIT_DIVERGED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
)

class Interrupted(Exception):
    """Training stopped on a signal after writing a backup at `(epoch, step)` (0-based epoch, steps done in it)."""

    def __init__(self, signum, epoch, step):
        self.signum = signum
        self.epoch = epoch
        self.step = step
        self.exit_status = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        super().__init__(f"interrupted at epoch {epoch + 1} step {step}; run the same command to resume")


class Diverged(Exception):
    """Training stopped on a non-finite or exploding loss; the last good backup is kept."""

    exit_status = EXIT_DIVERGED

    def __init__(self, epoch, step, loss, learning_rate, reason, global_step=None):
        self.epoch = epoch
        self.step = step
        self.global_step = global_step  # the step whose loss (or whose saved weights) showed the divergence
        self.loss = loss
        self.learning_rate = learning_rate
        super().__init__(
            f"training diverged at epoch {epoch + 1} step {step}: loss {loss:.6g} ({reason}), learning rate "
            f"{learning_rate:.6g}; the last good backup is kept: change a flag (e.g. --learning_rate) and run "
            "the same command to resume from it"
        )


COLLAPSE_REMEDIES = "warm-up (--warmup_epochs), a higher --temperature, or a lower --learning_rate"


def collapse_message(epoch, mean_cosine, threshold, span):
    """The sentence shared by the warning and `Collapsed`: the epoch (0-based; shown from 1), the mean cosine, the rule."""
    rule = f"at or above --collapse_cosine {threshold:g}" + ("" if span == 1 else f" for {span} epochs in a row")
    return (
        f"training collapsed at epoch {epoch + 1}: the mean cosine between the embeddings is {mean_cosine:.6f} "
        f"({rule}), so the loss sits at its all-equal value and its gradient vanishes"
    )


class Collapsed(Exception):
    """Training stopped on a collapsed representation (`CollapseMonitor(stop=True)`); exit status 6.

    Attributes: `epoch` (0-based, the epoch whose end detected it),
    `first_epoch` (the first epoch of the collapsed span), `drop_from_epoch`
    (the backups written during or after this epoch are condemned: the
    epoch before the span, since an epoch's mean mixes the steps before and
    after a collapse, so that epoch may already end collapsed; it does in
    the digits reproduction), `mean_cosine` (that epoch's mean),
    `threshold`, `span`.
    """

    exit_status = EXIT_COLLAPSED

    def __init__(self, epoch, mean_cosine, threshold, span):
        self.epoch = epoch
        self.first_epoch = epoch - span + 1
        self.drop_from_epoch = max(self.first_epoch - 1, 0)
        self.mean_cosine = mean_cosine
        self.threshold = threshold
        self.span = span
        super().__init__(
            f"{collapse_message(epoch, mean_cosine, threshold, span)}; the backups from epoch "
            f"{self.drop_from_epoch + 1} on are dropped (it may end collapsed already), so a rerun resumes before it or "
            f"starts afresh: try {COLLAPSE_REMEDIES} (--warmup_epochs changes the schedule: with --overwrite)"
        )


class SignalWatcher:
    """Context manager: while active, SIGINT / SIGTERM only set `received` instead of stopping the process.

    The training loop polls `received` after each step (`StepBackup`), writes
    a backup and raises `Interrupted`; a server waits on `event` (set by every
    signal; others may set it too, e.g. a thread that sees its parent die).
    With `insist` (the default), a second SIGINT stops at once (a user who
    insists); without it, it is recorded like the first (a server whose stop
    is bounded by its supervisor). Outside the main thread it does nothing
    (Python only delivers signals there).

    Attributes:
      received: the last signal number received, or None.
      event: a `threading.Event`, set when a signal arrives.
    """

    def __init__(self, *, insist=True):
        if not isinstance(insist, bool):
            raise ValueError(f"`insist` must be a bool, received: insist={insist!r}")
        self.insist = insist
        self.received = None
        self.event = threading.Event()
        self._previous = {}

    def _handle(self, signum, frame):
        if self.insist and self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        self.event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


def current_learning_rate(model):
    """The optimizer's learning rate at its current step, as a float (NaN if unknown)."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - only for the message
        return math.nan


def check_loss(loss, reference, factor):
    """The reason `loss` counts as diverged, or None.

    Args:
      loss: the logged loss (float).
      reference: the run's first logged loss, or None before it is known.
      factor: a loss above `factor * reference` diverged; 0 disables the bound.
    """
    if not math.isfinite(loss):
        return "not finite"
    if factor and reference is not None and reference > 0 and loss > factor * reference:
        return f"above {factor:g} x the first logged loss {reference:.6g}"
    return None


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `Diverged` when the logged loss is not finite or exceeds `factor` x the run's first logged loss.

    Like `keras.callbacks.TerminateOnNaN`, but it raises instead of letting
    `fit` end normally, so nothing after the bad step is saved (put it
    before the backup callback) and the run stays resumable from its last
    good backup.

    Args:
      factor: float >= 0; 0 checks finiteness only.
      position: callable `(epoch, batch) -> (step in epoch, global step)`
        (e.g. `StepBackup.position`); None counts batches from epoch starts.
      reference: the first logged loss of the run, when resuming (None: the
        first step of this process sets it).
    """

    def __init__(self, factor, position, reference=None):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
            raise ValueError(f"`factor` must be a number >= 0, received: factor={factor!r}")
        if position is not None and not callable(position):
            raise ValueError(f"`position` must be callable or None, received: position={position!r}")
        self.factor = float(factor)
        self.position = position
        self.reference = reference
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        step, global_step = self.position(self._epoch, batch) if self.position else (batch + 1, None)
        reason = check_loss(loss, self.reference, self.factor)
        if reason:
            raise Diverged(self._epoch, step, loss, current_learning_rate(self.model), reason, global_step)
        if self.reference is None:
            self.reference = loss


class CollapseMonitor(keras.callbacks.Callback):
    """Detects a collapsed representation from the epoch mean of the logged `mean_cosine` (`models.SupConModel`).

    An epoch counts as collapsed when its training `mean_cosine` is finite
    and at or above `threshold` (a perfectly collapsed representation gives
    1.0). After `span` collapsed epochs in a row, the first time, it records
    `{"epoch", "first_epoch", "mean_cosine", "threshold", "span"}` (epochs
    0-based) in `collapsed`, calls `on_collapse(record)`, and then either
    prints one line on stderr (`warning: training collapsed at epoch ...`,
    with the remedies) when `announce`, or, with `stop`, raises `Collapsed`
    (at every span that ends collapsed, not only the first). Epochs without
    `mean_cosine` in their logs leave it unchanged.

    Put it after the CSV logger (the collapsed epoch's row is written) and
    before the checkpoint and backup callbacks (with `stop`, nothing after
    the collapsed epoch is saved).

    Args:
      threshold: float in (0, 1].
      span: int >= 1, consecutive collapsed epochs needed.
      stop: bool; raise `Collapsed` instead of warning.
      state: `state()` of an earlier process of the run (a backup's), or None.
      on_collapse: None, or a callable `(record) -> None` (e.g. writing the run folder).
      announce: bool; print the warning line (the chief does, other workers not).
    """

    def __init__(self, threshold=0.995, span=1, stop=False, state=None, on_collapse=None, announce=True):
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold` must be a number in (0, 1], received: threshold={threshold!r}")
        if isinstance(span, bool) or not isinstance(span, int) or span < 1:
            raise ValueError(f"`span` must be an int >= 1, received: span={span!r}")
        for name, value in (("stop", stop), ("announce", announce)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool, received: {name}={value!r}")
        if on_collapse is not None and not callable(on_collapse):
            raise ValueError(f"`on_collapse` must be callable or None, received: on_collapse={on_collapse!r}")
        if state is not None and (
            not isinstance(state, dict)
            or not isinstance(state.get("streak", 0), int)
            or not isinstance(state.get("collapsed"), (dict, type(None)))
        ):
            raise ValueError(
                "`state` must be None or a dict {'streak': int, 'collapsed': dict or None}, "
                f"received: state={state!r}"
            )
        self.threshold = float(threshold)
        self.span = span
        self.stop = stop
        self.on_collapse = on_collapse
        self.announce = announce
        self.streak = int((state or {}).get("streak", 0))
        self.collapsed = (state or {}).get("collapsed")

    def state(self):
        """`{"streak", "collapsed"}`: JSON-able, for a backup's metadata (resumed with `state=`)."""
        return {"streak": self.streak, "collapsed": self.collapsed}

    def on_epoch_end(self, epoch, logs=None):
        if not logs or "mean_cosine" not in logs:
            return
        value = float(logs["mean_cosine"])
        if not (math.isfinite(value) and value >= self.threshold):
            self.streak = 0
            return
        self.streak += 1
        if self.streak < self.span:
            return
        first = self.collapsed is None
        if first:
            self.collapsed = {
                "epoch": int(epoch), "first_epoch": int(epoch) - self.span + 1, "mean_cosine": value,
                "threshold": self.threshold, "span": self.span,
            }
            if self.on_collapse is not None:
                self.on_collapse(dict(self.collapsed, stopped=self.stop))
        if self.stop:
            raise Collapsed(int(epoch), value, self.threshold, self.span)
        if first and self.announce:
            message = collapse_message(epoch, value, self.threshold, self.span)
            print(f"warning: {message}: try {COLLAPSE_REMEDIES}", file=sys.stderr, flush=True)
