"""Safe writing of run outputs: chief-only, atomic checkpoints and exports, and per-worker backup directories.

Under multi-worker training every worker runs the same program. Only the
chief writes checkpoints and exports, and every write goes to a temporary
path in the destination's folder first and is then renamed into place, so a
reader (or a restarted run) never sees a half-written file, and a crash
mid-write leaves the previous version intact. Keras' `BackupAndRestore`
state is written per worker (a shared backup folder crashes on an HDF5
file lock when two workers write it at once).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import NamedTuple

import numpy as np

import keras

from supcon_tf import _faults, resilience


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError(f"TF_CONFIG must be JSON, received: TF_CONFIG={raw!r}") from None


def task_type_and_index():
    """`(task_type, task_index)` from TF_CONFIG; `("worker", 0)` without one."""
    task = _tf_config().get("task", {})
    return task.get("type", "worker"), int(task.get("index", 0))


def is_chief():
    """True for the process that writes outputs.

    The chief is the task of type "chief" when the cluster has one, else
    worker 0; without TF_CONFIG (single process) it is this process.
    """
    config = _tf_config()
    task_type, index = task_type_and_index()
    if "chief" in config.get("cluster", {}):
        return task_type == "chief"
    return task_type == "worker" and index == 0


def worker_backup_dir(base_dir):
    """This worker's own backup folder (`BackupStore`; Keras `BackupAndRestore` alike): `base_dir/<task_type>_<index>`.

    Args:
      base_dir: non-empty path shared by the run.
    """
    if not isinstance(base_dir, (str, os.PathLike)) or not str(base_dir):
        raise ValueError(f"`base_dir` must be a non-empty path, received: base_dir={base_dir!r}")
    task_type, index = task_type_and_index()
    return os.path.join(os.fspath(base_dir), f"{task_type}_{index}")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; on success renames it onto `path`.

    Works for files and folders (e.g. a SavedModel). The temporary name keeps
    `path`'s suffix, so writers that check extensions (`.keras`,
    `.weights.h5`) accept it. On an exception the temporary output is
    removed and `path` is left as it was. Replacing an existing folder
    renames the old one aside first and deletes it only after the new one is
    in place.

    Args:
      path: destination file or folder path.

    The temporary output, once complete and before the rename, reaches the
    test hook's "write" point (`supcon_tf._faults`).
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"`path` must be a non-empty path, received: path={path!r}")
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    stem, dot, suffix = name.partition(".")
    temporary = os.path.join(folder, f".tmp-{token}-{stem}{dot}{suffix}")
    try:
        yield temporary
        if not os.path.exists(temporary):
            raise FileNotFoundError(f"nothing was written to the temporary path {temporary} for {path}")
        _faults.reached("write", path=path, temporary=temporary)
        if os.path.isdir(temporary) and os.path.isdir(path):
            aside = os.path.join(folder, f".old-{token}-{name}")
            os.replace(path, aside)
            os.replace(temporary, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomically(path, payload, *, newline=False, **dump_kwargs):
    """Writes `payload` as JSON to `path` through `atomic_path`: the old file or the new one, never a torn one.

    `dump_kwargs` go to `json.dump` (e.g. `indent`, `sort_keys`, `default`); `newline` ends the file with one.
    """
    with atomic_path(path) as temporary:
        with open(temporary, "w") as f:
            json.dump(payload, f, **dump_kwargs)
            if newline:
                f.write("\n")


def save_model_atomically(model, path):
    """Saves `model` to `path` (`.keras` or `.weights.h5`) via `atomic_path`, on the chief only.

    Returns:
      True if this process wrote the file.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, received: model={model!r}")
    path = os.fspath(path)
    if not (path.endswith(".keras") or path.endswith(".weights.h5")):
        raise ValueError(f"`path` must end in .keras or .weights.h5, received: path={path!r}")
    if not is_chief():
        return False
    with atomic_path(path) as temporary:
        if path.endswith(".weights.h5"):
            model.save_weights(temporary)
        else:
            model.save(temporary)
    return True


class ChiefModelCheckpoint(keras.callbacks.Callback):
    """Saves the model at the end of every `period`-th epoch, on the chief only, atomically.

    Args:
      filepath: destination; may contain `{epoch}` (1-based, like Keras'
        `ModelCheckpoint`). Must end in `.keras` or `.weights.h5`.
      period: save every `period` epochs (and always after the last one).

    Example:

    >>> model.fit(ds, epochs=100, callbacks=[ChiefModelCheckpoint("run/ckpt/epoch{epoch:03d}.keras")])
    """

    def __init__(self, filepath, period=1):
        super().__init__()
        filepath = os.fspath(filepath)
        if not (filepath.endswith(".keras") or filepath.endswith(".weights.h5")):
            raise ValueError(f"`filepath` must end in .keras or .weights.h5, received: filepath={filepath!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"`period` must be a positive int, received: period={period!r}")
        self.filepath = filepath
        self.period = period
        self._epochs = None

    def on_train_begin(self, logs=None):
        self._epochs = (self.params or {}).get("epochs")

    def on_epoch_end(self, epoch, logs=None):
        last = self._epochs is not None and epoch + 1 == self._epochs
        if (epoch + 1) % self.period == 0 or last:
            save_model_atomically(self.model, self.filepath.format(epoch=epoch + 1, **(logs or {})))


# ---------------------------------------------------------------------------
# Step-level backups (resume at the exact step).
# ---------------------------------------------------------------------------


class BackupState(NamedTuple):
    """One saved training state: weights (model + optimizer) and where training stood.

    `epoch` is 0-based and `step` counts the steps done in it, so `(e, 0)`
    means "epoch e not started" and `global_step = epoch * steps_per_epoch +
    step`. `meta` holds the rest (metric state, last epoch's logs, train
    seconds, the first logged loss).
    """

    global_step: int
    epoch: int
    step: int
    weights_path: str
    meta: dict


class BackupStore:
    """The backup folder of one worker: `step-<global step>.weights.h5` + `step-<global step>.json` pairs.

    A state is valid once its JSON exists: the weights are written (atomically)
    first, the JSON (atomically) second, so a kill at any moment leaves the
    previous valid state in place. The two newest valid states are kept
    (`keep`), older ones deleted, so a state that turns out unreadable falls
    back to the one before. Under multi-worker training each worker writes
    its own folder (`backup/<task_type>_<index>`), and `restore` picks the
    newest step that every worker's folder holds, so all workers resume from
    the same step.

    Args:
      root: the run's backup folder (`<model_dir>/backup`).
      keep: int >= 1, valid states kept per worker.
    """

    def __init__(self, root, keep=2):
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"`root` must be a non-empty path, received: root={root!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be a positive int, received: keep={keep!r}")
        self.root = os.fspath(root)
        self.folder = worker_backup_dir(self.root)
        self.keep = keep

    @staticmethod
    def _steps(folder):
        if not os.path.isdir(folder):
            return set()
        steps = set()
        for name in os.listdir(folder):
            if name.startswith("step-") and name.endswith(".json") and name[5:-5].isdigit():
                if os.path.exists(os.path.join(folder, name[:-5] + ".weights.h5")):
                    steps.add(int(name[5:-5]))
        return steps

    def _paths(self, global_step, folder=None):
        stem = os.path.join(folder or self.folder, f"step-{global_step:010d}")
        return stem + ".weights.h5", stem + ".json"

    def save(self, model, *, epoch, step, global_step, meta):
        """Writes a state (weights, then its JSON), then deletes states beyond the newest `keep`."""
        weights_path, meta_path = self._paths(global_step)
        os.makedirs(self.folder, exist_ok=True)
        with atomic_path(weights_path) as temporary:
            model.save_weights(temporary)
        payload = dict(meta, epoch=int(epoch), step=int(step), global_step=int(global_step))
        write_json_atomically(meta_path, payload)
        for old in sorted(self._steps(self.folder))[: -self.keep]:
            for path in self._paths(old):
                if os.path.exists(path):
                    os.remove(path)

    def candidates(self):
        """Valid global steps every worker folder holds, newest first (this worker's own if it is alone)."""
        folders = [os.path.join(self.root, name) for name in sorted(os.listdir(self.root))] if os.path.isdir(
            self.root
        ) else []
        folders = [f for f in folders if os.path.isdir(f)]
        if self.folder not in folders:
            return []
        common = None
        for folder in folders:
            steps = self._steps(folder)
            common = steps if common is None else common & steps
        return sorted(common or (), reverse=True)

    def restore(self, model):
        """Loads the newest state every worker holds into `model` (built, optimizer built); None if there is none.

        A state whose files cannot be read (e.g. a disk error) is skipped for
        the one before it.
        """
        for global_step in self.candidates():
            weights_path, meta_path = self._paths(global_step)
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
                model.load_weights(weights_path)
            except (OSError, ValueError):
                continue
            return BackupState(global_step, int(meta["epoch"]), int(meta["step"]), weights_path, meta)
        return None

    def discard_from(self, global_step):
        """Deletes this worker's states at `global_step` and later (written after a bad update)."""
        for step in self._steps(self.folder):
            if step >= global_step:
                for path in reversed(self._paths(step)):  # the JSON first: the state stops counting at once
                    if os.path.exists(path):
                        os.remove(path)


def metric_state(model):
    """The metrics' variable values (`{metric name: [values]}`), to restore a half-done epoch's running means."""
    return {
        metric.name: [keras.ops.convert_to_numpy(v).tolist() for v in metric.variables] for metric in model.metrics
    }


def restore_metric_state(model, state):
    """Assigns values saved by `metric_state` (metrics not in `state` are left as they are)."""
    for metric in model.metrics:
        for variable, value in zip(metric.variables, (state or {}).get(metric.name, ())):
            variable.assign(value)


def all_finite(model):
    """True when every variable of `model` (weights and optimizer state) is finite."""
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    for variable in variables:
        if "float" in str(variable.dtype):
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable))):
                return False
    return True


class StepBackup(keras.callbacks.Callback):
    """Writes `BackupStore` states every `every_steps` steps and at each epoch end; stops safely on a signal.

    It replaces `keras.callbacks.BackupAndRestore`, whose Keras 3 version
    records the step but resumes only at an epoch start and writes its files
    in place (a kill mid-write leaves a torn state). Restoring is the
    runner's job (`BackupStore.restore`, before `fit`), because resuming at a
    step needs the input stream to start at that step too.

    Each `fit` call covers epochs `[initial_epoch, epochs)`; the first of
    them may be a resumed, partial epoch that starts after `first_step`
    steps (its metric running means are restored from `first_metrics`).

    Args:
      store: the `BackupStore`.
      steps_per_epoch: steps of a full epoch.
      every_steps: backup period in steps (0: epoch ends only).
      first_step: steps of the first epoch done before this `fit`.
      first_metrics: `metric_state` saved with the resumed state.
      signals: a `resilience.SignalWatcher`; on a signal, a backup is written
        after the current step and `resilience.Interrupted` is raised (after
        the epoch's end when the step is the epoch's last: a state is never
        "epoch e, all its steps done", which would resume with an empty epoch).
      meta: callable returning extra JSON-able metadata for each state.
      check_finite: refuse to save non-finite weights (raises
        `resilience.Diverged`), so the last good backup stays.
    """

    def __init__(
        self,
        store,
        *,
        steps_per_epoch,
        every_steps=0,
        first_step=0,
        first_metrics=None,
        signals=None,
        meta=None,
        check_finite=True,
    ):
        super().__init__()
        if not isinstance(store, BackupStore):
            raise ValueError(f"`store` must be a BackupStore, received: store={store!r}")
        for name, value, low in (("steps_per_epoch", steps_per_epoch, 1), ("every_steps", every_steps, 0),
                                 ("first_step", first_step, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, received: {name}={value!r}")
        self.store = store
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.first_step = first_step
        self.first_metrics = first_metrics
        self.signals = signals
        self.meta = meta or (lambda: {})
        self.check_finite = check_finite
        self._first_epoch = None
        self.epoch_logs = None

    def position(self, epoch, batch):
        """`(steps done in epoch, global step)` after batch `batch` (0-based, of this fit) of `epoch`."""
        offset = self.first_step if epoch == self._first_epoch else 0
        step = offset + batch + 1
        return step, epoch * self.steps_per_epoch + step

    def on_train_begin(self, logs=None):
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
            if self.first_step and self.first_metrics:
                restore_metric_state(self.model, self.first_metrics)  # fit reset them just before this call
        self._epoch = epoch

    def save(self, epoch, step, global_step):
        if self.check_finite and not all_finite(self.model):
            raise resilience.Diverged(
                epoch, step, float("nan"), resilience.current_learning_rate(self.model), "non-finite weights",
                global_step + 1,
            )
        meta = dict(self.meta(), metrics=metric_state(self.model), epoch_logs=self.epoch_logs)
        self.store.save(self.model, epoch=epoch, step=step, global_step=global_step, meta=meta)

    def on_train_batch_end(self, batch, logs=None):
        step, global_step = self.position(self._epoch, batch)
        if step >= self.steps_per_epoch:  # the epoch's last step: a signal stops after its end (`on_epoch_end`)
            return
        if self.signals is not None and self.signals.received is not None:
            self.save(self._epoch, step, global_step)
            raise resilience.Interrupted(self.signals.received, self._epoch, step)
        if self.every_steps and global_step % self.every_steps == 0:
            self.save(self._epoch, step, global_step)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs = {k: float(v) for k, v in (logs or {}).items()}
        self.save(epoch + 1, 0, (epoch + 1) * self.steps_per_epoch)
        if self.signals is not None and self.signals.received is not None:  # after the epoch's row and backup
            raise resilience.Interrupted(self.signals.received, epoch, self.steps_per_epoch)


class RunCSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` (append mode) whose columns are those of the logs.

    The columns are the keys of the first epoch's logs: the `val_*` columns
    only when there is validation (Keras' own logger adds a `val_` column per
    metric in any case, all "NA" without validation). The runner drops the
    rows of epochs that will run again (and any torn last line) before
    training resumes (`run_folder.RunFolder.truncate_log`).
    """

    def __init__(self, filename):
        super().__init__(filename, append=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted(logs or {})
        super().on_epoch_end(epoch, logs)
