"""The tests' fault injector: a `supcon_tf._faults` hook that kills this process, or fails a write, at a named point.

A spec names the point, and optionally its occurrence n (1 by default):

    <point>[:<n>]                 SIGKILL the n-th time `point` is reached;
    disk_full:<write>[:<n>]       the n-th such write fails with OSError ENOSPC
                                  naming its file (the temporary output is
                                  removed, the old file kept, as on a full disk);
    internal_error:<write>[:<n>]  it raises a RuntimeError (a stand-in for a bug).

The write points are atomic writes of a run folder, told apart by the file
written (`write_point`): backup_write (a backup's weights), checkpoint_write
(checkpoints/), final_model_save (model.keras), saved_model_export
(a SavedModel folder), metrics_write (metrics.json), finished_marker (FINISHED); and
csv_append (the epoch's training_log.csv row: a torn row, then the kill).
The step points act through a callback the hook adds to `fit`: `step:<k>`
kills before global step k (0-based) runs, `nan_loss:<k>` makes the
divergence guard see a NaN loss at global step k (the k-th step's end),
`slow_steps:<ms>` sleeps that long before every step (time to signal a tiny
run mid-epoch).

In a test: `with _faults.installed(FaultInjector("disk_full:metrics_write")): ...`.
To kill a real binary, run this file as a script, which installs the hook and
then runs the module as `python -m` would:

    python tests/fault_injection.py backup_write:3 -m experiments.pretrain --model_dir=...

(`helpers.run_command(..., fault=spec)` does that.)
"""

from __future__ import annotations

import errno
import math
import os
import runpy
import signal
import sys
import time

import experiments.flagging  # noqa: F401  (the binaries' TensorFlow environment, before TensorFlow loads)
import keras

from supcon_tf import _faults, checkpointing

WRITE_POINTS = (
    "backup_write", "checkpoint_write", "csv_append", "final_model_save", "saved_model_export", "metrics_write",
    "finished_marker",
)
STEP_POINTS = ("step", "nan_loss", "slow_steps")
FAULT_POINTS = WRITE_POINTS + STEP_POINTS
# What happens at a write point instead of SIGKILL.
FAULT_MODES = ("disk_full", "internal_error")


def write_point(path, temporary):
    """The write point of an atomic write of `temporary` onto `path`, or None for the writes no spec names."""
    folder, name = os.path.split(os.fspath(path))
    if os.path.isfile(os.path.join(temporary, "saved_model.pb")):
        return "saved_model_export"
    if name.startswith("step-") and name.endswith(".weights.h5"):
        return "backup_write"
    if os.path.basename(folder) == "checkpoints":
        return "checkpoint_write"
    return {
        "model.keras": "final_model_save", "metrics.json": "metrics_write", "FINISHED": "finished_marker",
    }.get(name)


class FaultInjector:
    """The hook (`hook(point, **context)`) for one spec (the module docstring's grammar)."""

    def __init__(self, spec):
        self.point, self.count, self.mode = None, 1, None
        given = spec
        mode, _, rest = spec.partition(":")
        if mode in FAULT_MODES:
            self.mode, spec = mode, rest
        point, _, count = spec.partition(":")
        if point not in (WRITE_POINTS if self.mode else FAULT_POINTS) or (count and not count.isdigit()):
            raise ValueError(
                f"a fault spec must be <point>[:<n>] with point one of {FAULT_POINTS}, or <mode>:<point>[:<n>] "
                f"with mode one of {FAULT_MODES} and point one of {WRITE_POINTS}, received: {given!r}"
            )
        self.point, self.count = point, int(count or 1)
        self._seen = 0

    def __repr__(self):
        return f"FaultInjector({':'.join(str(p) for p in (self.mode, self.point, self.count) if p)!r})"

    def __call__(self, point, **context):
        if point == "write":
            self.reached(write_point(context["path"], context["temporary"]), context["path"])
        elif point == "fit":
            self._add_callbacks(context["callbacks"])

    def reached(self, point, path=None):
        """At `point` (writing `path`, when known): kills the process, or raises, at the requested occurrence."""
        if point is None or point != self.point:
            return
        self._seen += 1
        if self._seen != self.count:
            return
        if self.mode == "disk_full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else os.fspath(path))
        if self.mode == "internal_error":
            raise RuntimeError(f"injected internal error at {point} (tests/fault_injection.py)")
        os.kill(os.getpid(), signal.SIGKILL)

    def _add_callbacks(self, callbacks):
        if self.point in STEP_POINTS:
            backup = next(c for c in callbacks if isinstance(c, checkpointing.StepBackup))
            callbacks.insert(0, _StepFault(self, backup))  # first: before the divergence guard reads the loss
        elif self.point == "csv_append":
            for index, callback in enumerate(callbacks):
                if isinstance(callback, keras.callbacks.CSVLogger):
                    callbacks.insert(index, _TornRow(self, callback.filename))
                    break


class _StepFault(keras.callbacks.Callback):
    """step / nan_loss / slow_steps, at global steps as the run's `StepBackup` counts them."""

    def __init__(self, injector, backup):
        super().__init__()
        self.injector, self.backup, self.epoch = injector, backup, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        point, count = self.injector.point, self.injector.count
        if point == "step" and self.backup.position(self.epoch, batch - 1)[1] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "slow_steps":
            time.sleep(count / 1000)

    def on_train_batch_end(self, batch, logs=None):
        point, count = self.injector.point, self.injector.count
        if point == "nan_loss" and logs is not None and self.backup.position(self.epoch, batch)[1] == count:
            logs["loss"] = math.nan  # Keras hands the same logs to the callbacks after this one


class _TornRow(keras.callbacks.Callback):
    """csv_append: just before the CSV logger writes an epoch's row, the requested time: half a row, then the fault."""

    def __init__(self, injector, filename):
        super().__init__()
        self.injector, self.filename = injector, filename

    def on_epoch_end(self, epoch, logs=None):
        if self.injector._seen + 1 == self.injector.count:
            with open(self.filename, "a") as f:
                f.write(f"{epoch},")
        self.injector.reached("csv_append", self.filename)


def main(argv):
    """`fault_injection.py SPEC -m MODULE ARGS...`: runs MODULE as `python -m MODULE ARGS...` with the hook installed."""
    if len(argv) < 4 or argv[2] != "-m":
        raise SystemExit(f"usage: {argv[0]} SPEC -m MODULE [ARGS...], received: {argv[1:]}")
    spec, module, args = argv[1], argv[3], argv[4:]
    injector = FaultInjector(spec)
    sys.path[0] = os.getcwd()  # as under `python -m`: the working folder first, not tests/
    sys.argv = [module, *args]
    with _faults.installed(injector):
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
