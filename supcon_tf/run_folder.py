"""The run folder of one training stage and its lifecycle: new -> running -> finishing -> finished.

Layout (`model_dir`):

    config.json                the resolved config of the latest start
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

The lifecycle, as the runner drives it:

    new        the folder is absent or has no run_state.json.
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
missing outputs. On a finished folder it changes nothing, unless
`overwrite=True`, which moves the old folder aside, starts afresh in an empty
one, and only then deletes the old one. Every write is atomic (temporary file,
then rename), and at start-up the chief removes the temporaries of writes that
a kill interrupted.

Only the chief writes here, except each worker's own backup folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid

from supcon_tf import checkpointing

PHASES = ("new", "running", "finishing", "finished")
FINISHED = "FINISHED"
STATE = "run_state.json"
# The ownership marker: written first, when the project creates a run folder (its run id, host, pid, time).
MARKER = "supcon_run.json"


def is_run_folder(path):
    """True when `path` is a folder that supcon_tf created as a run folder (it holds the marker `MARKER`)."""
    return os.path.isfile(os.path.join(os.fspath(path), MARKER))

# Config fields that may change between the starts of one run (e.g. a lower
# learning rate after a divergence): they do not change the model's shape,
# the data stream or the schedule's length. Any other change needs a new
# folder or `overwrite`.
RESUMABLE_FIELDS = frozenset(
    {
        "model_dir", "learning_rate", "momentum", "weight_decay", "temperature", "base_temperature",
        "contrast_mode", "variant", "queue_warmup_steps", "strategy", "cpu_devices", "tpu", "jit_compile",
        "checkpoint_every", "export", "verbose", "backup_every_steps", "divergence_factor", "deterministic",
        "denominator", "positives_cap", "data_service", "learning_rate_scaling", "reference_batch_size", "resolved_learning_rate", "evaluate_test",
    }
)


class RunFolder:
    """One stage's run folder (see the module docstring for the layout and the lifecycle).

    Args:
      model_dir: the folder path (created on `start`).
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
                return json.load(f)
        except (OSError, ValueError):
            return None

    def phase(self):
        """"new", "running", "finishing" or "finished"."""
        if os.path.exists(self.path(FINISHED)):
            return "finished"
        state = self._read_json(STATE)
        if not state:
            return "new"
        return state.get("phase", "running")

    def state(self):
        return self._read_json(STATE) or {}

    def metrics(self):
        """The finished run's metrics.json."""
        return self._read_json("metrics.json")

    def check_resumable(self, config_dict):
        """Raises ValueError when an unfinished run's config differs from `config_dict` in a non-resumable field."""
        if self.phase() not in ("running", "finishing"):
            return
        previous = self._read_json("config.json") or {}
        changed = sorted(
            name for name in set(previous) | set(config_dict)
            if name not in RESUMABLE_FIELDS and previous.get(name) != config_dict.get(name)
        )
        if changed:
            details = ", ".join(f"{n}={previous.get(n)!r} -> {config_dict.get(n)!r}" for n in changed)
            raise ValueError(
                f"`model_dir` {self.root} holds an unfinished run with other settings ({details}); run the same "
                "command to resume it, or pass --overwrite to start afresh"
            )

    def clear(self):
        """Removes the whole folder: renamed aside first, so a kill never leaves a mix of old and new files."""
        if not os.path.exists(self.root):
            return
        parent, name = os.path.split(os.path.abspath(self.root))
        aside = os.path.join(parent, f".{name}.overwritten-{uuid.uuid4().hex[:8]}")
        os.replace(self.root, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def remove_temporaries(self):
        """Deletes what interrupted atomic writes left behind (`.tmp-*`, `.old-*`), anywhere in the folder."""
        removed = []
        for directory, subdirectories, files in os.walk(self.root):
            for name in list(subdirectories) + files:
                if name.startswith((".tmp-", ".old-")):
                    path = os.path.join(directory, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                        subdirectories.remove(name)
                    elif os.path.exists(path):
                        os.remove(path)
                    removed.append(path)
        return removed

    def start(self, config_dict):
        """Chief: enters "running" (or keeps "finishing"), writes config.json, counts a restart.

        Returns:
          the number of restarts so far (0 for a new run).
        """
        previous = self.state()
        phase = self.phase()
        os.makedirs(self.root, exist_ok=True)
        self.remove_temporaries()
        restarts = int(previous.get("restarts", -1)) + 1 if phase in ("running", "finishing") else 0
        changes = list(previous.get("config_changes", []))
        old_config = self._read_json("config.json")
        if phase != "new" and old_config and old_config != config_dict:
            changes.append(
                {
                    "restart": restarts,
                    "changed": {k: [old_config.get(k), config_dict.get(k)] for k in sorted(config_dict)
                                if old_config.get(k) != config_dict.get(k)},
                }
            )
        self.write_json("config.json", config_dict)
        self._write_state(phase="running" if phase == "new" else phase, restarts=restarts, config_changes=changes)
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

    def enter_finishing(self, **fields):
        self._write_state(phase="finishing", **fields)

    def write_json(self, name, payload, fault_point=None):
        """Writes `payload` as JSON to `name` in the folder, atomically."""
        checkpointing.write_json_atomically(self.path(name), payload, fault_point, indent=2, sort_keys=True)

    def finish(self):
        """Writes the FINISHED marker (after every final output), then deletes the backups."""
        with checkpointing.atomic_path(self.path(FINISHED), fault_point="finished_marker") as temporary:
            with open(temporary, "w") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        self.delete_backups()

    def delete_backups(self):
        """Removes every worker's backups: the last step of a finished run (also after a kill right after FINISHED)."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)

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
