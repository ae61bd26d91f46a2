"""The run folder of one training stage and its lifecycle: new -> running -> finishing -> finished.

Layout (`model_dir`):

    supcon_run.json            the ownership marker, written first (supcon_tf.ownership)
    locks/<task>.lock          one flock per process, held while it runs
    config.json                the resolved config of the latest start
    classes.json               the class names in id order, from the training split
    run_state.json             phase ("running" / "finishing"), restarts, config changes
    backup/<task>/             step-<global step>.weights.h5 + .json: the newest two training
                               states of each worker (checkpointing.BackupStore)
    checkpoints/latest.keras   the model after the last finished epoch
    logs/<task>/               TensorBoard event files
    training_log.csv           one row per finished epoch, each epoch exactly once
    model.keras                the final model
    saved_model/               SavedModel export
    metrics.json               test metrics, train_seconds (summed over restarts), restarts
    FINISHED                   the marker, written last
    error.log                  the tracebacks of errors that ended a process (experiments/flagging.py)

The lifecycle, as the runner drives it:

    new        the folder is absent, empty, or holds no config, state or backups.
    running    run_state.json says "running": training, with backups every
               `backup_every_steps` steps and at every epoch end.
    finishing  run_state.json says "finishing": every epoch is trained (the
               newest backup is the end-of-training state) and the final
               outputs (model.keras, saved_model/, metrics.json) are being
               written.
    finished   FINISHED exists. It is written after every final output; the
               backups are deleted only after it.

Starting the same command again on a running or finishing folder resumes at
the newest backup (no epoch is trained twice; the CSV rows of the epochs that
will run again, and a torn last row, are dropped first) or completes the
missing outputs (a folder whose final outputs are all written but whose
FINISHED is missing gets the marker; it is never retrained). On a finished
folder it changes nothing, unless `overwrite=True`, which renames the old run
to `<model_dir>.previous-<id>`, starts afresh, and deletes the old one only
after the new FINISHED. A damaged or missing run_state.json reads as
"running" while the folder holds a config or backups, and a missing
config.json is taken from the newest backup (which records the config), so
the config-change rules always apply. Every write is atomic (temporary file,
then rename), and at start-up the chief removes the temporaries of its own
writes that a kill interrupted, by their exact names, only where it writes
them.

The folder must be the project's (`supcon_tf.ownership`: the marker; a
non-empty folder without it is refused), and each process holds its lock
for as long as it runs (`claimed`). Only the chief writes here, except each
worker's own backup folder.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import shutil
import time

from supcon_tf import checkpointing, ownership

PHASES = ("new", "running", "finishing", "finished")
FINISHED = "FINISHED"
STATE = "run_state.json"
MARKER = ownership.MARKER  # written first, when the project creates the folder (supcon_tf.ownership)
KIND = "run"
CLASSES = "classes.json"
ERROR_LOG = "error.log"
# Everything the project writes at the top of a run folder. A folder holding anything else is not replaced.
OWN_ENTRIES = frozenset(
    {
        "config.json", STATE, "backup", "checkpoints", "logs", "training_log.csv", "model.keras", "saved_model",
        "metrics.json", FINISHED, CLASSES, ERROR_LOG,
    }
)
# The entries that make an unmarked folder (an older version's run) a run folder to adopt.
_CORE = ("config.json", STATE, FINISHED)
# Targets of atomic writes (`checkpointing.atomic_path`), per folder, whose temporaries start-up removes.
_ROOT_TARGETS = frozenset({"config.json", STATE, "model.keras", "saved_model", "metrics.json", FINISHED, CLASSES,
                           "training_log.csv"})
_CHECKPOINT_TARGETS = frozenset({"latest.keras"})
_BACKUP_TARGETS = (re.compile(r"step-\d{10}\.(weights\.h5|json)"),)


def is_run_folder(path):
    """True when `path` is a folder that supcon_tf created as a run folder (it holds the marker `MARKER`)."""
    return ownership.is_owned(path, KIND)

# Config fields that may change between the starts of one run (e.g. a lower
# learning rate after a divergence): they do not change the model's shape,
# the data stream or the schedule's length. Any other change needs a new
# folder or `overwrite`.
RESUMABLE_FIELDS = frozenset(
    {
        "model_dir", "learning_rate", "momentum", "weight_decay", "temperature", "base_temperature",
        "contrast_mode", "variant", "queue_warmup_steps", "strategy", "cluster", "cluster_port_base",
        "cluster_gpus_per_task", "cpu_devices", "tpu", "jit_compile",
        "checkpoint_every", "export", "verbose", "backup_every_steps", "divergence_factor", "deterministic",
        "denominator", "positives_cap", "data_service", "data_service_timeout", "learning_rate_scaling", "reference_batch_size", "resolved_learning_rate", "evaluate_test",
        "collapse_cosine", "collapse_epochs", "stop_on_collapse", "augment_on",
    }
)


class RunFolder:
    """One stage's run folder (see the module docstring for the layout and the lifecycle).

    Args:
      model_dir: the folder path (created on `claim`).
    """

    def __init__(self, model_dir):
        if not isinstance(model_dir, (str, os.PathLike)) or not str(model_dir):
            raise ValueError(f"`model_dir` must be a non-empty path, received: model_dir={model_dir!r}")
        self.root = os.fspath(model_dir)

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    @property
    def backup_dir(self):
        return self.path("backup")

    @property
    def csv_path(self):
        return self.path("training_log.csv")

    def _read_json(self, name):
        try:
            with open(self.path(name)) as f:
                value = json.load(f)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    # -- ownership -------------------------------------------------------------------------------------

    def check_claimable(self):
        """Refuses (ValueError) a file, or a non-empty folder supcon_tf did not create; reads only."""
        return ownership.check_claimable(self.root, kind=KIND, own_entries=OWN_ENTRIES, core=_CORE)

    def check_replaceable(self):
        """Refuses (ValueError) what `--overwrite` must never replace (supcon_tf.ownership); reads only."""
        ownership.check_replaceable(self.root, kind=KIND, own_entries=OWN_ENTRIES, core=_CORE)

    @contextlib.contextmanager
    def claimed(self):
        """Claims the folder (marker first, creating it if needed) and holds this process's lock while inside.

        A folder that this call created, or found empty, is given back as it
        was (marker and lock removed) when the block raises before
        `start` wrote anything, so that bad input leaves nothing behind.
        """
        before = self.check_claimable()
        ownership.claim(self.root, kind=KIND, own_entries=OWN_ENTRIES, core=_CORE)
        task_type, task_index = checkpointing.task_type_and_index()
        lock = ownership.FolderLock(self.root, f"{task_type}_{task_index}")
        self.lock = lock.acquire()
        try:
            yield self
        except BaseException:
            if before in ("absent", "empty") and set(os.listdir(self.root)) <= ownership.BOOKKEEPING:
                lock.release()
                shutil.rmtree(self.path(ownership.LOCKS), ignore_errors=True)
                os.remove(self.path(MARKER))
                if before == "absent":
                    os.rmdir(self.root)
            raise
        finally:
            lock.release()

    def replace(self):
        """`--overwrite`: the old run becomes the sibling `<model_dir>.previous-<id>` until the new one finishes.

        Holds the new folder's lock on return. Returns the sibling's path (None
        when there was nothing to replace).
        """
        if set(os.listdir(self.root)) <= ownership.BOOKKEEPING:
            return None
        old_lock = self.lock
        sibling = ownership.replace(self.root, kind=KIND, own_entries=OWN_ENTRIES, core=_CORE)
        self.lock = ownership.FolderLock(self.root, os.path.basename(old_lock.path)[: -len(".lock")]).acquire()
        old_lock.release()
        return sibling

    # -- state -------------------------------------------------------------------------------------------

    def _has_training_record(self):
        return any(os.path.exists(self.path(name)) for name in ("config.json", STATE)) or os.path.isdir(
            self.backup_dir
        )

    def outputs_complete(self):
        """True when the final outputs are all written (metrics.json is written after model.keras and saved_model/)."""
        return self._read_json("metrics.json") is not None and os.path.exists(self.path("model.keras"))

    def phase(self):
        """"new", "running", "finishing" or "finished".

        A damaged or missing run_state.json never reads as "new" while the
        folder holds a config, a state or backups: the run is "running", and
        the config-change rules apply to it.
        """
        if os.path.exists(self.path(FINISHED)):
            return "finished"
        state = self._read_json(STATE)
        if state and state.get("phase") in ("running", "finishing"):
            return state["phase"]
        if self.outputs_complete():
            return "finishing"
        return "running" if self._has_training_record() else "new"

    def state(self):
        return self._read_json(STATE) or {}

    def metrics(self):
        """The finished run's metrics.json."""
        return self._read_json("metrics.json")

    def _backup_config(self):
        """The config recorded in the newest backup that holds one (any worker), or None."""
        newest = None
        for path in glob.glob(os.path.join(self.backup_dir, "*", "step-*.json")):
            name = os.path.basename(path)
            if not name[5:-5].isdigit():
                continue
            try:
                with open(path) as f:
                    config = json.load(f).get("config")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(config, dict) and (newest is None or int(name[5:-5]) > newest[0]):
                newest = (int(name[5:-5]), config)
        return newest[1] if newest else None

    def recorded_config(self):
        """The settings of the unfinished run: config.json, else the newest backup's copy; None if nothing records them.

        Raises:
          ValueError: neither records them, while backups exist (whether a
            command continues this run cannot be checked).
        """
        config = self._read_json("config.json") or self._backup_config()
        if config is None and os.path.isdir(self.backup_dir) and any(os.scandir(self.backup_dir)):
            raise ValueError(
                f"`model_dir` {self.root}: config.json is missing or unreadable and the backups (written by an older "
                "version) do not record the settings, so it cannot be checked that this command continues that run: "
                "put the run's config.json back, or pass --overwrite to start afresh (the old run is kept beside it "
                "until the new one finishes)"
            )
        return config

    def check_resumable(self, config_dict):
        """Raises ValueError when an unfinished run's config differs from `config_dict` in a non-resumable field."""
        if self.phase() not in ("running", "finishing"):
            return
        previous = self.recorded_config()
        if previous is None:  # nothing trained is kept: the run starts at step 0 whatever its settings
            return
        changed = sorted(
            name for name in set(previous) | set(config_dict)
            if name not in RESUMABLE_FIELDS and previous.get(name) != config_dict.get(name)
        )
        if changed:
            details = ", ".join(f"{n}={previous.get(n)!r} -> {config_dict.get(n)!r}" for n in changed[:4])
            if len(changed) > 4:
                details += f", and {len(changed) - 4} more (see {self.path('config.json')})"
            raise ValueError(
                f"`model_dir` {self.root} holds an unfinished run with other settings ({details}); resume it with "
                "its own settings, or pass --overwrite to start afresh (the old run is kept beside it until the new "
                "one finishes)"
            )

    def remove_temporaries(self):
        """Deletes what interrupted atomic writes left: only the project's own temporaries, where it writes them."""
        found = ownership.temporaries(self.root, _ROOT_TARGETS)
        found += ownership.temporaries(self.path("checkpoints"), _CHECKPOINT_TARGETS)
        if os.path.isdir(self.backup_dir):
            for name in sorted(os.listdir(self.backup_dir)):
                found += ownership.temporaries(os.path.join(self.backup_dir, name), _BACKUP_TARGETS)
        return ownership.remove_paths(found)

    def start(self, config_dict):
        """Chief: enters "running" (or keeps "finishing"), writes config.json, counts a restart.

        Call inside `claimed()`. Returns:
          the number of restarts so far (0 for a new run).
        """
        previous = self.state()
        phase = self.phase()
        self.remove_temporaries()
        restarts = int(previous.get("restarts", -1)) + 1 if phase in ("running", "finishing") else 0
        changes = list(previous.get("config_changes", []))
        old_config = self._read_json("config.json") or self._backup_config()
        if phase != "new" and old_config and old_config != config_dict:
            changes.append(
                {
                    "restart": restarts,
                    "changed": {k: [old_config.get(k), config_dict.get(k)] for k in sorted(config_dict)
                                if old_config.get(k) != config_dict.get(k)},
                }
            )
        extra = {}
        if phase != "new" and not previous:
            extra["state_rebuilt"] = list(previous.get("state_rebuilt", [])) + [restarts]
        self.write_json("config.json", config_dict)
        self._write_state(
            phase="running" if phase == "new" else phase, restarts=restarts, config_changes=changes, **extra
        )
        return restarts

    def _write_state(self, **fields):
        state = dict(self.state(), **fields)
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.write_json(STATE, state)

    def record_resume(self, epoch, step, global_step):
        """Appends where this start resumed (from the newest backup) to run_state.json's "resumes"."""
        state = self.state()
        resumes = list(state.get("resumes", [])) + [{"epoch": epoch, "step": step, "global_step": global_step}]
        self._write_state(resumes=resumes)

    def record_collapse(self, record):
        """Appends a detected collapse (`resilience.CollapseMonitor`'s record) to run_state.json's "collapses",
        with the restart it happened in."""
        state = self.state()
        entry = dict(record, restart=state.get("restarts", 0))
        self._write_state(collapses=list(state.get("collapses", [])) + [entry])

    def enter_finishing(self, **fields):
        self._write_state(phase="finishing", **fields)

    def write_json(self, name, payload):
        """Writes `payload` as JSON to `name` in the folder, atomically."""
        checkpointing.write_json_atomically(self.path(name), payload, indent=2, sort_keys=True)

    def finish(self):
        """Writes the FINISHED marker (after every final output), then deletes the backups and the replaced run."""
        with checkpointing.atomic_path(self.path(FINISHED)) as temporary:
            with open(temporary, "w") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        self.delete_backups()

    def delete_backups(self):
        """Removes every worker's backups, and the run that `--overwrite` replaced: both are done with after FINISHED."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)
        ownership.discard_replaced(self.root, kind=KIND)


    def truncate_log(self, from_epoch):
        """Drops the CSV rows of epochs >= `from_epoch` (0-based) and any torn row, atomically.

        Returns:
          the number of rows dropped.
        """
        if not os.path.exists(self.csv_path):
            return 0
        with open(self.csv_path, newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        if not lines:
            return 0
        header, rows = lines[0], lines[1:]
        if not header.endswith("\n"):  # torn header: start the log again
            os.remove(self.csv_path)
            return len(rows)
        width = len(next(csv.reader([header])))
        kept = []
        for line in rows:
            fields = next(csv.reader([line]), [])
            complete = line.endswith("\n") and len(fields) == width
            if complete and fields[0].isdigit() and int(fields[0]) < from_epoch:
                kept.append(line)
        dropped = len(rows) - len(kept)
        if dropped:
            with checkpointing.atomic_path(self.csv_path) as temporary:
                with io.open(temporary, "w", newline="") as f:
                    f.write(header + "".join(kept))
        return dropped
