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

import keras


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
    """This worker's own `BackupAndRestore` folder: `base_dir/<task_type>_<index>`.

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
